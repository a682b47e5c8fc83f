"""Profile a list of model specs (and an optional teacher) in one go, saving reports as it goes.

Used by `vitkd bench` and `benchmarks/students.py`. Every model is built first; then all of them are timed in
interleaved rounds (round r times model 1, model 2, ... at batch 1 and at the batch size, in every runtime), so drift
of the machine during the measurement hits every model alike instead of reading as a speed difference; then each is
evaluated. With an output directory, the reports are rewritten after each model's evaluation, so an interrupted run
keeps its evaluated rows, and `resume=True` skips models already in `bench.json` (see `profile_specs`).

Each model gets one record per runtime asked for (`SuiteSettings.runtimes`: torch, onnxruntime; `ort_int8` adds
ONNX Runtime int8), ONNX files going to `<out>/onnx/` (a temporary folder without `out_dir`). Models whose
architecture, kwargs and input size are identical (the same student trained several ways) share one latency and
throughput measurement per runtime: the first such model is timed, the others reuse its figures (their accuracy is
their own) and name it in `measured_with`. A packed low-bit export is benched as the model it rebuilds
(`vitkd.bench.model_spec`), with its stored bits and size (`vitkd.bench.storage`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkd.bench.accuracy import evaluate_accuracy
from vitkd.bench.input_size import InputSize, default_input_size
from vitkd.bench.latency import Clock, TimedForward, TimingResult, TimingSettings, time_interleaved
from vitkd.bench.model_spec import BuiltModel, build_from_spec, parse_model_spec
from vitkd.bench.onnx_profile import (ONNX_RUNTIME, ONNX_RUNTIME_INT8, TORCH_RUNTIME, OnnxFile, export_files,
                                      onnx_record, static_fields, timed_runs)
from vitkd.bench.plot import plot_tradeoffs
from vitkd.bench.profile import ProfileRecord, compare_to_teacher, compare_to_torch, untimed_record, with_timing
from vitkd.bench.runtime import (RuntimeOptions, example_batch, inference_context, prepare_model, synchronize,
                                 use_threads)
from vitkd.bench.report import REPORT_FILE_NAMES, read_records, write_reports
from vitkd.bench.storage import StoredSize, float_storage, packed_storage
from vitkd.engine.distributed import resolve_device

__all__ = ["ONNX_DIR_NAME", "PLOT_FILE_NAME", "RUNTIME_CHOICES", "SuiteSettings", "profile_specs"]

logger = logging.getLogger(__name__)

PLOT_FILE_NAME = "bench.png"
ONNX_DIR_NAME = "onnx"
RUNTIME_CHOICES = {"torch": (TORCH_RUNTIME,), "onnxruntime": (ONNX_RUNTIME,), "both": (TORCH_RUNTIME, ONNX_RUNTIME)}


@dataclass(frozen=True)
class SuiteSettings:
    """Settings applied to every model of a suite.

    Attributes:
        batch_size: images per forward for throughput, peak memory and evaluation.
        img_size: square input side overriding each model's own size (`None`: the model's size).
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda"`, ...
        threads: CPU threads for the measurements (`None`: torch's current count).
        channels_last, amp, compile: runtime switches (see `vitkd.bench.runtime.RuntimeOptions`).
        dataset: evaluation dataset name for `vitkd.data.build_eval_loader` (`None`: no accuracy).
        data_root: dataset root directory, for datasets that need one.
        split: dataset split to evaluate on.
        timing: warmup and stopping rule of latency/throughput.
        runtimes: `("torch",)`, `("onnxruntime",)` or both (see `RUNTIME_CHOICES`).
        ort_int8: add an ONNX Runtime int8 (dynamic quantisation) record per model.
    """

    batch_size: int = 32
    img_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    amp: bool = False
    compile: bool = False
    dataset: str | None = None
    data_root: str | None = None
    split: str = "val"
    timing: TimingSettings = TimingSettings()
    runtimes: tuple[str, ...] = (TORCH_RUNTIME,)
    ort_int8: bool = False

    def __post_init__(self) -> None:
        unknown = [runtime for runtime in self.runtimes if runtime not in (TORCH_RUNTIME, ONNX_RUNTIME)]
        if unknown or not self.runtimes:
            raise ValueError(f"runtimes {list(self.runtimes)}: expected torch and/or onnxruntime")
        if self.ort_int8 and ONNX_RUNTIME not in self.runtimes:
            raise ValueError("--ort-int8 needs --runtime onnxruntime or --runtime both")
        if ONNX_RUNTIME in self.runtimes and self.device not in ("cpu", "auto"):
            raise ValueError(f"--runtime onnxruntime runs on the CPU; --device {self.device} applies to torch only, "
                             "use --runtime torch for it")


def _input_size(built: BuiltModel, img_size: int | None) -> InputSize:
    channels, height, width = default_input_size(built.model)
    side = img_size or built.info.get("img_size")
    return (channels, int(side), int(side)) if side else (channels, height, width)


def _eval_loader(built: BuiltModel, input_size: InputSize, settings: SuiteSettings) -> DataLoader | None:
    if settings.dataset is None:
        return None
    from vitkd.data import build_eval_loader

    preprocessing: dict[str, Any] = dict(timm.data.resolve_model_data_config(built.model))
    preprocessing.update({key: built.info[key] for key in ("mean", "std", "crop_pct", "interpolation")
                          if key in built.info})
    return build_eval_loader(settings.dataset, settings.data_root, input_size[1], settings.batch_size,
                             tuple(preprocessing["mean"]), tuple(preprocessing["std"]), split=settings.split,
                             crop_pct=float(preprocessing.get("crop_pct", 0.875)),
                             interpolation=str(preprocessing.get("interpolation", "bicubic")))


def architecture_signature(built: BuiltModel, input_size: InputSize) -> str:
    """What decides a model's speed: timm architecture, kwargs, input size and, for a packed low-bit model, its
    activation quantisers (not the weights)."""
    name = built.info.get("model") or built.spec.name or type(built.model).__name__
    kwargs = built.info.get("kwargs") or built.spec.kwargs
    packed = None if built.packed_file is None else {"activation_bits": built.info.get("activation_bits")}
    return json.dumps([name, kwargs, list(input_size), packed], sort_keys=True, default=str)


def model_storage(built: BuiltModel) -> StoredSize:
    """Bits per stored weight and stored bytes of a built spec: its packed file, or its float weights."""
    if built.packed_file is not None:
        return packed_storage(built.packed_file)
    return float_storage(built.model, built.weights_file)


@dataclass
class _Timings:
    """The interleaved measurement being planned: subjects in order, and which (signature, runtime) owns which."""

    subjects: list[TimedForward] = dataclasses.field(default_factory=list)
    owners: dict[tuple[str, str], tuple[str, int]] = dataclasses.field(default_factory=dict)
    results: list[TimingResult] = dataclasses.field(default_factory=list)

    def add(self, key: tuple[str, str], owner: str, batch_1: TimedForward, batch_n: TimedForward) -> None:
        """Time this pair unless a model of the same signature already is."""
        if key not in self.owners:
            self.owners[key] = (owner, len(self.subjects))
            self.subjects.extend([batch_1, batch_n])

    def of(self, key: tuple[str, str]) -> tuple[str, TimingResult, TimingResult]:
        """(name of the model timed, its batch-1 timing, its batch-N timing) for a signature and runtime."""
        owner, index = self.owners[key]
        return owner, self.results[index], self.results[index + 1]


@dataclass
class _Prepared:
    """One model built, counted and ready to be timed; its accuracy is measured after the timings."""

    spec_text: str
    built: BuiltModel | None
    input_size: InputSize
    signature: str
    torch_record: ProfileRecord | None = None  # untimed (see `vitkd.bench.profile.untimed_record`)
    onnx_files: list[OnnxFile] = dataclasses.field(default_factory=list)
    onnx_static: dict[str, Any] = dataclasses.field(default_factory=dict)


def _prepare(spec_text: str, settings: SuiteSettings, options: RuntimeOptions, onnx_dir: Path,
             timings: _Timings) -> _Prepared:
    """Build a spec, count what does not need a clock, and add its forwards to `timings`."""
    built = build_from_spec(spec_text)
    input_size = _input_size(built, settings.img_size)
    prepared = _Prepared(spec_text, built, input_size, architecture_signature(built, input_size))
    if TORCH_RUNTIME in settings.runtimes:
        with use_threads(settings.threads):
            prepared.torch_record = untimed_record(built.model, name=spec_text, input_size=input_size,
                                                   batch_size=settings.batch_size, options=options,
                                                   storage=model_storage(built), traceable=built.traceable)
        runnable = prepare_model(built.model, options)
        device = options.torch_device
        batches = [example_batch(input_size, size, options) for size in (1, settings.batch_size)]
        batch_1, batch_n = (TimedForward(label=f"{spec_text} batch {len(batch)}", forward=lambda b=batch: runnable(b),
                                         batch_size=len(batch), wait=lambda: synchronize(device))
                            for batch in batches)
        timings.add((prepared.signature, TORCH_RUNTIME), spec_text, batch_1, batch_n)
    if ONNX_RUNTIME in settings.runtimes:
        # a packed student's activation quantisers cannot be exported: its ONNX rows run the decoded low-bit
        # weights with float activations
        model = built.traceable_model
        prepared.onnx_static = static_fields(model, spec_text, input_size, prepared.torch_record)
        prepared.onnx_files = export_files(model, onnx_dir, name=spec_text, input_size=input_size,
                                           threads=settings.threads, int8=settings.ort_int8)
        for file in prepared.onnx_files:
            timings.add((prepared.signature, file.runtime), spec_text, *timed_runs(file, input_size,
                                                                                   settings.batch_size))
    return prepared


def _finish(prepared: _Prepared, settings: SuiteSettings, options: RuntimeOptions, timings: _Timings,
            group: str) -> list[ProfileRecord]:
    """The records of a prepared model: its (or its twin's) timings and its own accuracy."""
    assert prepared.built is not None
    loader = _eval_loader(prepared.built, prepared.input_size, settings)
    records: list[ProfileRecord] = []
    torch_record = None
    if prepared.torch_record is not None:
        owner, latency, batch_timing = timings.of((prepared.signature, TORCH_RUNTIME))
        torch_record = dataclasses.replace(with_timing(prepared.torch_record, latency, batch_timing),
                                           timing_group=group,
                                           measured_with=None if owner == prepared.spec_text else owner)
        if loader is not None:
            accuracy = evaluate_accuracy(prepared.built.model, loader, model_name=prepared.spec_text, options=options)
            torch_record = dataclasses.replace(torch_record, top1=accuracy.top1, top5=accuracy.top5)
        records.append(torch_record)
    for file in prepared.onnx_files:
        owner, latency, batch_timing = timings.of((prepared.signature, file.runtime))
        record = onnx_record(file, name=prepared.spec_text, input_size=prepared.input_size,
                             batch_size=settings.batch_size, static=prepared.onnx_static, latency=latency,
                             batch_timing=batch_timing, loader=loader)
        record = dataclasses.replace(record, timing_group=group,
                                     measured_with=None if owner == prepared.spec_text else owner)
        records.append(record if torch_record is None else compare_to_torch(record, torch_record))
    return records

def _finished_records(out_dir: Path | None, resume: bool) -> dict[str, list[ProfileRecord]]:
    if not resume or out_dir is None:
        return {}
    report = out_dir / REPORT_FILE_NAMES["json"]
    if not report.is_file():
        return {}
    finished: dict[str, list[ProfileRecord]] = {}
    for record in read_records(report):
        finished.setdefault(record.name, []).append(record)
    return finished


def _with_teacher(records: list[ProfileRecord], teacher_records: dict[str, ProfileRecord]) -> list[ProfileRecord]:
    return [compare_to_teacher(record, teacher_records[record.runtime]) if record.runtime in teacher_records
            else record for record in records]


def profile_specs(model_specs: Sequence[str], *, teacher: str | None = None, settings: SuiteSettings = SuiteSettings(),
                  out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
                  on_record: Callable[[ProfileRecord], None] | None = None,
                  clock: Clock = time.perf_counter) -> list[ProfileRecord]:
    """Profile the teacher (if any) and every model spec; the teacher's record comes first.

    Three passes: every model is built and counted (parameters, FLOPs, activations, peak memory, storage, ONNX
    export); then all of them are timed together in interleaved rounds (`vitkd.bench.latency.time_interleaved`);
    then each is evaluated on the dataset, and with `out_dir` the reports are rewritten after each model (`bench.png`
    at the end). All specs are parsed before any work starts, so a typo fails in a second rather than after an hour.
    All models are held in memory until the timings end.

    An interrupted run keeps the reports of the models whose evaluation finished (all of them timed in the same
    rounds); one interrupted before the first evaluation writes nothing (an earlier report in `out_dir` stays as it
    was). With `resume`, the models already in `bench.json` are reused and the others timed in new rounds; each
    record's `timing_group` says which rounds it came from, and the report's notes name the groups.

    Args:
        model_specs: model specs (see `vitkd.bench.model_spec`); duplicates are profiled once.
        teacher: spec of the teacher the ratio columns refer to.
        settings: shared measurement settings.
        out_dir: where to write reports and the plot (`None`: write nothing).
        resume: reuse records already in `out_dir/bench.json` with the same name instead of re-measuring.
        on_record: called with each new or reused record (e.g. to print progress).
        clock: seconds, for the timings; injectable for tests.
    """
    ordered_specs = list(dict.fromkeys([*([teacher] if teacher else []), *model_specs]))
    for spec_text in ordered_specs:
        parse_model_spec(spec_text)
    out_path = None if out_dir is None else Path(out_dir)
    finished = _finished_records(out_path, resume)
    wanted = {*settings.runtimes, *([ONNX_RUNTIME_INT8] if settings.ort_int8 else [])}
    reused = {spec_text: finished[spec_text] for spec_text in ordered_specs
              if {record.runtime for record in finished.get(spec_text, [])} == wanted}
    options = RuntimeOptions(device=str(resolve_device(settings.device, option="--device")), threads=settings.threads,
                             channels_last=settings.channels_last, amp=settings.amp, compile=settings.compile)
    records: list[ProfileRecord] = []
    teacher_records: dict[str, ProfileRecord] = {}
    with tempfile.TemporaryDirectory(prefix="vitkd-onnx-") as scratch:
        onnx_dir = Path(scratch) if out_path is None else out_path / ONNX_DIR_NAME
        onnx_dir.mkdir(parents=True, exist_ok=True)
        timings = _Timings()
        prepared = {spec_text: _prepare(spec_text, settings, options, onnx_dir, timings)
                    for spec_text in tqdm([spec for spec in ordered_specs if spec not in reused], desc="bench: build",
                                          unit="model", disable=None)}
        plural = "" if len(prepared) == 1 else "s"
        group = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" ({len(prepared)} model{plural})"
        with use_threads(settings.threads), inference_context(options), \
                tqdm(total=settings.timing.max_rounds, desc="bench: interleaved rounds", unit="round",
                     disable=None) as bar:
            timings.results = time_interleaved(timings.subjects, settings=settings.timing, clock=clock,
                                               on_round=lambda _: bar.update())
        for spec_text in tqdm(ordered_specs, desc="bench: evaluate", unit="model", disable=None):
            if spec_text in reused:
                logger.info("reusing the finished records of %s", spec_text)
                model_records = reused[spec_text]
            else:
                model_records = _finish(prepared[spec_text], settings, options, timings, group)
                prepared[spec_text].built = None  # free the model: only its records are needed from here
                gc.collect()
            model_records = _with_teacher(model_records, teacher_records)
            if spec_text == teacher:
                teacher_records = {record.runtime: record for record in model_records}
            records.extend(model_records)
            if on_record is not None:
                for record in model_records:
                    on_record(record)
            if out_path is not None:
                write_reports(records, out_path)
    if out_path is not None:
        plot_tradeoffs(records, out_path / PLOT_FILE_NAME)
    return records
