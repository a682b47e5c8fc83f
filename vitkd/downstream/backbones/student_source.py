"""Where a backbone's student comes from: a vitkd run directory or export, a checkpoint file, or a timm name
built without pretrained weights. Loading is strict, so a checkpoint of another architecture fails naming the
mismatching keys (`vitkd.models.factory.load_weights`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from vitkd.config import IMAGENET_MEAN, IMAGENET_STD
from vitkd.errors import CheckpointError, ConfigError
from vitkd.models.factory import build_model, load_model_from_path


@dataclass
class LoadedStudent:
    """A student model (its classifier head still attached) and what a fine-tune needs to know about it.

    name, kwargs: the timm model name and kwargs it was built with (recorded in fine-tune checkpoints).
    mean, std: the input normalisation it was trained with (the export's, else the timm default config's).
    weights: the file its weights came from (None: random initialisation).
    """

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: Optional[str]


def _normalisation(info: dict[str, Any], model: nn.Module) -> tuple[tuple, tuple]:
    config = getattr(model, "pretrained_cfg", None) or {}
    mean = info.get("mean") or config.get("mean") or IMAGENET_MEAN
    std = info.get("std") or config.get("std") or IMAGENET_STD
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def load_student(name: Optional[str] = None, kwargs: Optional[dict] = None, weights: Optional[str] = None,
                 drop_path_rate: Optional[float] = None) -> LoadedStudent:
    """Build the student a backbone starts from.

    Args:
        name: timm model name; may be left out when `weights` records it (a vitkd run directory or export).
        kwargs: timm kwargs; with a run directory they are applied over the stored ones.
        weights: a vitkd run directory or export directory (`student.json` names the model), or a weights file
            (.safetensors / .pt); None builds `name` with random weights (`pretrained=False`).
        drop_path_rate: stochastic depth for fine-tuning (None: as built).

    Raises `ConfigError` without a name to build, `CheckpointError` for a checkpoint that does not fit.
    """
    overrides = dict(kwargs or {})
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if weights is not None and (Path(weights).is_dir() or not name):
        model, info = load_model_from_path(weights, overrides)
        if name and info["model"] != name:
            raise CheckpointError(f"student.checkpoint {weights} holds a '{info['model']}' student, but "
                                  f"student.name is '{name}'; make them agree")
        stored = info.get("kwargs") or {}
        stored = json.loads(stored) if isinstance(stored, str) else stored  # checkpoint metadata keeps JSON text
        mean, std = _normalisation(info, model)
        return LoadedStudent(model, info["model"], {**stored, **overrides}, mean, std, str(weights))
    if not name:
        raise ConfigError("student.name is required when student.checkpoint is not a vitkd run directory or "
                          "export (e.g. student.name: vit_tiny_patch16_224)")
    model = build_model(name, overrides, weights)
    mean, std = _normalisation({}, model)
    return LoadedStudent(model, name, overrides, mean, std, str(weights) if weights else None)
