"""`vitkd demo`: the main job on the bundled digits, fully offline.

Trains a small CNN teacher, then the same ViT student several ways with the same budget: on labels alone, and with
each distillation method from the teacher. Each trained model is then profiled with `vitkd.bench` (forward FLOPs,
batch-1 CPU latency); rows whose student has the same architecture and input share one latency measurement (the
first such row's), since their weights cannot change the speed and separate timings would only show machine drift.
Prints a table (model, method, params, FLOPs, latency, top-1) and writes
`<output-dir>/demo/report.md`, `report.json` and `tradeoffs.png` (accuracy against latency and FLOPs). Finished rows
are reused and interrupted rows resumed when the demo runs again with the same recipes; `--fresh` retrains everything.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from vitkd.config import Recipe, TrainConfig, dump_recipe, load_raw_recipe, load_recipe
from vitkd.bench import ProfileRecord, TimingSettings, plot_tradeoffs, profile
from vitkd.errors import ConfigError
from vitkd.files import atomic_write
from vitkd.shipped_recipes import recipes_dir
from vitkd.tasks import resolve_recipe


@dataclass(frozen=True)
class DemoRow:
    recipe: str  # file name in recipes/demo/ (shipped with the package)
    method: str  # what the report calls it
    builds_cache: bool = False  # run `cache-logits` for the recipe's teacher before training the row


DEMO_ROWS = (
    DemoRow("teacher_cnn.yaml", "teacher (CNN, labels only)"),
    DemoRow("vit_plain.yaml", "no distillation"),
    DemoRow("deit_hard.yaml", "DeiT token, hard (CNN teacher)"),
    DemoRow("logit_kd.yaml", "logit KD (CNN teacher, online)"),
    DemoRow("cached_kd.yaml", "logit KD from cached top-5 teacher logits", builds_cache=True),
    DemoRow("vitkd.yaml", "ViTKD + logit KD (CNN teacher)"),
    DemoRow("manifold.yaml", "ManifoldKD + logit KD (CNN teacher)"),
)


def demo_recipes_dir() -> Path:
    """The demo's recipes: `recipes/demo/`, shipped with the package (`vitkd.shipped_recipes`)."""
    path = recipes_dir() / "demo"
    if not path.is_dir():
        raise FileNotFoundError(f"the demo recipes are missing: {path} is not a folder; reinstall vitkd")
    return path


def demo_recipe(recipe_file: str, demo_dir: Path, epochs_scale: float = 1.0, extra_overrides: Sequence[str] = ()
                ) -> Recipe:
    """A demo recipe (`recipes/demo/<recipe_file>`) with its runs, teacher checkpoint and cache under `demo_dir`.

    The file is read once; the output paths and scaled epochs are set in the raw recipe, then `extra_overrides`
    (dotted `key=value`, which win) are applied and the recipe is built, checked and resolved once.
    """
    raw = load_raw_recipe(demo_recipes_dir() / recipe_file)
    raw.setdefault("name", Path(recipe_file).stem)
    train = raw.setdefault("train", {})
    train["epochs"] = max(1, round(train.get("epochs", TrainConfig.epochs) * epochs_scale))
    train["output_dir"] = str(demo_dir)
    teacher = raw.get("teacher")
    if isinstance(teacher, dict):
        for key in ("checkpoint", "cache"):  # the teacher run and its logit cache live beside the demo's runs
            if teacher.get(key):
                teacher[key] = str(demo_dir / Path(str(teacher[key])).name)
    return resolve_recipe(load_recipe(raw=raw, overrides=extra_overrides))


def finished_summary(recipe: Recipe, metric: str) -> Optional[dict[str, Any]]:
    """The summary of a finished run of exactly `recipe` (same config.yaml, all its epochs, `metric` recorded)."""
    run_dir = recipe.run_dir
    config, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not (config.is_file() and summary_path.is_file()) or config.read_text() != dump_recipe(recipe):
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("epochs") != recipe.train.epochs or summary.get(metric) is None:
        return None
    return summary


def train_or_reuse(recipe: Recipe, builds_cache: bool = False, metric: str = "top1", tag: str = "demo"
                   ) -> dict[str, Any]:
    """Reuse a finished run of the same recipe (its summary records `metric`), resume an interrupted one, else train
    from scratch. A run directory holding another recipe's run, finished or not, is refused (nothing finished is
    overwritten): `--fresh` retrains. `tag` prefixes the progress lines.

    With `builds_cache`, the teacher's sparse-logit cache is written (or completed) first; a finished cache is reused.
    """
    from vitkd.cache.logit_job import build_logit_cache
    from vitkd.training import train

    run_dir = recipe.run_dir
    summary = finished_summary(recipe, metric)
    if summary is not None:
        print(f"[{tag}] reusing finished run {run_dir}")
        return summary
    config = run_dir / "config.yaml"
    same_recipe = config.is_file() and config.read_text() == dump_recipe(recipe)
    if not same_recipe and ((run_dir / "checkpoints" / "last.pt").is_file() or (run_dir / "summary.json").is_file()):
        raise ConfigError(f"{run_dir} holds a run of a different recipe; rerun the demo with --fresh to retrain it")
    if builds_cache:
        topk = recipe.teacher.cache_topk
        print(f"[{tag}] caching the teacher's {f'top-{topk}' if topk else 'top-K (default K)'} logits in "
              f"{recipe.teacher.cache}")
        build_logit_cache(recipe, progress=recipe.train.progress)
    if (run_dir / "checkpoints" / "last.pt").is_file():
        print(f"[{tag}] resuming {run_dir}")
        return train(recipe, resume=True)
    return train(recipe)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the demo rows; a row reusing another's latency measurement is marked `*`."""
    header = ("| model | method | params | FLOPs | latency b1 (ms) | top-1 (%) | top-5 (%) | train img/s | "
              "wall time (s) |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        shared = "*" if row.get("latency_measured_with") else ""
        lines.append(f"| {row['model']} | {row['method']} | {row['params']:,} | {row['flops'] / 1e6:.2f} M | "
                     f"{row['latency_ms']:.2f}{shared} | {row['top1']:.2f} | {row['top5']:.2f} | "
                     f"{row['images_per_s']:.0f} | "
                     f"{row['wall_time_s']:.0f} |")
    return "\n".join(lines)


DEMO_TIMING = TimingSettings(warmup_iterations=5, min_rounds=3, max_rounds=10, time_budget_s=2.0)


def _profile_row(recipe: Recipe, summary: dict[str, Any], measured: dict[str, ProfileRecord]) -> ProfileRecord:
    """FLOPs and batch-1 latency of the trained student (its export), with the row's final accuracy.

    `measured` maps an architecture (timm name, kwargs, input size, batch) to the first row profiled with it; a
    row of the same architecture reuses that record's figures and names it in `measured_with`.
    """
    from vitkd.models.factory import load_model_from_path

    model, info = load_model_from_path(recipe.run_dir)
    size = recipe.data.img_size
    architecture = json.dumps([info.get("model"), info.get("kwargs"), size, recipe.data.batch_size], sort_keys=True,
                              default=str)
    first = measured.get(architecture)
    if first is not None:
        return dataclasses.replace(first, name=recipe.name, top1=summary["top1"], top5=summary["top5"],
                                   measured_with=first.name)
    record = profile(model, name=recipe.name, input_size=(3, size, size), batch_size=recipe.data.batch_size,
                     device="cpu", timing=DEMO_TIMING)
    measured[architecture] = record
    return dataclasses.replace(record, top1=summary["top1"], top5=summary["top5"])


def run_demo(output_dir: str = "runs", epochs_scale: float = 1.0, fresh: bool = False,
             extra_overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train (or reuse) every demo row, profile it, write the report; returns the rows of the table.

    `extra_overrides` (dotted `key=value`) apply to every row, e.g. `train.max_steps_per_epoch=5` for a smoke run.
    """
    demo_dir = Path(output_dir) / "demo"
    if fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    rows = []
    records: list[ProfileRecord] = []
    measured: dict[str, ProfileRecord] = {}
    for row in DEMO_ROWS:
        recipe = demo_recipe(row.recipe, demo_dir, epochs_scale, extra_overrides)
        print(f"[demo] {row.method}: {recipe.student.name}, {recipe.train.epochs} epochs")
        summary = train_or_reuse(recipe, row.builds_cache)
        record = _profile_row(recipe, summary, measured)
        records.append(record)
        rows.append({"run": recipe.name, "model": recipe.student.name, "method": row.method,
                     "params": summary["params"], "flops": record.flops, "latency_ms": record.latency_ms_median,
                     "latency_spread": record.latency_spread,
                     "latency_measured_with": record.measured_with, "top1": summary["top1"], "top5": summary["top5"],
                     "best_top1": summary["best_top1"], "images_per_s": summary["images_per_s"],
                     "wall_time_s": summary["wall_time_s"], "epochs": recipe.train.epochs})
    table = format_table(rows)
    shared = {f"{row['run']} uses {row['latency_measured_with']}" for row in rows if row["latency_measured_with"]}
    plot_tradeoffs(records, demo_dir / "tradeoffs.png")
    report = ("# vitkd demo: distillation on the bundled digits\n\n"
              "Real handwritten digits (scikit-learn's 1,797 8x8 scans) at 16x16; 1,437 training and 360 validation "
              "images. Every ViT row trains the same student for the same number of epochs; top-1/top-5 are on the "
              "validation split after the last epoch. FLOPs: forward, one multiply-add = one FLOP, fvcore with "
              "attention counted (`vitkd.bench`); latency: median batch-1 forward on this machine's CPU (noisy on a "
              "shared machine; the spread is in report.json). Rows whose student has the same architecture share "
              "one latency measurement, the first such row's: those marked * reuse it "
              f"({', '.join(sorted(shared)) or 'none'}), so their latencies are equal by construction and no "
              "method looks slower through machine drift.\n\n" + table
              + "\n\n![accuracy against cost](tradeoffs.png)\n")
    atomic_write(demo_dir / "report.md", report)
    atomic_write(demo_dir / "report.json", json.dumps(rows, indent=2))
    print()
    print(table)
    print(f"\nreport: {demo_dir / 'report.md'}, plot: {demo_dir / 'tradeoffs.png'}")
    return rows
