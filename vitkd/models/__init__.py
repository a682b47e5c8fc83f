"""Students and teachers by timm name or checkpoint, the frozen-teacher wrapper and feature taps."""

from vitkd.models.factory import (CheckpointError, build_model, check_model_name, count_parameters, describe_model,
                                  load_model_from_path, load_weights, read_state_dict, resolve_checkpoint)
from vitkd.models.small_cnn import SmallCNN
from vitkd.models.teacher import FrozenTeacher

__all__ = [
    "CheckpointError", "FrozenTeacher", "SmallCNN", "build_model", "check_model_name",
    "count_parameters", "describe_model", "load_model_from_path", "load_weights",
    "read_state_dict", "resolve_checkpoint",
]
