"""Export a student to ONNX with its preprocessing in the file, and check the file against PyTorch before keeping it.

    from vitkd.deploy import export_model_to_onnx, load_source
    source = load_source("runs/demo/deit_hard")                 # a run/export directory, checkpoint or timm spec
    result = export_model_to_onnx(source, "deit_hard.onnx", dynamic_batch=True)
    print(result.path, [c.describe() for c in result.comparisons])

What is exported is the student as a vitkd export holds it: a plain timm model (a run's export already drops
ViTKD projections and Theseus' teacher modules, and stores a quantised student's weights as floats). A distilled
DeiT is exported in eval mode, where timm returns the average of its class and distillation heads.

The file's `metadata_props` carry what a deployment needs to feed it (see `onnx_metadata`): model name and
kwargs, input/output names and layout, image size, mean, std, crop fraction, and the class names when known.

A file whose output differs from PyTorch's beyond the threshold is not left under the requested name: it is
renamed to `<stem>.failed-validation.onnx` beside it (kept for inspection), and `DeployError` reports the errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from vitkd import __version__
from vitkd.bench.input_size import InputSize, check_input_size, default_input_size
from vitkd.bench.model_spec import build_from_spec
from vitkd.bench.onnx_build import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_to_onnx
from vitkd.bench.onnx_runtime import create_session
from vitkd.deploy.onnx_check import (DEFAULT_MAX_RELATIVE_ERROR, OutputComparison, compare_outputs, digits_batch,
                                     random_batch)
from vitkd.errors import DeployError

__all__ = ["ExportResult", "ModelSource", "VALIDATION_BATCH", "export_model_to_onnx", "failed_validation_path",
           "load_source", "onnx_metadata"]

VALIDATION_BATCH = 8


@dataclass(frozen=True)
class ModelSource:
    """A model to export and what is known about it.

    Attributes:
        text: how it was named (a spec or path), for messages.
        model: the classifier.
        model_name: the timm architecture.
        model_kwargs: its timm kwargs.
        preprocessing: `img_size`, `mean`, `std`, `crop_pct` (and `classes` when known).
    """

    text: str
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)


def load_source(text: str, img_size: int | None = None) -> ModelSource:
    """Build the model a run directory, export directory, checkpoint or model spec names (`vitkd.bench.model_spec`).

    Preprocessing comes from the export's `student.json` when there is one, otherwise from timm's data config;
    `img_size` overrides the recorded size.
    """
    built = build_from_spec(text)
    info = dict(built.info)
    model_name = str(info.get("model") or built.spec.name)
    model_kwargs = dict(info.get("kwargs") or built.spec.kwargs)
    timm_config = timm.data.resolve_model_data_config(built.model)
    recorded_side = info.get("img_size") or default_input_size(built.model)[1]
    preprocessing: dict[str, Any] = {
        "img_size": int(img_size or recorded_side),
        "mean": [float(value) for value in info.get("mean", timm_config["mean"])],
        "std": [float(value) for value in info.get("std", timm_config["std"])],
        "crop_pct": float(info.get("crop_pct", timm_config.get("crop_pct", 0.875))),
        "interpolation": str(info.get("interpolation", timm_config.get("interpolation", "bicubic"))),
    }
    if info.get("classes"):
        preprocessing["classes"] = list(info["classes"])
    return ModelSource(text=text, model=built.model, model_name=model_name, model_kwargs=model_kwargs,
                       preprocessing=preprocessing)


def source_input_size(source: ModelSource) -> InputSize:
    channels = default_input_size(source.model)[0]
    side = int(source.preprocessing["img_size"])
    return channels, side, side


def onnx_metadata(source: ModelSource, dynamic_batch: bool) -> dict[str, str]:
    """The `metadata_props` written into the file: plain strings, lists and dicts as JSON."""
    channels, height, width = source_input_size(source)
    metadata = {
        "model_name": source.model_name,
        "model_kwargs": json.dumps(source.model_kwargs, sort_keys=True),
        "input_names": json.dumps([INPUT_NAME]),
        "output_names": json.dumps([OUTPUT_NAME]),
        "input_layout": f"{'batch' if dynamic_batch else 1}x{channels}x{height}x{width} float32 NCHW RGB in [0, 1], "
                        "then (x - mean) / std",
        "img_size": str(height),
        "mean": json.dumps(source.preprocessing["mean"]),
        "std": json.dumps(source.preprocessing["std"]),
        "crop_pct": repr(source.preprocessing["crop_pct"]),
        "interpolation": str(source.preprocessing.get("interpolation", "bicubic")),
        "vitkd_version": __version__,
    }
    if source.preprocessing.get("classes"):
        metadata["classes"] = json.dumps(source.preprocessing["classes"])
    return metadata


def failed_validation_path(path: Path) -> Path:
    """Where a file that failed validation is kept: `model.onnx` -> `model.failed-validation.onnx`."""
    return path.with_name(f"{path.stem}.failed-validation{path.suffix or '.onnx'}")


@dataclass(frozen=True)
class ExportResult:
    """A validated ONNX file: its path, opset, size in bytes and the comparisons against PyTorch."""

    path: Path
    opset: int
    file_bytes: int
    comparisons: list[OutputComparison]


def export_model_to_onnx(source: ModelSource, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET,
                         dynamic_batch: bool = False, max_relative_error: float = DEFAULT_MAX_RELATIVE_ERROR,
                         threads: int | None = None,
                         extra_batches: Mapping[str, Any] | None = None) -> ExportResult:
    """Export, then validate on random and digit images; keep the file only if it passes.

    Args:
        source: the model and its preprocessing (`load_source`).
        path: the `.onnx` file to write.
        opset: ONNX operator set.
        dynamic_batch: symbolic batch dimension (else batch 1; validation then feeds one image at a time).
        max_relative_error: threshold on each batch's relative error (see `vitkd.deploy.onnx_check`).
        threads: ONNX Runtime threads for the check.
        extra_batches: more named `(B, C, H, W)` batches to validate on.

    Raises:
        InputSizeError: the model cannot run at the requested size.
        DeployError: export failed (see `export_to_onnx`), or validation failed: then the file is renamed to
            `failed_validation_path(path)` and the message names it and the errors.
    """
    if not max_relative_error >= 0:
        raise DeployError(f"--max-relative-error must be >= 0, got {max_relative_error}")
    path = Path(path)
    input_size = source_input_size(source)
    check_input_size(source.model, input_size, source.text)
    export_to_onnx(source.model, input_size, path, opset=opset, dynamic_batch=dynamic_batch,
                   model_name=source.text, metadata=onnx_metadata(source, dynamic_batch))
    batches = {"random": random_batch(input_size, VALIDATION_BATCH)}
    digits = digits_batch(input_size, VALIDATION_BATCH, source.preprocessing)
    if digits is not None:
        batches["digits"] = digits
    batches.update(extra_batches or {})
    comparisons = compare_outputs(source.model, create_session(path, threads), batches,
                                  single_images=not dynamic_batch)
    failed = [comparison for comparison in comparisons if not comparison.passes(max_relative_error)]
    if failed:
        kept = failed_validation_path(path)
        os.replace(path, kept)
        raise DeployError(f"{source.text}: the ONNX file's output differs from PyTorch's beyond the threshold "
                          f"(relative error > {max_relative_error:g}): "
                          + "; ".join(comparison.describe() for comparison in failed)
                          + f"; the file is kept as {kept} for inspection, not as {path}")
    return ExportResult(path=path, opset=opset, file_bytes=path.stat().st_size, comparisons=comparisons)
