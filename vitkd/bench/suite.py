"""Profile a list of model specs (and an optional teacher) in one go, saving reports as it goes.

Used by `vitkd bench` and `benchmarks/students.py`. With an output directory, the reports are rewritten after every
model, so an interrupted run keeps its finished rows, and `resume=True` skips models already in `bench.json`.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkd.bench.input_size import InputSize, default_input_size
from vitkd.bench.latency import TimingSettings
from vitkd.bench.model_spec import BuiltModel, build_from_spec, parse_model_spec
from vitkd.bench.plot import plot_tradeoffs
from vitkd.bench.profile import ProfileRecord, compare_to_teacher, profile
from vitkd.bench.report import REPORT_FILE_NAMES, read_records, write_reports

__all__ = ["PLOT_FILE_NAME", "SuiteSettings", "profile_specs"]

logger = logging.getLogger(__name__)

PLOT_FILE_NAME = "bench.png"


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


def _profile_spec(spec_text: str, settings: SuiteSettings, teacher_record: ProfileRecord | None) -> ProfileRecord:
    built = build_from_spec(spec_text)
    input_size = _input_size(built, settings.img_size)
    record = profile(
        built.model, name=spec_text, input_size=input_size, batch_size=settings.batch_size, device=settings.device,
        loader=_eval_loader(built, input_size, settings), teacher_record=teacher_record, threads=settings.threads,
        channels_last=settings.channels_last, amp=settings.amp, compile=settings.compile, timing=settings.timing,
    )
    del built
    gc.collect()
    return record


def _finished_records(out_dir: Path | None, resume: bool) -> dict[str, ProfileRecord]:
    if not resume or out_dir is None:
        return {}
    report = out_dir / REPORT_FILE_NAMES["json"]
    if not report.is_file():
        return {}
    return {record.name: record for record in read_records(report)}


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
    teacher_record: ProfileRecord | None = None
    for spec_text in tqdm(ordered_specs, desc="bench", unit="model", disable=None):
        if spec_text in finished:
            logger.info("reusing the finished record of %s", spec_text)
            record = finished[spec_text]
            if teacher_record is not None:
                record = compare_to_teacher(record, teacher_record)
        else:
            record = _profile_spec(spec_text, settings, teacher_record)
        if spec_text == teacher:
            teacher_record = record
        records.append(record)
        if on_record is not None:
            on_record(record)
        if out_path is not None:
            write_reports(records, out_path)
    if out_path is not None:
        plot_tradeoffs(records, out_path / PLOT_FILE_NAME)
    return records
