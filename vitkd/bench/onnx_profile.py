"""Profile a model in ONNX Runtime: `profile_onnx(model, ...) -> [ProfileRecord, ...]`, fp32 and optionally int8.

The model is exported once (`vitkd.bench.onnx_build`, dynamic batch) into `work_dir`; each file is timed at batch 1
(latency) and at `batch_size` (throughput) by the same harness as PyTorch (`vitkd.bench.latency`), and evaluated on
the loader through `OnnxRuntimeClassifier` by the same loop as PyTorch (`vitkd.bench.accuracy`). Parameters, FLOPs
and activations are the PyTorch model's (the graph computes the same function; int8 changes the arithmetic, not
the count). Peak memory is left empty: ONNX Runtime allocates from its own arena, which the tensor-level
measurement of `vitkd.bench.memory` does not see.

Records are named like the PyTorch one and carry `runtime="onnxruntime"` or `"onnxruntime-int8"`, the file size as
`stored_bytes` (with `weight_bits` 32, or 8 for int8, whose MatMul/Gemm/Conv weights are int8 and whose other
tensors stay float), and (given the PyTorch record) `speedup_vs_torch`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vitkd.bench.accuracy import evaluate_accuracy
from vitkd.bench.flops import analyze_flops, count_activations, training_flops_per_image
from vitkd.bench.input_size import InputSize, check_input_size, eval_mode, model_display_name
from vitkd.bench.latency import Clock, TimedForward, TimingResult, TimingSettings
from vitkd.bench.onnx_build import export_to_onnx
from vitkd.bench.onnx_runtime import (OnnxRuntimeClassifier, create_session, measure_onnx_latency, onnx_forward,
                                      quantize_int8, session_threads)
from vitkd.bench.profile import ProfileRecord, compare_to_torch
from vitkd.models.factory import count_parameters

__all__ = ["ONNX_RUNTIME", "ONNX_RUNTIME_INT8", "TORCH_RUNTIME", "OnnxFile", "export_files", "onnx_record",
           "profile_onnx", "static_fields", "timed_runs"]

TORCH_RUNTIME = "torch"
ONNX_RUNTIME = "onnxruntime"
ONNX_RUNTIME_INT8 = "onnxruntime-int8"
ONNX_WEIGHT_BITS = {ONNX_RUNTIME: 32, ONNX_RUNTIME_INT8: 8}  # float32 initialisers; quantize_dynamic's int8 weights


def _file_stem(name: str) -> str:
    """A file name for a model spec (`vit_tiny:img_size=32@w.pt` -> `vit_tiny_img_size_32_w.pt`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:120] or "model"


def static_fields(model: nn.Module, name: str, input_size: InputSize, base: ProfileRecord | None) -> dict[str, Any]:
    """Parameters, FLOPs and activations: the PyTorch record's when given, else counted on `model`."""
    if base is not None:
        return {"params": base.params, "flops": base.flops, "train_flops_per_image": base.train_flops_per_image,
                "activations": base.activations, "flops_uncounted_ops": base.flops_uncounted_ops}
    with eval_mode(model.to("cpu")):
        check_input_size(model, input_size, name)
        flop_count = analyze_flops(model, input_size, model_name=name)
        activations = count_activations(model, input_size, model_name=name)
    return {"params": count_parameters(model), "flops": flop_count.total,
            "train_flops_per_image": training_flops_per_image(flop_count.total), "activations": activations,
            "flops_uncounted_ops": tuple(flop_count.uncounted_ops)}


@dataclass(frozen=True)
class OnnxFile:
    """One ONNX file of a model, loaded in an ONNX Runtime session."""

    runtime: str  # ONNX_RUNTIME or ONNX_RUNTIME_INT8
    path: Path
    session: Any


def export_files(model: nn.Module, work_dir: Path, *, name: str, input_size: InputSize, threads: int | None,
                 int8: bool, opset: int | None = None) -> list[OnnxFile]:
    """Export `model` to `<name>.onnx` (dynamic batch) and, with `int8`, `<name>.int8.onnx`; a session for each."""
    fp32_path = work_dir / f"{_file_stem(name)}.onnx"
    export_to_onnx(model, input_size, fp32_path, dynamic_batch=True, model_name=name,
                   **({} if opset is None else {"opset": opset}))
    paths = [(ONNX_RUNTIME, fp32_path)]
    if int8:
        paths.append((ONNX_RUNTIME_INT8, quantize_int8(fp32_path, work_dir / f"{_file_stem(name)}.int8.onnx")))
    return [OnnxFile(runtime, path, create_session(path, threads)) for runtime, path in paths]


def timed_runs(file: OnnxFile, input_size: InputSize, batch_size: int) -> tuple[TimedForward, TimedForward]:
    """The batch-1 and batch-`batch_size` forwards of a file's session, for `vitkd.bench.latency.time_interleaved`."""
    return (onnx_forward(file.session, input_size, 1, label=f"{file.path.name} batch 1"),
            onnx_forward(file.session, input_size, batch_size, label=f"{file.path.name} batch {batch_size}"))


def onnx_record(file: OnnxFile, *, name: str, input_size: InputSize, batch_size: int, static: dict[str, Any],
                latency: TimingResult, batch_timing: TimingResult, loader: Iterable[Any] | None) -> ProfileRecord:
    """The record of one ONNX file from its timings, and its accuracy on `loader` (when given)."""
    accuracy = None
    if loader is not None:
        accuracy = evaluate_accuracy(OnnxRuntimeClassifier(file.session), loader, "cpu",
                                     model_name=f"{name} ({file.runtime})")
    return ProfileRecord(
        name=name, device="cpu", threads=session_threads(file.session), input_size=input_size,
        batch_size=batch_size, latency_ms_median=latency.median_ms, latency_ms_p90=latency.p90_ms,
        latency_spread=latency.relative_spread, throughput=batch_timing.throughput, peak_memory_bytes=None,
        top1=None if accuracy is None else accuracy.top1, top5=None if accuracy is None else accuracy.top5,
        runtime=file.runtime, stored_bytes=file.path.stat().st_size, weight_bits=ONNX_WEIGHT_BITS[file.runtime],
        **static,
    )


def profile_onnx(model: nn.Module, work_dir: str | os.PathLike[str], *, name: str | None = None,
                 input_size: InputSize, batch_size: int = 32, loader: Iterable[Any] | None = None,
                 threads: int | None = None, int8: bool = False, torch_record: ProfileRecord | None = None,
                 timing: TimingSettings = TimingSettings(), clock: Clock = time.perf_counter,
                 opset: int | None = None) -> list[ProfileRecord]:
    """ONNX Runtime records of `model`: fp32, then (with `int8`) its dynamic int8 quantisation.

    Args:
        model: the classifier (exported on the CPU in eval mode).
        work_dir: where `<name>.onnx` and `<name>.int8.onnx` are written (kept, so their sizes can be checked).
        name: label of the records (defaults to the timm architecture or class name).
        input_size: `(C, H, W)`.
        batch_size: images per run for throughput and evaluation.
        loader: evaluation batches for top-1/top-5 (`None`: no accuracy).
        threads: ONNX Runtime `intra_op_num_threads` (`None`: torch's current count).
        int8: add the `onnxruntime-int8` record.
        torch_record: the same model's PyTorch record: static counts are copied from it and `speedup_vs_torch`
            filled in.
        timing: warmup and stopping rule (as for PyTorch).
        clock: seconds; injectable for tests.
        opset: ONNX operator set (default: `vitkd.bench.onnx_build.DEFAULT_OPSET`).

    Raises:
        DeployError: the deploy extra is missing or the model cannot be exported.
    """
    name = name or model_display_name(model)
    static = static_fields(model, name, input_size, torch_record)
    records = []
    for file in export_files(model, Path(work_dir), name=name, input_size=input_size, threads=threads, int8=int8,
                             opset=opset):
        latency = measure_onnx_latency(file.session, input_size, 1, timing, clock=clock)
        batch_timing = measure_onnx_latency(file.session, input_size, batch_size, timing, clock=clock)
        record = onnx_record(file, name=name, input_size=input_size, batch_size=batch_size, static=static,
                             latency=latency, batch_timing=batch_timing, loader=loader)
        records.append(record if torch_record is None else compare_to_torch(record, torch_record))
    return records
