"""Model specs: how `vitkd bench` and the benchmark scripts name the models to profile.

Syntax (one string per model)::

    NAME                                   a timm model name, built with pretrained=False
    NAME:KEY=VALUE[,KEY=VALUE...]          ... with timm kwargs, e.g. vit_tiny_patch16_224:img_size=32,num_classes=10
    NAME[:KEY=VALUE,...]@CHECKPOINT        ... then load local weights (.safetensors / .pt) from CHECKPOINT
    PATH                                   an existing checkpoint file, export directory or vitkd run directory
                                           that records its own model name and kwargs

A packed low-bit export (`student.packed.safetensors`, given itself or found as `PATH/student.packed.safetensors` or
`PATH/export/student.packed.safetensors`) takes precedence over the float export beside it: the model is the one the
packed file rebuilds (`vitkd.models.quantize.load_packed`), with the 8-bit activation rounding put back when the file
records it, so its accuracy is the low-bit student's. Name `PATH/export/student.safetensors` to bench the float
export instead.

Each KEY=VALUE is read like a recipe override (`vitkd.config.parse_override`): the value is a YAML 1.2 scalar or
flow list, so `32` is an int, `0.1` a float, `true` a bool, `[8,8]` a list, `avg` (and `off`, `yes`) a string
(quote with '...' to force a string). Commas inside brackets do not split kwargs.
Building goes through `vitkd.models.build_model` / `load_model_from_path`, which never download weights and
load checkpoints without executing pickled code.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from vitkd.config import parse_override
from vitkd.errors import BenchInputError, CheckpointError, ConfigError, UnknownModelError
from vitkd.models.factory import (EXPORT_INFO, build_model, load_model_from_path, model_name_hint,
                                  resolve_checkpoint)
from vitkd.models.quantize import PACKED_FILE, add_activation_quantizers, load_packed

__all__ = ["BuiltModel", "ModelSpec", "build_from_spec", "check_model_name", "find_packed_file", "parse_model_spec"]

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; exactly one of `name` and `path` is set.

    Attributes:
        text: the spec as written, used as the model's label in tables.
        name: timm model name.
        kwargs: keyword arguments for `timm.create_model`.
        checkpoint: weights to load into the named model.
        path: checkpoint file, export or run directory that records its own model name.
    """

    text: str
    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    path: Path | None = None


@dataclass(frozen=True)
class BuiltModel:
    """A model built from a spec, with what is known about its preprocessing (`img_size`, `mean`, `std`, ...).

    Attributes:
        spec: the parsed spec.
        model: the model to time and evaluate.
        info: model name, kwargs and preprocessing recorded beside the weights.
        weights_file: the float weights file loaded (`None`: freshly initialised, or packed).
        packed_file: the packed low-bit file the model was rebuilt from (`None`: a float model).
        traceable: the same function without the activation quantisers' hooks, which neither fvcore's nor ONNX's
            tracer can follow; FLOPs are counted and ONNX files exported from it (it is `model` for float models).
    """

    spec: ModelSpec
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    weights_file: Path | None = None
    packed_file: Path | None = None
    traceable: nn.Module | None = None

    @property
    def traceable_model(self) -> nn.Module:
        return self.model if self.traceable is None else self.traceable


def check_model_name(name: str, spec_text: str | None = None) -> None:
    """Raise `UnknownModelError` suggesting close timm names when timm does not know `name`.

    The close names are `vitkd.models.factory.model_name_hint`'s, as for recipes; the message names the spec the
    name came from.
    """
    if not timm.is_model(name):
        origin = f" (in model spec {spec_text!r})" if spec_text and spec_text != name else ""
        raise UnknownModelError(f"unknown model '{name}'{origin}{model_name_hint(name)}")


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside brackets and quotes, so `patch_size=[8,8],depth=2` gives two items."""
    items, current, depth, quote = [], [], 0, ""
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{(":
            depth += 1
        elif character in "]})":
            depth -= 1
        elif character == separator and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(character)
    items.append("".join(current))
    return items


def _parse_kwargs(text: str, spec_text: str) -> dict[str, Any]:
    """`KEY=VALUE,...` read item by item with the recipe override parser (`vitkd.config.parse_override`)."""
    kwargs: dict[str, Any] = {}
    for item in _split_top_level(text):
        try:
            keys, value = parse_override(item.strip())
        except ConfigError:
            keys, value = [], None
        key = ".".join(keys).strip()
        if not _KEY_PATTERN.match(key):
            raise BenchInputError(f"model spec {spec_text!r}: {item!r} is not KEY=VALUE; "
                                  f"write NAME:KEY=VALUE[,KEY=VALUE...], e.g. vit_tiny_patch16_224:img_size=32")
        if key in kwargs:
            raise BenchInputError(f"model spec {spec_text!r}: kwarg {key!r} is given twice")
        kwargs[key] = value
    return kwargs


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith(_WEIGHT_SUFFIXES)


def parse_model_spec(text: str) -> ModelSpec:
    """Parse one spec (syntax in the module docstring) and check timm knows its model name.

    Raises:
        UnknownModelError: the model name is not a timm model (close names are suggested).
        BenchInputError: the spec is malformed or names a missing file.
    """
    text = text.strip()
    if not text:
        raise BenchInputError("empty model spec; give a timm name such as deit_tiny_patch16_224 or a checkpoint path")
    if Path(text).exists():
        return ModelSpec(text=text, path=Path(text))
    model_part, at_sign, checkpoint_text = text.partition("@")
    if not at_sign and _looks_like_path(text):
        raise BenchInputError(f"model spec {text!r} looks like a path, but no such file or directory exists")
    name, colon, kwargs_text = model_part.partition(":")
    name = name.strip()
    if not _NAME_PATTERN.match(name):
        raise BenchInputError(f"model spec {text!r}: {name!r} is not a model name; "
                              "syntax: NAME[:KEY=VALUE,...][@CHECKPOINT] or an existing checkpoint/run path")
    if colon and not kwargs_text.strip():
        raise BenchInputError(f"model spec {text!r}: nothing after ':'; give KEY=VALUE pairs or drop the ':'")
    check_model_name(name, text)
    kwargs = _parse_kwargs(kwargs_text, text) if colon else {}
    checkpoint = None
    if at_sign:
        checkpoint = Path(checkpoint_text.strip())
        if not checkpoint.exists():
            raise BenchInputError(f"model spec {text!r}: checkpoint {str(checkpoint)!r} does not exist")
    return ModelSpec(text=text, name=name, kwargs=kwargs, checkpoint=checkpoint)


def find_packed_file(path: Path) -> Path | None:
    """The packed low-bit export `path` names: the file itself, or `PACKED_FILE` in it or in its `export/`."""
    if path.is_file():
        return path if path.name.endswith(PACKED_FILE) else None
    for candidate in (path / PACKED_FILE, path / "export" / PACKED_FILE):
        if candidate.is_file():
            return candidate
    return None


def _build_packed(spec: ModelSpec, packed_file: Path) -> BuiltModel:
    """The model a packed file rebuilds, with its activation quantisers; preprocessing from the export's info."""
    plain, packed_info = load_packed(packed_file)
    info: dict[str, Any] = {}
    info_path = packed_file.parent / EXPORT_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
    info.update({"model": packed_info["model"], "kwargs": packed_info["kwargs"],
                 "activation_bits": packed_info.get("activation_bits")})
    model = add_activation_quantizers(copy.deepcopy(plain), packed_info)
    return BuiltModel(spec=spec, model=model, info=info, packed_file=packed_file, traceable=plain)


def build_from_spec(spec: ModelSpec | str) -> BuiltModel:
    """Build the model a spec names (weights from the checkpoint if any, otherwise freshly initialised).

    Raises:
        BenchInputError: the spec is malformed (see `parse_model_spec`), the kwargs are rejected, or the
            checkpoint does not fit / cannot be read.
    """
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    try:
        if spec.path is not None:
            packed_file = find_packed_file(spec.path)
            if packed_file is not None:
                return _build_packed(spec, packed_file)
            model, info = load_model_from_path(spec.path)
            return BuiltModel(spec=spec, model=model, info=dict(info), weights_file=resolve_checkpoint(spec.path))
        checkpoint = None if spec.checkpoint is None else str(spec.checkpoint)
        return BuiltModel(spec=spec, model=build_model(str(spec.name), dict(spec.kwargs), checkpoint),
                          weights_file=None if spec.checkpoint is None else resolve_checkpoint(spec.checkpoint))
    except (ConfigError, CheckpointError) as error:
        raise BenchInputError(f"model spec {spec.text!r}: {error}") from error
