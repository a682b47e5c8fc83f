"""`vitkd demo`: the main job on the bundled digits, fully offline.

Trains a small CNN teacher, then the same ViT student two ways with the same budget: on labels alone, and with a
DeiT distillation token (hard) from the CNN teacher. Prints a table (model, method, params, top-1) and writes
`<output-dir>/demo/report.md` and `report.json`. Finished rows are reused and interrupted rows resumed when the
demo runs again with the same recipes; `--fresh` retrains everything.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vitkd
from vitkd.config import Recipe, dump_recipe, load_recipe
from vitkd.engine.checkpoint import atomic_write


@dataclass(frozen=True)
class DemoRow:
    recipe: str  # file name in recipes/demo/
    method: str  # what the report calls it


DEMO_ROWS = (
    DemoRow("teacher_cnn.yaml", "teacher (CNN, labels only)"),
    DemoRow("vit_plain.yaml", "no distillation"),
    DemoRow("deit_hard.yaml", "DeiT token, hard (CNN teacher)"),
)


def demo_recipes_dir() -> Path:
    path = Path(vitkd.__file__).resolve().parents[1] / "recipes" / "demo"
    if not path.is_dir():
        raise FileNotFoundError(f"the demo recipes are not at {path}; run the demo from a vitkd source checkout "
                                f"installed with `pip install -e .` (what `make demo` does)")
    return path


def _demo_recipe(row: DemoRow, demo_dir: Path, epochs_scale: float) -> Recipe:
    recipe = load_recipe(demo_recipes_dir() / row.recipe)
    overrides = [f"train.output_dir={demo_dir}", f"train.epochs={max(1, round(recipe.train.epochs * epochs_scale))}"]
    if recipe.teacher is not None and recipe.teacher.checkpoint:
        overrides.append(f"teacher.checkpoint={demo_dir / Path(recipe.teacher.checkpoint).name}")
    return load_recipe(demo_recipes_dir() / row.recipe, overrides)


def _train_or_reuse(recipe: Recipe) -> dict[str, Any]:
    """Reuse a finished run of the same recipe, resume an interrupted one, else train from scratch."""
    from vitkd.engine.trainer import train

    run_dir = recipe.run_dir
    same_recipe = (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").read_text() == dump_recipe(recipe)
    if same_recipe and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("epochs") == recipe.train.epochs and summary.get("top1") is not None:
            print(f"[demo] reusing finished run {run_dir}")
            return summary
    if (run_dir / "checkpoints" / "last.pt").is_file():
        if not same_recipe:
            raise ValueError(f"{run_dir} holds a run of a different recipe; rerun the demo with --fresh to retrain")
        print(f"[demo] resuming {run_dir}")
        return train(recipe, resume=True)
    return train(recipe)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the demo rows."""
    header = "| model | method | params | top-1 (%) | top-5 (%) | train img/s | wall time (s) |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['method']} | {row['params']:,} | {row['top1']:.2f} | "
                     f"{row['top5']:.2f} | {row['images_per_s']:.0f} | {row['wall_time_s']:.0f} |")
    return "\n".join(lines)


def run_demo(output_dir: str = "runs", epochs_scale: float = 1.0, fresh: bool = False) -> list[dict[str, Any]]:
    demo_dir = Path(output_dir) / "demo"
    if fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    rows = []
    for row in DEMO_ROWS:
        recipe = _demo_recipe(row, demo_dir, epochs_scale)
        print(f"[demo] {row.method}: {recipe.student.name}, {recipe.train.epochs} epochs")
        summary = _train_or_reuse(recipe)
        rows.append({"run": recipe.name, "model": recipe.student.name, "method": row.method,
                     "params": summary["params"], "top1": summary["top1"], "top5": summary["top5"],
                     "best_top1": summary["best_top1"], "images_per_s": summary["images_per_s"],
                     "wall_time_s": summary["wall_time_s"], "epochs": recipe.train.epochs})
    table = format_table(rows)
    report = ("# vitkd demo: distillation on the bundled digits\n\n"
              "Real handwritten digits (scikit-learn's 1,797 8x8 scans) at 16x16; 1,437 training and 360 validation "
              "images. Every ViT row trains the same student for the same number of epochs; top-1/top-5 are on the "
              "validation split after the last epoch.\n\n" + table + "\n")
    atomic_write(demo_dir / "report.md", lambda tmp: Path(tmp).write_text(report))
    atomic_write(demo_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    print()
    print(table)
    print(f"\nreport: {demo_dir / 'report.md'}")
    return rows
