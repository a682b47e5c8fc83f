"""Students and teachers by timm name or checkpoint, the frozen-teacher wrapper and the tapped forward."""

from vitkd.models.factory import (CheckpointError, build_model, check_model_name, count_parameters, describe_model,
                                  load_model_from_path, load_weights, read_state_dict, resolve_checkpoint)
from vitkd.models.small_cnn import SmallCNN
from vitkd.models.tapped import TappedStudent, forward_teacher
from vitkd.models.teacher import FrozenTeacher

__all__ = [
    "CheckpointError", "FrozenTeacher", "SmallCNN", "TappedStudent", "build_model", "check_model_name",
    "count_parameters", "describe_model", "forward_teacher", "load_model_from_path", "load_weights",
    "read_state_dict", "resolve_checkpoint",
]
