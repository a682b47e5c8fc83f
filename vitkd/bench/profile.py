"""One call that measures everything about a model: `profile(model, ...) -> ProfileRecord`.

The record is exactly what the terminal table, the CSV/JSON/Markdown reports and the plot show. Ratios against a
teacher read "how many times better the student is":

* `speedup_vs_teacher` = teacher latency / student latency (batch-1 medians; 4.0 = four times faster),
* `param_reduction_vs_teacher` = teacher params / student params,
* `flop_reduction_vs_teacher` = teacher FLOPs / student FLOPs,
* `accuracy_retained` = student top-1 / teacher top-1 (0.95 = keeps 95 % of the teacher's accuracy).

Each record is one model in one runtime (`runtime`: `"torch"`, `"onnxruntime"`, `"onnxruntime-int8"`, see
`vitkd.bench.onnx_profile`); teacher ratios compare records of the same runtime, and `speedup_vs_torch` = the
model's PyTorch batch-1 latency / this record's (2.0 = this runtime runs it twice as fast).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkd.bench.accuracy import evaluate_accuracy
from vitkd.bench.flops import analyze_flops, count_activations, training_flops_per_image
from vitkd.bench.input_size import (InputSize, check_input_size, default_input_size, eval_mode, model_display_name,
                                    normalize_input_size)
from vitkd.bench.latency import Clock, TimingResult, TimingSettings, measure_latency
from vitkd.bench.memory import measure_peak_memory
from vitkd.bench.runtime import RuntimeOptions, prepare_model, use_threads
from vitkd.bench.storage import StoredSize, float_storage
from vitkd.engine.distributed import resolve_device
from vitkd.models.factory import count_parameters

__all__ = ["ProfileRecord", "compare_to_teacher", "compare_to_torch", "profile", "untimed_record", "with_timing"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileRecord:
    """Everything measured about one model, in plain units.

    Attributes:
        name: how the model was asked for (a timm name, a spec with kwargs, a checkpoint path).
        device: where it ran, e.g. `"cpu"` or `"cuda:0"`.
        threads: CPU intra-op threads (`torch.get_num_threads()`) during the measurements.
        input_size: `(C, H, W)` of one image.
        batch_size: images per forward for throughput and peak memory (latency is always batch 1).
        params: number of parameters (all of them, trainable or not).
        flops: forward FLOPs per image, one fused multiply-add = one FLOP (see `vitkd.bench.flops`).
        train_flops_per_image: forward + backward FLOPs per training image (3 x `flops`).
        activations: conv/matmul output elements per image (fvcore convention).
        latency_ms_median: median batch-1 forward time, ms.
        latency_ms_p90: 90th percentile batch-1 forward time, ms.
        latency_spread: relative spread of the batch-1 round medians, `(max - min) / median`.
        throughput: images/s at `batch_size`.
        peak_memory_bytes: peak tensor bytes of one inference forward at `batch_size` (see `vitkd.bench.memory`);
            `None` for ONNX Runtime, whose arena is not tensor-by-tensor.
        top1, top5: accuracy in percent, `None` without an evaluation loader.
        channels_last, amp, compiled: runtime switches used for latency, throughput and memory.
        flops_uncounted_ops: ops fvcore could not count; non-empty means `flops` is a lower bound.
        teacher: name of the teacher the ratios refer to, `None` without one.
        speedup_vs_teacher, param_reduction_vs_teacher, flop_reduction_vs_teacher, accuracy_retained: see module.
        runtime: what ran the model: `"torch"` (eager PyTorch), `"onnxruntime"` or `"onnxruntime-int8"`.
        weight_bits: bits per stored weight: the packed low-bit file's bit width, the float parameters' dtype bits
            (32 for float32), 32 for an ONNX file, 8 for ONNX Runtime int8 (see `vitkd.bench.storage`).
        stored_bytes: bytes the model occupies as stored: the packed low-bit file, the float weights as
            safetensors, or the `.onnx` file for ONNX Runtime rows (see `vitkd.bench.storage`).
        speedup_vs_torch: the same model's torch latency / this record's latency (batch-1 medians).
        measured_with: name of the record whose latency/throughput this row reuses because the architecture and
            settings are identical (`None`: measured itself).
        timing_group: the interleaved rounds this row was timed in (`vitkd.bench.suite`: the same text for every row
            of one run, its start time in UTC and model count); `None` for a model profiled alone.
    """

    name: str
    device: str
    threads: int
    input_size: tuple[int, int, int]
    batch_size: int
    params: int
    flops: int
    train_flops_per_image: int
    activations: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_spread: float
    throughput: float
    peak_memory_bytes: int | None
    top1: float | None = None
    top5: float | None = None
    channels_last: bool = False
    amp: bool = False
    compiled: bool = False
    flops_uncounted_ops: tuple[str, ...] = ()
    teacher: str | None = None
    speedup_vs_teacher: float | None = None
    param_reduction_vs_teacher: float | None = None
    flop_reduction_vs_teacher: float | None = None
    accuracy_retained: float | None = None
    runtime: str = "torch"
    weight_bits: int | None = None
    stored_bytes: int | None = None
    speedup_vs_torch: float | None = None
    measured_with: str | None = None
    timing_group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProfileRecord:
        """Inverse of `to_dict`; unknown keys are an error so a stale report is noticed."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ProfileRecord fields {unknown}; known fields: {sorted(known)}")
        converted = dict(values)
        converted["input_size"] = tuple(converted["input_size"])
        converted["flops_uncounted_ops"] = tuple(converted.get("flops_uncounted_ops", ()))
        return cls(**converted)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def compare_to_teacher(student: ProfileRecord, teacher: ProfileRecord) -> ProfileRecord:
    """A copy of `student` with the four ratios against `teacher` filled in (see the module docstring)."""
    return dataclasses.replace(
        student,
        teacher=teacher.name,
        speedup_vs_teacher=_ratio(teacher.latency_ms_median, student.latency_ms_median),
        param_reduction_vs_teacher=_ratio(teacher.params, student.params),
        flop_reduction_vs_teacher=_ratio(teacher.flops, student.flops),
        accuracy_retained=_ratio(student.top1, teacher.top1),
    )


def compare_to_torch(record: ProfileRecord, torch_record: ProfileRecord) -> ProfileRecord:
    """A copy of `record` (another runtime) with `speedup_vs_torch` against the same model's torch record."""
    return dataclasses.replace(record, speedup_vs_torch=_ratio(torch_record.latency_ms_median,
                                                               record.latency_ms_median))


def untimed_record(model: nn.Module, *, name: str, input_size: InputSize, batch_size: int, options: RuntimeOptions,
                   storage: StoredSize | None = None, traceable: nn.Module | None = None) -> ProfileRecord:
    """The record of `model` before timing: counts, peak memory, storage; latency and throughput are NaN until
    `with_timing` fills them in, accuracy `None`. Runs with the caller's thread count; `model` is moved to
    `options.device`. Arguments as for `profile`."""
    storage = storage or float_storage(model)
    counted = model if traceable is None else traceable
    with eval_mode(model.to(options.torch_device)):
        check_input_size(model, input_size, name)
        logger.info("profiling %s at %s on %s with %d threads", name, input_size, options.device,
                    torch.get_num_threads())
        with eval_mode(counted.to(options.torch_device)):
            flop_count = analyze_flops(counted, input_size, model_name=name)
            activations = count_activations(counted, input_size, model_name=name)
        peak_memory = measure_peak_memory(model, input_size, batch_size, options)
    not_timed = float("nan")
    return ProfileRecord(
        name=name, device=str(options.torch_device), threads=torch.get_num_threads(), input_size=input_size,
        batch_size=batch_size, params=count_parameters(model), flops=flop_count.total,
        train_flops_per_image=training_flops_per_image(flop_count.total), activations=activations,
        latency_ms_median=not_timed, latency_ms_p90=not_timed, latency_spread=not_timed, throughput=not_timed,
        peak_memory_bytes=peak_memory, channels_last=options.channels_last, amp=options.amp,
        compiled=options.compile, flops_uncounted_ops=tuple(flop_count.uncounted_ops),
        weight_bits=storage.weight_bits, stored_bytes=storage.stored_bytes,
    )


def with_timing(record: ProfileRecord, latency: TimingResult, batch_timing: TimingResult) -> ProfileRecord:
    """`record` with its batch-1 `latency` (median, p90, spread) and its throughput from `batch_timing`."""
    return dataclasses.replace(record, latency_ms_median=latency.median_ms, latency_ms_p90=latency.p90_ms,
                               latency_spread=latency.relative_spread, throughput=batch_timing.throughput)


def profile(model: nn.Module, *, name: str | None = None, input_size: int | Sequence[int] | None = None,
            batch_size: int = 32, device: str | torch.device | None = "cpu", loader: Iterable[Any] | None = None,
            teacher_record: ProfileRecord | None = None, threads: int | None = None, channels_last: bool = False,
            amp: bool = False, compile: bool = False, timing: TimingSettings = TimingSettings(),
            clock: Clock = time.perf_counter, storage: StoredSize | None = None,
            traceable: nn.Module | None = None) -> ProfileRecord:
    """Parameters, FLOPs, activations, latency, throughput, peak memory and (with a loader) accuracy of `model`.

    Args:
        model: image classifier `(B, C, H, W) -> (B, num_classes)`; moved in place to `device` and the memory
            format; its train/eval mode is restored afterwards.
        name: label for tables and errors; defaults to the timm architecture or class name.
        input_size: `(C, H, W)` (or `S` for 3xSxS); defaults to the model's own size.
        batch_size: images per forward for throughput and peak memory.
        device: `"cpu"`, `"cuda"`, ... or `None`/`"auto"` for CUDA when available.
        loader: evaluation batches `(images, labels, ...)`; without it top-1/top-5 stay `None`.
        teacher_record: the teacher's record, to fill in the ratio columns.
        threads: CPU threads (`torch.set_num_threads`) during the measurements; `None` keeps the current count.
        channels_last, amp, compile: runtime switches for latency, throughput, memory (FLOPs are unaffected).
        timing: warmup and stopping rule for latency and throughput (see `vitkd.bench.latency`).
        clock: seconds; injectable for tests.
        storage: stored bits per weight and bytes (default: `vitkd.bench.storage.float_storage(model)`).
        traceable: the same function in a form fvcore can trace, to count FLOPs and activations on (default:
            `model`; a packed low-bit student's activation quantisers cannot be traced and add no counted FLOPs).

    Raises:
        InputSizeError: the model cannot run on `input_size`.
        ClassCountMismatchError: `loader`'s dataset has a different class count than the model's head.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    name = name or model_display_name(model)
    options = RuntimeOptions(device=str(resolve_device("auto" if device is None else str(device), option="device")),
                             threads=threads, channels_last=channels_last, amp=amp, compile=compile)
    size = default_input_size(model) if input_size is None else normalize_input_size(input_size)
    with eval_mode(model.to(options.torch_device)), use_threads(threads):
        record = untimed_record(model, name=name, input_size=size, batch_size=batch_size, options=options,
                                storage=storage, traceable=traceable)
        runnable = prepare_model(model, options)
        latency = measure_latency(model, size, 1, options, timing, clock=clock, prepared=runnable)
        batch_timing = measure_latency(model, size, batch_size, options, timing, clock=clock, prepared=runnable)
        accuracy = (None if loader is None else
                    evaluate_accuracy(model, loader, options.torch_device, model_name=name, options=options))
    record = with_timing(record, latency, batch_timing)
    if accuracy is not None:
        record = dataclasses.replace(record, top1=accuracy.top1, top5=accuracy.top5)
    return record if teacher_record is None else compare_to_teacher(record, teacher_record)
