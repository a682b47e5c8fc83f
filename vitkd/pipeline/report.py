"""The pipeline's final table: one row per stage with the student, its stored bits and size, FLOPs, top-1, wall time.

Stored size: the packed low-bit file of a quantised stage (`student.packed.safetensors`), else the exported
safetensors; FLOPs: forward FLOPs of one image of the exported (plain timm) student, `vitkd.bench.flops`.
"""

from __future__ import annotations

import json
from typing import Any

from vitkd.bench.flops import count_flops
from vitkd.config import Recipe
from vitkd.models.factory import EXPORT_WEIGHTS, count_parameters, load_model_from_path
from vitkd.models.quantize.packed import PACKED_FILE, read_packed_info, stored_bytes, weight_bits


def stage_row(recipe: Recipe, summary: dict[str, Any], action: str) -> dict[str, Any]:
    """The table row of a finished stage (its export must exist)."""
    export = recipe.run_dir / "export"
    model, _ = load_model_from_path(export)
    packed = export / PACKED_FILE
    if packed.is_file():
        info = read_packed_info(packed)
        split = any(entry["split"] for entry in info["layers"].values())
        bits = f"{weight_bits(info)}{' (2x wide)' if split else ''}"
        size = stored_bytes(packed)
    else:
        bits, size = "32", stored_bytes(export / EXPORT_WEIGHTS)
    depth = len(model.blocks) if hasattr(model, "blocks") else None
    size_px = recipe.data.img_size
    return {"stage": recipe.name, "student": f"{recipe.student.name}{f' ({depth} blocks)' if depth else ''}",
            "bits": bits, "stored_bytes": size, "params": count_parameters(model),
            "flops": count_flops(model, (3, size_px, size_px)), "top1": summary.get("top1"),
            "wall_time_s": summary.get("wall_time_s"), "action": action}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the stage rows."""
    lines = ["| stage | student | bits | stored size | FLOPs | top-1 (%) | wall time (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        top1 = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        wall = f"{row['wall_time_s']:.0f}" if row["wall_time_s"] is not None else "-"
        lines.append(f"| {row['stage']} | {row['student']} | {row['bits']} | {_bytes(row['stored_bytes'])} | "
                     f"{row['flops'] / 1e6:.2f} M | {top1} | {wall} |")
    return "\n".join(lines)


def _bytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def report_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)
