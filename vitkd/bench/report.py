"""Tables and report files for `ProfileRecord`s: a terminal table, and CSV / JSON / Markdown files.

The terminal and Markdown tables show the same columns, in human units (M params, GFLOPs, or MFLOPs when every
model is below 1 GFLOP, ms, MiB, or KiB of stored size when every model is below 1 MiB, %); columns that no record
fills (accuracy without a dataset, ratios without a teacher, the runtime when everything ran in PyTorch) are left
out. `Bits` and `Stored` are the bits per stored weight and the stored size (`vitkd.bench.storage`). CSV and JSON
keep every record field in raw units (counts, bytes, ms, images/s) and read back into identical records
(`read_records`); version 1 reports (before runtimes) read as torch records, version 2 ones with `model_file_bytes`
as `stored_bytes`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vitkd.bench.flops import TRAINING_FLOPS_MULTIPLIER
from vitkd.bench.profile import ProfileRecord
from vitkd.files import atomic_write

__all__ = ["REPORT_FILE_NAMES", "TableColumn", "format_table", "markdown_table", "read_records", "table_columns",
           "write_reports"]

JSON_FORMAT = "vitkd.bench.records"
JSON_VERSION = 3
READABLE_JSON_VERSIONS = (1, 2, 3)  # 2 added runtime, model_file_bytes, speedup_vs_torch, measured_with;
# 3 renamed model_file_bytes to stored_bytes (now filled for torch rows too), added weight_bits and timing_group
RENAMED_FIELDS = {"model_file_bytes": "stored_bytes"}
REPORT_FILE_NAMES = {"csv": "bench.csv", "json": "bench.json", "markdown": "bench.md"}


@dataclass(frozen=True)
class TableColumn:
    """One table column: its header, how to read the value from a record, and how to print it.

    `optional` columns are shown only when at least one record has a value for them; `shown`, when given, decides
    from all the records instead.
    """

    header: str
    value: Callable[[ProfileRecord], Any]
    text: Callable[[Any], str]
    optional: bool = False
    shown: Callable[[Sequence[ProfileRecord]], bool] | None = None

    def cell(self, record: ProfileRecord) -> str:
        value = self.value(record)
        return "-" if value is None else self.text(value)


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: f"{value:.{digits}f}"


def _times(value: float) -> str:
    return f"{value:.2f}x"


def _percent_of_one(value: float) -> str:
    return f"{100 * value:.1f}%"


def _several_runtimes(records: Sequence[ProfileRecord]) -> bool:
    return any(record.runtime != "torch" for record in records)


def _shared(record: ProfileRecord) -> str:
    return "" if record.measured_with is None else "*"


COLUMNS: tuple[TableColumn, ...] = (
    TableColumn("Model", lambda r: r.name + _shared(r), str),
    TableColumn("Runtime", lambda r: r.runtime, str, shown=_several_runtimes),
    TableColumn("Input", lambda r: "x".join(str(side) for side in r.input_size[1:]), str),
    TableColumn("Params (M)", lambda r: r.params / 1e6, _fixed(2)),
    TableColumn("GFLOPs", lambda r: r.flops / 1e9, _fixed(2)),  # MFLOPs for small models: see `table_columns`
    TableColumn("Train GFLOPs/img", lambda r: r.train_flops_per_image / 1e9, _fixed(2)),
    TableColumn("Acts (M)", lambda r: r.activations / 1e6, _fixed(2)),
    TableColumn("Latency ms", lambda r: r.latency_ms_median, _fixed(2)),
    TableColumn("p90 ms", lambda r: r.latency_ms_p90, _fixed(2)),
    TableColumn("Spread", lambda r: r.latency_spread, _percent_of_one),
    TableColumn("Img/s", lambda r: r.throughput, _fixed(1)),
    TableColumn("vs torch", lambda r: r.speedup_vs_torch, _times, optional=True),
    TableColumn("Peak MiB", lambda r: None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, _fixed(1)),
    TableColumn("Bits", lambda r: r.weight_bits, str, optional=True),
    TableColumn("Stored MiB", lambda r: None if r.stored_bytes is None else r.stored_bytes / 2**20, _fixed(2),
                optional=True),  # KiB for small models: see `table_columns`
    TableColumn("Top-1 %", lambda r: r.top1, _fixed(2), optional=True),
    TableColumn("Top-5 %", lambda r: r.top5, _fixed(2), optional=True),
    TableColumn("Speed-up", lambda r: r.speedup_vs_teacher, _times, optional=True),
    TableColumn("Params ÷", lambda r: r.param_reduction_vs_teacher, _times, optional=True),
    TableColumn("FLOPs ÷", lambda r: r.flop_reduction_vs_teacher, _times, optional=True),
    TableColumn("Top-1 kept", lambda r: r.accuracy_retained, _percent_of_one, optional=True),
)


def table_columns(records: Sequence[ProfileRecord]) -> list[TableColumn]:
    """The columns worth showing for `records`: all fixed ones, and optional ones some record fills."""
    def wanted(column: TableColumn) -> bool:
        if column.shown is not None:
            return column.shown(records)
        return not column.optional or any(column.value(record) is not None for record in records)

    columns = [column for column in COLUMNS if wanted(column)]
    if records and max(record.flops for record in records) < 1e9:  # 0.00789 GFLOPs reads better as 7.89 MFLOPs
        columns = [dataclasses.replace(column, header=column.header.replace("GFLOPs", "MFLOPs"),
                                       value=_in_millions(column.value)) if "GFLOPs" in column.header else column
                   for column in columns]
    stored = [record.stored_bytes for record in records if record.stored_bytes is not None]
    if stored and max(stored) < 2**20:  # a 1-bit toy student's 0.00 MiB reads better as 3.2 KiB
        columns = [dataclasses.replace(column, header="Stored KiB", value=_in_kib(column.value), text=_fixed(1))
                   if column.header == "Stored MiB" else column for column in columns]
    return columns


def _in_millions(in_billions: Callable[[ProfileRecord], Any]) -> Callable[[ProfileRecord], Any]:
    return lambda record: in_billions(record) * 1e3


def _in_kib(in_mib: Callable[[ProfileRecord], Any]) -> Callable[[ProfileRecord], Any]:
    return lambda record: None if in_mib(record) is None else in_mib(record) * 2**10


def _distinct(values: Sequence[Any]) -> str:
    return "/".join(str(value) for value in dict.fromkeys(values))


def _footnote(records: Sequence[ProfileRecord]) -> str:
    switches = [name for name, used in (("channels_last", any(r.channels_last for r in records)),
                                        ("AMP", any(r.amp for r in records)),
                                        ("torch.compile", any(r.compiled for r in records))) if used]
    teachers = [r.teacher for r in records if r.teacher]
    notes = [
        f"device {_distinct([r.device for r in records])}, CPU threads {_distinct([r.threads for r in records])}"
        + (f", {', '.join(switches)}" if switches else ""),
        "latency at batch 1 (median, p90, spread of round medians); "
        f"Img/s and peak memory at batch {_distinct([r.batch_size for r in records])}",
        f"FLOPs: 1 multiply-add = 1 FLOP, batch 1; train = {TRAINING_FLOPS_MULTIPLIER}x forward (backward = 2x)",
    ]
    if teachers:
        notes.append(f"ratios vs teacher {_distinct(teachers)}: speed-up and ÷ = teacher / student, "
                     "Top-1 kept = student / teacher")
    if _several_runtimes(records):
        notes.append("onnxruntime: the model exported to ONNX (TorchScript exporter), CPU execution provider, all "
                     "graph optimisations, intra_op_num_threads = CPU threads; onnxruntime-int8: its dynamic int8 "
                     "quantisation (quantize_dynamic, int8 weights); vs torch = torch latency / this row's latency; "
                     "their stored size is the .onnx file's")
    if any(r.stored_bytes is not None for r in records):
        notes.append("Bits = bits per stored weight (a packed low-bit export's width, else the float dtype's); "
                     "Stored = the packed file, the weights as safetensors, or the .onnx file")
    low_bit = [r.name for r in records if r.runtime == "torch" and r.weight_bits is not None and r.weight_bits < 16]
    if low_bit:
        notes.append(f"low-bit rows ({', '.join(dict.fromkeys(low_bit))}): the packed export rebuilt as a float timm "
                     "model (decoded weights, 8-bit activation rounding when the file records it); their accuracy is "
                     "the low-bit student's, their speed that of simulated quantisation, not of low-bit kernels")
    groups: dict[str, list[str]] = {}
    for r in records:
        if r.timing_group is not None and r.name not in groups.setdefault(r.timing_group, []):
            groups[r.timing_group].append(r.name)
    if len(groups) == 1:
        notes.append("latency and throughput measured in interleaved rounds (each round times every model in turn, "
                     "so machine drift hits all alike)")
    elif groups:
        notes.append("latency and throughput measured in interleaved rounds within each run, in "
                     f"{len(groups)} runs: " + "; ".join(f"{group}: {', '.join(names)}"
                                                       for group, names in groups.items()))
    shared = [f"{r.name} ({r.runtime}) reuses {r.measured_with}" for r in records if r.measured_with is not None]
    if shared:
        notes.append("* identical architecture and settings share one latency/throughput measurement: "
                     + "; ".join(shared))
    undercounted = [r.name for r in records if r.flops_uncounted_ops]
    if undercounted:
        notes.append(f"FLOPs are lower bounds (uncounted ops) for: {', '.join(undercounted)}")
    return "\n".join(notes)


def format_table(records: Sequence[ProfileRecord]) -> str:
    """A fixed-width text table for the terminal, with a few lines of notes under it."""
    columns = table_columns(records)
    rows = [[column.header for column in columns]] + [[column.cell(record) for column in columns]
                                                     for record in records]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(rest, widths[1:])])

    rule = "-" * len(line(rows[0]))
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:]), rule, _footnote(records)])


def markdown_table(records: Sequence[ProfileRecord]) -> str:
    """A GitHub-flavoured Markdown table with the same columns as `format_table`, and the notes as a list."""
    columns = table_columns(records)
    header = "| " + " | ".join(column.header for column in columns) + " |"
    alignment = "|" + "|".join([":---"] + ["---:"] * (len(columns) - 1)) + "|"
    body = ["| " + " | ".join(column.cell(record) for column in columns) + " |" for record in records]
    notes = ["", *(f"- {note}" for note in _footnote(records).splitlines())]
    return "\n".join([header, alignment, *body, *notes]) + "\n"


def _csv_text(records: Sequence[ProfileRecord]) -> str:
    names = [field.name for field in fields(ProfileRecord)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({name: _csv_cell(getattr(record, name)) for name in names})
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ";".join(str(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


def _parse_csv_cell(text: str, hint: Any) -> Any:
    """Invert `_csv_cell` for a field annotated `hint` (`X | None`, bool, int, float, str, `tuple[X, ...]`).

    The bench's only CSV reader: a CSV cell is text, and what it held is known only from the record's annotation
    (`vitkd.config`'s converter checks values YAML already typed, so it does not apply here).
    """
    arguments = typing.get_args(hint)
    if type(None) in arguments:
        if text == "":
            return None
        hint = next(argument for argument in arguments if argument is not type(None))
    if typing.get_origin(hint) is tuple:
        return [typing.get_args(hint)[0](item) for item in text.split(";")] if text else []
    if hint is bool and text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True" if hint is bool else hint(text)


def _records_from_csv(text: str, source: Path) -> list[ProfileRecord]:
    hints = typing.get_type_hints(ProfileRecord)
    records = []
    for line_number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            renamed = {RENAMED_FIELDS.get(name, name): cell for name, cell in row.items()}
            records.append(ProfileRecord.from_dict({name: _parse_csv_cell(cell, hints.get(name, str))
                                                    for name, cell in renamed.items()}))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: line {line_number} is not a ProfileRecord row: {error}") from error
    return records


def _records_from_json(text: str, source: Path) -> list[ProfileRecord]:
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise ValueError(f"{source}: not a vitkd bench report (expected a JSON object with format={JSON_FORMAT!r})")
    if document.get("version") not in READABLE_JSON_VERSIONS:
        raise ValueError(f"{source}: report version {document.get('version')!r} is not supported "
                         f"(this vitkd reads versions {list(READABLE_JSON_VERSIONS)})")
    return [ProfileRecord.from_dict({RENAMED_FIELDS.get(key, key): value for key, value in values.items()})
            for values in document["records"]]


_READERS = {".csv": _records_from_csv, ".json": _records_from_json}


def read_records(path: str | os.PathLike[str]) -> list[ProfileRecord]:
    """Read records back from a `bench.csv` or `bench.json` written by `write_reports`."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"cannot read records from {path}: expected one of {sorted(_READERS)}")
    return reader(path.read_text(encoding="utf-8"), path)


def write_result_files(out_dir: str | os.PathLike[str], stem: str, result: Any, markdown: str
                       ) -> tuple[Path, Path]:
    """Write a benchmark's `<stem>.json` (`result`, JSON-serialisable) and `<stem>.md` (`markdown`) into `out_dir`
    (created if needed), each atomically. Returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write(json_path, json.dumps(result, indent=2) + "\n")
    atomic_write(markdown_path, markdown)
    return json_path, markdown_path


def write_reports(records: Sequence[ProfileRecord], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write `bench.csv`, `bench.json` and `bench.md` into `out_dir` (created if needed).

    Returns the written paths keyed by `"csv"`, `"json"` and `"markdown"`.
    """
    if not records:
        raise ValueError("no records to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"format": JSON_FORMAT, "version": JSON_VERSION, "records": [record.to_dict() for record in records]}
    contents = {
        "csv": _csv_text(records),
        "json": json.dumps(document, indent=2) + "\n",
        "markdown": markdown_table(records),
    }
    paths = {}
    for kind, text in contents.items():
        paths[kind] = out_dir / REPORT_FILE_NAMES[kind]
        atomic_write(paths[kind], text)
    return paths
