"""Run a pipeline: every stage in order (reused, resumed or trained), then the table of all stages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm import tqdm

from vitkd.files import atomic_write
from vitkd.pipeline.recipe import PipelineConfig, stage_recipe, stage_run_dir
from vitkd.pipeline.report import format_table, report_json, stage_row
from vitkd.pipeline.stages import run_stage


def run_pipeline(pipeline: PipelineConfig, output_dir: Optional[str] = None, fresh: bool = False,
                 overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train (or reuse / resume) every stage, write `<output_dir>/<pipeline>/report.md` and `report.json`, return the
    rows. `fresh` deletes this pipeline's stage runs first; `overrides` (dotted `key=value`) apply to every stage."""
    output_dir = output_dir or pipeline.output_dir
    if fresh:
        for index in range(len(pipeline.stages)):
            shutil.rmtree(stage_run_dir(pipeline, index, output_dir), ignore_errors=True)
    rows = []
    for index, stage in enumerate(pipeline.stages):
        recipe = stage_recipe(pipeline, index, output_dir, overrides)  # built after the previous stage finished
        tqdm.write(f"[pipeline {pipeline.name}] stage {index + 1}/{len(pipeline.stages)}: {stage.name}")
        summary, action = run_stage(recipe)
        tqdm.write(f"[pipeline {pipeline.name}] {stage.name}: {action}, top-1 {summary.get('top1')}")
        rows.append(stage_row(recipe, summary, action))
    table = format_table(rows)
    report_dir = Path(output_dir) / pipeline.name
    atomic_write(report_dir / "report.md", f"# vitkd pipeline {pipeline.name}\n\n{table}\n")
    atomic_write(report_dir / "report.json", report_json(rows))
    print(table)
    print(f"\nreport: {report_dir / 'report.md'}")
    return rows
