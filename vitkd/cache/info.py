"""Human-readable description of a logit cache: manifest, sizes, epochs, leftovers and (optionally) integrity.

Behind `vitkd cache-info DIR [--verify]` (`vitkd.cache.command.run_cache_info`), which exits with status 0 when the
cache is usable (and verified, with --verify), 1 when an epoch file is missing/truncated or records fail their check,
and 2 when the directory is not a readable cache at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitkd.cache.format import canonical_json
from vitkd.cache.reader import IntegrityReport, open_cache

_MANIFEST_ORDER = (
    "format", "format_version", "vitkd_version", "created_time", "updated_time", "num_samples", "topk",
    "num_classes", "seed_dtype", "value_dtype", "index_dtype", "byte_order", "record_size", "record_layout",
    "checksum", "epoch_file_pattern", "teacher", "dataset", "augmentation_hash", "augmentation", "recorded_with",
    "completed_epochs", "skipped_samples",
)


def human_bytes(size: int) -> str:
    """`1536` -> `"1.5 KiB"`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def summarize_cache(path: str | os.PathLike) -> dict[str, Any]:
    """Machine-readable facts about a cache directory (opens it without requiring intact epoch files).

    Returns:
        dict with `manifest`, `epochs` (per completed epoch: file, bytes, problem), `total_bytes` (every file in the
        directory), `epoch_bytes`, `bytes_per_sample_epoch` (measured from the epoch files; equals `record_size`
        for an intact cache) and `leftover_files` (temporary files of an interrupted run).
    Raises:
        LogitCacheError: the directory is not a readable cache (no manifest, unknown version, ...).
    """
    reader = open_cache(path, check_files=False)
    epochs = []
    for epoch in reader.completed_epochs:
        file = reader.epoch_file(epoch)
        epochs.append({"epoch": epoch, "file": file.name, "bytes": file.stat().st_size if file.is_file() else None,
                       "problem": reader.epoch_file_problem(epoch)})
    files = [entry for entry in Path(path).iterdir() if entry.is_file()]
    epoch_bytes = sum(entry["bytes"] or 0 for entry in epochs)
    sample_epochs = reader.num_samples * len(epochs)
    return {
        "path": str(Path(path)),
        "manifest": reader.manifest,
        "epochs": epochs,
        "total_bytes": sum(entry.stat().st_size for entry in files),
        "epoch_bytes": epoch_bytes,
        "bytes_per_sample_epoch": epoch_bytes / sample_epochs if sample_epochs else None,
        "leftover_files": sorted(entry.name for entry in files if entry.name.endswith((".partial", ".tmp"))),
    }


def format_cache_info(summary: dict[str, Any], report: IntegrityReport | None = None) -> str:
    """Text report of `summarize_cache` output and, if given, an integrity report."""
    manifest = summary["manifest"]
    lines = [f"logit cache {summary['path']}", "manifest:"]
    keys = [key for key in _MANIFEST_ORDER if key in manifest] + sorted(set(manifest) - set(_MANIFEST_ORDER))
    for key in keys:
        value = manifest[key]
        lines.append(f"  {key:<20} {value if isinstance(value, (str, int)) else canonical_json(value)}")
    completed = [entry["epoch"] for entry in summary["epochs"]]
    lines.append(f"epochs present:        {len(completed)} {completed}")
    for entry in summary["epochs"]:
        size = "missing" if entry["bytes"] is None else human_bytes(entry["bytes"])
        problem = f"  <- {entry['problem']}" if entry["problem"] else ""
        lines.append(f"  {entry['file']:<20} {size}{problem}")
    lines.append(f"total size:            {human_bytes(summary['total_bytes'])} ({summary['total_bytes']} bytes)")
    per_sample = summary["bytes_per_sample_epoch"]
    measured = "n/a (no epochs)" if per_sample is None else f"{per_sample:g}"
    lines.append(f"bytes per sample-epoch: {measured} (record size {manifest['record_size']}, "
                 f"K={manifest['topk']}, {manifest['index_dtype']} indices)")
    if summary["leftover_files"]:
        lines.append(f"leftover temporary files (interrupted run; safe to delete): {summary['leftover_files']}")
    if report is not None:
        lines.append(report.to_text())
    return "\n".join(lines)


def describe_cache(path: str | os.PathLike, *, verify: bool = False, progress: bool = True
                   ) -> tuple[str, bool]:
    """Text description of a cache and whether it is usable (and, with `verify`, every record passes its CRC32)."""
    summary = summarize_cache(path)
    report = open_cache(path, check_files=False).verify(progress=progress) if verify else None
    files_ok = all(entry["problem"] is None for entry in summary["epochs"])
    return format_cache_info(summary, report), files_ok and (report is None or report.ok)
