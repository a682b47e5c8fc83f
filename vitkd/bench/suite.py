"""Profile a list of model specs (and an optional teacher) in one go, saving reports as it goes.

Used by `vitkd bench` and `benchmarks/students.py`. With an output directory, the reports are rewritten after every
model, so an interrupted run keeps its finished rows, and `resume=True` skips models already in `bench.json`.

Each model gets one record per runtime asked for (`SuiteSettings.runtimes`: torch, onnxruntime; `ort_int8` adds
ONNX Runtime int8), ONNX files going to `<out>/onnx/` (a temporary folder without `out_dir`). Models whose
architecture, kwargs and input size are identical (the same student trained several ways) share one latency and
throughput measurement per runtime: the first such model is timed, the others reuse its figures (their accuracy is
their own) and name it in `measured_with`, so weights that cannot change the speed cannot make one look slower
through machine drift.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkd.bench.accuracy import evaluate_accuracy
from vitkd.bench.input_size import InputSize, default_input_size
from vitkd.bench.latency import TimingSettings
from vitkd.bench.model_spec import BuiltModel, build_from_spec, parse_model_spec
from vitkd.bench.onnx_profile import ONNX_RUNTIME, ONNX_RUNTIME_INT8, TORCH_RUNTIME, profile_onnx
from vitkd.bench.plot import plot_tradeoffs
from vitkd.bench.profile import ProfileRecord, compare_to_teacher, profile
from vitkd.bench.runtime import RuntimeOptions
from vitkd.bench.report import REPORT_FILE_NAMES, read_records, write_reports

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
    preprocessing.update({key: built.info[key] for key in ("mean", "std", "crop_pct") if key in built.info})
    return build_eval_loader(settings.dataset, settings.data_root, input_size[1], settings.batch_size,
                             tuple(preprocessing["mean"]), tuple(preprocessing["std"]), split=settings.split,
                             crop_pct=float(preprocessing.get("crop_pct", 0.875)))


def architecture_signature(built: BuiltModel, input_size: InputSize) -> str:
    """What decides a model's speed: timm architecture, kwargs and input size (not the weights)."""
    name = built.info.get("model") or built.spec.name or type(built.model).__name__
    kwargs = built.info.get("kwargs") or built.spec.kwargs
    return json.dumps([name, kwargs, list(input_size)], sort_keys=True, default=str)


_TIMING_FIELDS = ("latency_ms_median", "latency_ms_p90", "latency_spread", "throughput", "peak_memory_bytes",
                  "threads", "speedup_vs_torch")


def _share_timing(record: ProfileRecord, measured: ProfileRecord) -> ProfileRecord:
    """`record` with the speed figures of `measured` (same architecture and settings) and `measured_with` set."""
    return dataclasses.replace(record, measured_with=measured.name,
                               **{key: getattr(measured, key) for key in _TIMING_FIELDS})


def _profile_spec(spec_text: str, settings: SuiteSettings, teacher_records: dict[str, ProfileRecord],
                  onnx_dir: Path, measured: dict[tuple[str, str], ProfileRecord]) -> list[ProfileRecord]:
    """One record per runtime for one model; `measured` maps (signature, runtime) to the record first timed."""
    built = build_from_spec(spec_text)
    input_size = _input_size(built, settings.img_size)
    signature = architecture_signature(built, input_size)
    loader = _eval_loader(built, input_size, settings)
    # ONNX rows whose speed is shared still need their own file for their accuracy (int8 depends on the weights);
    # `profile_onnx` then times them only for the two forwards this allows, and the shared figures replace those.
    quick = dataclasses.replace(settings.timing, warmup_iterations=0, min_rounds=2, max_rounds=2,
                                iterations_per_round=1, time_budget_s=1e-3)
    records: list[ProfileRecord] = []
    torch_record = None
    if TORCH_RUNTIME in settings.runtimes:
        shared = measured.get((signature, TORCH_RUNTIME))
        if shared is not None and loader is not None:
            options = RuntimeOptions(device=shared.device, channels_last=settings.channels_last, amp=settings.amp)
            accuracy = evaluate_accuracy(built.model, loader, model_name=spec_text, options=options)
            torch_record = _share_timing(dataclasses.replace(shared, name=spec_text, top1=accuracy.top1,
                                                             top5=accuracy.top5), shared)
        elif shared is not None:
            torch_record = _share_timing(dataclasses.replace(shared, name=spec_text), shared)
        else:
            torch_record = profile(
                built.model, name=spec_text, input_size=input_size, batch_size=settings.batch_size,
                device=settings.device, loader=loader, threads=settings.threads,
                channels_last=settings.channels_last, amp=settings.amp, compile=settings.compile,
                timing=settings.timing)
            measured[(signature, TORCH_RUNTIME)] = torch_record
        records.append(torch_record)
    if ONNX_RUNTIME in settings.runtimes:
        shared_onnx = [measured.get((signature, runtime)) for runtime in (ONNX_RUNTIME, ONNX_RUNTIME_INT8)]
        is_shared = shared_onnx[0] is not None
        onnx_records = profile_onnx(built.model, onnx_dir, name=spec_text, input_size=input_size,
                                    batch_size=settings.batch_size, loader=loader, threads=settings.threads,
                                    int8=settings.ort_int8, torch_record=torch_record,
                                    timing=quick if is_shared else settings.timing)
        for record, first in zip(onnx_records, shared_onnx):
            if first is not None:
                record = _share_timing(record, first)
            else:
                measured[(signature, record.runtime)] = record
            records.append(record)
    del built
    gc.collect()
    return [compare_to_teacher(record, teacher_records[record.runtime])
            if record.runtime in teacher_records else record for record in records]


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


def profile_specs(model_specs: Sequence[str], *, teacher: str | None = None, settings: SuiteSettings = SuiteSettings(),
                  out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
                  on_record: Callable[[ProfileRecord], None] | None = None) -> list[ProfileRecord]:
    """Profile the teacher (if any) and every model spec; the teacher's record comes first.

    All specs are parsed before any work starts, so a typo fails in a second rather than after an hour. With
    `out_dir`, `bench.csv/json/md` are rewritten after each model and `bench.png` at the end.

    Args:
        model_specs: model specs (see `vitkd.bench.model_spec`); duplicates are profiled once.
        teacher: spec of the teacher the ratio columns refer to.
        settings: shared measurement settings.
        out_dir: where to write reports and the plot (`None`: write nothing).
        resume: reuse records already in `out_dir/bench.json` with the same name instead of re-measuring.
        on_record: called with each new or reused record (e.g. to print progress).
    """
    ordered_specs = list(dict.fromkeys([*([teacher] if teacher else []), *model_specs]))
    for spec_text in ordered_specs:
        parse_model_spec(spec_text)
    out_path = None if out_dir is None else Path(out_dir)
    finished = _finished_records(out_path, resume)
    records: list[ProfileRecord] = []
    teacher_records: dict[str, ProfileRecord] = {}
    measured: dict[tuple[str, str], ProfileRecord] = {}
    wanted = {*settings.runtimes, *([ONNX_RUNTIME_INT8] if settings.ort_int8 else [])}
    with tempfile.TemporaryDirectory(prefix="vitkd-onnx-") as scratch:
        onnx_dir = Path(scratch) if out_path is None else out_path / ONNX_DIR_NAME
        for spec_text in tqdm(ordered_specs, desc="bench", unit="model", disable=None):
            reused = finished.get(spec_text, [])
            if reused and {record.runtime for record in reused} == wanted:
                logger.info("reusing the finished records of %s", spec_text)
                model_records = [compare_to_teacher(record, teacher_records[record.runtime])
                                 if record.runtime in teacher_records else record for record in reused]
            else:
                model_records = _profile_spec(spec_text, settings, teacher_records, onnx_dir, measured)
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
