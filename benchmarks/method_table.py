"""Every distillation method on the bundled digits at the demo's budget, over student seeds: top-1 and step time.

Trains the demo's ViT student (`recipes/demo/*.yaml` as they are: same epochs, batch, optimizer) once per method
and student seed (`train.seed`; default seeds 0 1 2) and reports, per method: mean +- std of the final validation
top-1 over the seeds, whether that mean beats plain training ("beats no-KD?", from the means; a method that does
not is reported as such), the paired per-seed count of seeds it beats plain training in, and the median over seeds
of its step time (a run's training seconds, the sum of `train/epoch_time_s` in its metrics.jsonl, divided by its
optimizer steps, epochs x steps per epoch = 20 x 44 on the digits: 1,437 images in batches of 32, the incomplete
last batch dropped). Both are also given as ratios to plain logit KD (`logit_kd`) trained in the same run: ratio of
mean top-1 and ratio of median step time.

Methods (recipe names in recipes/demo/): vit_plain (no distillation) and logit_kd (the two references, always
trained), deit_hard, cached_kd, vitkd, manifold, nkd, dkd, dist, attention, hidden, and embedding when
recipes/demo/embedding.yaml exists and `vitkd.cache.embedding_job.embed_targets` can build its store (the directory
a loss parameter `store` names, moved under `<output-dir>/demo/`: the pooled features of the recipe's teacher, else
of the demo's CNN teacher; one store for every seed); otherwise the row is skipped with the reason printed and
recorded, never made up. The teachers are trained once and shared by every seed, as the demo does: `teacher_cnn`
(the CNN teacher), and the demo's `logit_kd` run (seed 0), the ViT teacher of attention and hidden; they are the
demo's own runs (`<output-dir>/demo/teacher_cnn`, `.../logit_kd`), reused when `vitkd demo` already trained them.
The cached-KD row first builds its teacher's top-K logit cache, one per seed (`cache_teacher_cnn_seed<S>`: a cache
replays the batches of one train seed).

The student runs are `<output-dir>/demo/table_<method>_seed<S>`, separate from `vitkd demo`'s and
`benchmarks/demo_seeds.py`'s runs, so that every step time of a fresh table, logit KD's included, is measured in the
same invocation on the same machine load. Finished runs are reused and interrupted ones resumed (`vitkd.demo`'s
`train_or_reuse`): rerun the same command to continue. Results go to
`benchmarks/results/method_table/method_table.json` and `.md` (a run with --epochs-scale or --set writes them to
`<output-dir>/method_table/` instead unless --out is given, so a quick check never replaces the real results).

Run from the repository root. About 25 minutes on a quiet 2-core CPU (3 seeds x 11 methods of 25-50 s each, the
teachers and 3 caches; the demo's own runs are reused when present), more when the machine is shared::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/method_table.py

Options: --seeds 0 1 2, --methods nkd dkd (besides the two references), --epochs-scale 0.05 (a quick check; use
another --output-dir: a scaled teacher cannot share the full one's run directory), --set train.max_steps_per_epoch=3
(dotted overrides for every run, teachers included), --output-dir runs, --out DIR. A quick check (about 30 s)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/method_table.py --epochs-scale 0.05 --seeds 0 1 --methods nkd \\
        --set train.max_steps_per_epoch=3 --output-dir /tmp/method_table_quick
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark demo_seeds.py

from demo_seeds import seed_recipe, summarize  # noqa: E402
from vitkd.bench import write_result_files  # noqa: E402
from vitkd.config import Recipe  # noqa: E402
from vitkd.demo import DEMO_ROWS, demo_recipe, demo_recipes_dir, train_or_reuse  # noqa: E402

NO_KD = "vit_plain"  # the "beats no-KD?" reference
LOGIT_KD = "logit_kd"  # the ratio reference
EMBEDDING = "embedding"  # optional: its recipe and store builder are written separately


class Method(NamedTuple):
    name: str  # recipe file stem in recipes/demo/
    label: str


METHODS = (
    Method(NO_KD, "no distillation"),
    Method(LOGIT_KD, "logit KD (CNN teacher, online)"),
    Method("deit_hard", "DeiT token, hard (CNN teacher)"),
    Method("cached_kd", "logit KD from cached top-5 teacher logits"),
    Method("vitkd", "ViTKD + logit KD (CNN teacher)"),
    Method("manifold", "ManifoldKD + logit KD (CNN teacher)"),
    Method("nkd", "NKD (CNN teacher)"),
    Method("dkd", "DKD (CNN teacher)"),
    Method("dist", "DIST (CNN teacher)"),
    Method("attention", "MiniLM attention + value relations + logit KD (ViT teacher)"),
    Method("hidden", "TinyBERT hidden states + logit KD (ViT teacher)"),
    Method(EMBEDDING, "embedding targets (store built ahead)"),
)
_DEMO_LABELS = {Path(row.recipe).stem: row.method for row in DEMO_ROWS}  # the demo report's wording, where it has one
METHODS = tuple(Method(method.name, _DEMO_LABELS.get(method.name, method.label)) for method in METHODS)
METHOD_NAMES = tuple(method.name for method in METHODS)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "method_table"
RUN_PREFIX = "table_"
# Loss parameters that may name the embedding row's store directory (its recipe is written separately).
EMBEDDING_STORE_KEYS = ("store", "embedding_store", "embeddings", "targets")


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="student seeds (default: 0 1 2)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, metavar="METHOD",
                        help=f"methods to train (default: all; {NO_KD} and {LOGIT_KD} are always added as the "
                             f"references): {' '.join(METHOD_NAMES)}")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every recipe's epochs (at least 1), e.g. 0.05 for a quick check")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted recipe override for every run, teachers included "
                             "(e.g. train.max_steps_per_epoch=3); repeatable")
    parser.add_argument("--output-dir", default="runs", help="runs go to <output-dir>/demo/ (default: runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default: {DEFAULT_OUT}; <output-dir>/method_table with "
                             f"--epochs-scale or --set)")
    arguments = parser.parse_args(argv)
    if arguments.epochs_scale <= 0:
        parser.error("--epochs-scale must be positive")
    if len(set(arguments.seeds)) != len(arguments.seeds):
        parser.error("--seeds must not repeat a seed")
    return arguments


def selected_methods(requested: Sequence[str]) -> list[Method]:
    """The requested methods in the table's order, the two references always included."""
    wanted = set(requested) | {NO_KD, LOGIT_KD}
    return [method for method in METHODS if method.name in wanted]


# ---------------------------------------------------------------------------------------------------------------------
# Training


def run_step_time(recipe: Recipe) -> dict[str, float]:
    """Training seconds (sum of `train/epoch_time_s`, evaluation excluded), optimizer steps and seconds per step of
    a finished run, from its metrics.jsonl and the recipe's steps per epoch (the engine's own count)."""
    from vitkd.data.loader import build_train_dataset, build_train_loader
    from vitkd.engine.task import updates_per_epoch

    by_epoch = {}
    for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record  # a resumed epoch's last line wins
    if sorted(by_epoch) != list(range(recipe.train.epochs)):
        raise RuntimeError(f"{recipe.run_dir / 'metrics.jsonl'} holds epochs {sorted(by_epoch)}, expected "
                           f"0..{recipe.train.epochs - 1}")
    loader = build_train_loader(build_train_dataset(recipe.data, recipe.train.seed), recipe.data, recipe.train.seed)
    steps_per_epoch = updates_per_epoch(loader, recipe.train.max_steps_per_epoch)
    seconds = sum(float(record["train/epoch_time_s"]) for record in by_epoch.values())
    steps = steps_per_epoch * recipe.train.epochs
    return {"train_seconds": seconds, "steps": steps, "steps_per_epoch": steps_per_epoch,
            "step_time_s": seconds / steps}


def _train(recipe: Recipe, builds_cache: bool = False) -> dict[str, Any]:
    try:
        return train_or_reuse(recipe, builds_cache)
    except ValueError as error:
        if "different recipe" not in str(error):
            raise
        raise SystemExit(f"method_table: {recipe.run_dir} holds a run of another recipe (another --epochs-scale or "
                         f"--set?); give this configuration its own --output-dir") from error


class Teachers:
    """Trains each demo teacher run (`teacher_cnn`, `logit_kd` as a ViT teacher...) once, its own teacher first."""

    def __init__(self, demo_dir: Path, epochs_scale: float, overrides: Sequence[str]) -> None:
        self.demo_dir, self.epochs_scale, self.overrides = demo_dir, epochs_scale, list(overrides)
        self.ready: dict[str, Recipe] = {}

    def ensure_for(self, recipe: Recipe) -> None:
        """Train the demo run that `recipe`'s teacher checkpoint names, if it is one (and not yet done here)."""
        teacher = recipe.teacher
        if teacher is not None and teacher.checkpoint:
            self.ensure(Path(str(teacher.checkpoint)).name)

    def ensure(self, name: str) -> Recipe | None:
        """Train (or reuse) the demo run `name` (`recipes/demo/<name>.yaml`) and return its recipe; None when no
        such demo recipe exists (the checkpoint is someone else's)."""
        if name in self.ready:
            return self.ready[name]
        if not (demo_recipes_dir() / f"{name}.yaml").is_file():
            return None
        teacher_recipe = demo_recipe(f"{name}.yaml", self.demo_dir, self.epochs_scale, self.overrides)
        self.ensure_for(teacher_recipe)
        print(f"[method_table] teacher run {name}: {teacher_recipe.train.epochs} epochs", flush=True)
        _train(teacher_recipe)
        self.ready[name] = teacher_recipe
        return teacher_recipe


def student_recipe(method: str, seed: int, demo_dir: Path, epochs_scale: float, overrides: Sequence[str]) -> Recipe:
    """The demo recipe of `method` with student seed `seed`, run as `table_<method>_seed<seed>`; a teacher cache
    (`teacher.cache`) gets one directory per seed, `<cache>_seed<seed>`, since a cache replays one seed's batches."""
    name = f"{RUN_PREFIX}{method}_seed{seed}"
    recipe = seed_recipe(method, seed, demo_dir, epochs_scale, overrides, name=name)
    if recipe.teacher is not None and recipe.teacher.cache:
        cache = demo_dir / f"{Path(str(recipe.teacher.cache)).name}_seed{seed}"
        recipe = seed_recipe(method, seed, demo_dir, epochs_scale, [f"teacher.cache={cache}", *overrides], name=name)
    return recipe


def embedding_builder() -> tuple[Callable[..., Any] | None, str]:
    """(`vitkd.cache.embedding_job.embed_targets`, "") when recipes/demo/embedding.yaml exists and the job can be
    imported, else (None, the reason to skip the row)."""
    if not (demo_recipes_dir() / f"{EMBEDDING}.yaml").is_file():
        return None, f"no recipe {demo_recipes_dir() / f'{EMBEDDING}.yaml'}"
    try:
        module = importlib.import_module("vitkd.cache.embedding_job")
    except ImportError as error:
        return None, f"vitkd.cache.embedding_job cannot be imported ({error})"
    builder = getattr(module, "embed_targets", None)
    if not callable(builder):
        return None, "vitkd.cache.embedding_job has no embed_targets"
    return builder, ""


def embedding_store_parameter(recipe: Recipe) -> tuple[int, str, str] | None:
    """(loss index, parameter, directory) of the loss parameter that names the recipe's embedding store, or None."""
    for index, term in enumerate(recipe.losses):
        for key in EMBEDDING_STORE_KEYS:
            if isinstance(term.params.get(key), str):
                return index, key, term.params[key]
    return None


def prepare_embedding(builder: Callable[..., Any], teachers: Teachers, method: str, seed: int, demo_dir: Path,
                      epochs_scale: float, overrides: Sequence[str]) -> Recipe:
    """The embedding row's recipe with its store (the loss parameter `store`) moved under `demo_dir`, as the demo
    moves caches, after building the store or reusing a finished one (its targets come from the evaluation
    transform: one store serves every seed). The store's rows are the pooled features of the recipe's teacher, or,
    when the recipe has none, of the demo's CNN teacher run (`teacher_cnn`, `embed_targets`' own example).
    Raises `RuntimeError` naming what is missing."""
    recipe = student_recipe(method, seed, demo_dir, epochs_scale, overrides)
    located = embedding_store_parameter(recipe)
    if located is None:
        raise RuntimeError(f"the recipe names no embedding store (a loss parameter {'/'.join(EMBEDDING_STORE_KEYS)})")
    index, key, store = located
    store = str(demo_dir / Path(store).name)
    recipe = student_recipe(method, seed, demo_dir, epochs_scale, [f"losses.{index}.{key}={store}", *overrides])
    if recipe.teacher is not None and recipe.teacher.name:
        print(f"[method_table] embedding store {store}: pooled features of the recipe's teacher", flush=True)
        builder(recipe, store, teacher=True, progress=recipe.train.progress)
        return recipe
    source = teachers.ensure("teacher_cnn")
    if source is None:
        raise RuntimeError("the recipe has no teacher and there is no demo teacher run to compute its store from")
    print(f"[method_table] embedding store {store}: pooled features of {source.run_dir}", flush=True)
    builder(recipe, store, model=source.student.name, model_kwargs=dict(source.student.kwargs),
            checkpoint=str(source.run_dir), progress=recipe.train.progress)
    return recipe


def train_methods(methods: Sequence[Method], seeds: Sequence[int], demo_dir: Path, epochs_scale: float,
                  overrides: Sequence[str]) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, str]]:
    """Train (or reuse) every method at every seed, seed by seed; returns ({method: {seed: run record}},
    {skipped method: reason})."""
    teachers = Teachers(demo_dir, epochs_scale, overrides)
    runs: dict[str, dict[int, dict[str, Any]]] = {method.name: {} for method in methods}
    skipped: dict[str, str] = {}
    builder = None
    if any(method.name == EMBEDDING for method in methods):
        builder, reason = embedding_builder()
        if builder is None:
            skipped[EMBEDDING] = reason
            print(f"[method_table] skipping {EMBEDDING}: {reason}", flush=True)
    for seed in seeds:
        for method in methods:
            if method.name in skipped:
                continue
            recipe = student_recipe(method.name, seed, demo_dir, epochs_scale, overrides)
            teachers.ensure_for(recipe)
            finished_before = (recipe.run_dir / "summary.json").is_file()
            print(f"[method_table] {method.name} seed {seed}: {recipe.train.epochs} epochs -> {recipe.run_dir}",
                  flush=True)
            if method.name == EMBEDDING:
                try:  # the store first, as cached KD builds its cache first; a failure skips the row, named
                    recipe = prepare_embedding(builder, teachers, method.name, seed, demo_dir, epochs_scale,
                                               overrides)
                    summary = _train(recipe)
                except Exception as error:  # noqa: BLE001 - the optional row is skipped with its reason
                    skipped[EMBEDDING] = f"seed {seed}: {type(error).__name__}: {error}"
                    runs.pop(EMBEDDING, None)
                    print(f"[method_table] skipping {EMBEDDING}: {skipped[EMBEDDING]}", flush=True)
                    continue
            else:
                builds_cache = recipe.teacher is not None and bool(recipe.teacher.cache)
                summary = _train(recipe, builds_cache)
            record = {"run": str(recipe.run_dir), "top1": float(summary["top1"]), "epochs": recipe.train.epochs,
                      "trained_in_this_invocation": not finished_before, **run_step_time(recipe)}
            runs[method.name][seed] = record
            print(f"[method_table] {method.name} seed {seed}: top-1 {record['top1']:.2f}%, "
                  f"{record['step_time_s'] * 1e3:.1f} ms/step", flush=True)
    return {name: by_seed for name, by_seed in runs.items() if name not in skipped}, skipped


# ---------------------------------------------------------------------------------------------------------------------
# Summary and report


def summarize_methods(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str] | None = None
                      ) -> dict[str, Any]:
    """Per method: per-seed top-1 and step time, mean/std of top-1 (`demo_seeds.summarize`, with paired gains
    against no-KD), median step time, "beats no-KD?" from the means, and ratios to logit KD (of mean top-1, of
    median step time). `runs`: {method: {seed: {"top1": %, "step_time_s": s, ...}}}, both references included."""
    labels = labels or {method.name: method.label for method in METHODS}
    for reference in (NO_KD, LOGIT_KD):
        if not runs.get(reference):
            raise ValueError(f"the table needs its reference method {reference}")
    top1 = {name: {seed: run["top1"] for seed, run in by_seed.items()} for name, by_seed in runs.items()}
    seed_stats = summarize(top1, NO_KD)["rows"]
    step = {name: {seed: run["step_time_s"] for seed, run in by_seed.items()} for name, by_seed in runs.items()}
    no_kd_mean = seed_stats[NO_KD]["mean"]
    kd_mean, kd_step = seed_stats[LOGIT_KD]["mean"], statistics.median(step[LOGIT_KD].values())
    methods = {}
    for name, by_seed in runs.items():
        stats = seed_stats[name]
        step_values = list(step[name].values())
        median_step = statistics.median(step_values)
        entry = {
            "label": labels.get(name, name),
            "recipe": f"recipes/demo/{name}.yaml",
            "seeds": sorted(by_seed),
            "top1": top1[name],
            "top1_mean": stats["mean"],
            "top1_std": stats["std"],
            "step_time_s": step[name],
            "step_time_median_s": median_step,
            "step_time_mean_s": statistics.fmean(step_values),
            "step_time_std_s": statistics.stdev(step_values) if len(step_values) > 1 else 0.0,
            "top1_ratio_to_logit_kd": stats["mean"] / kd_mean,
            "step_time_ratio_to_logit_kd": median_step / kd_step,
            "runs": {seed: run for seed, run in by_seed.items()},
        }
        if name != NO_KD:
            entry.update(beats_no_kd=stats["mean"] > no_kd_mean, mean_gain_vs_no_kd=stats["mean"] - no_kd_mean,
                         seeds_better_than_no_kd=stats["seeds_better"], paired_min_gain=stats["min_gain"],
                         paired_max_gain=stats["max_gain"])
        methods[name] = entry
    return methods


def format_table(methods: dict[str, Any]) -> str:
    """The Markdown table of `summarize_methods`' result."""
    lines = ["| method | recipe | top-1 (%) mean ± std | top-1 per seed | beats no-KD? (mean gain) | seeds better "
             "than no-KD | top-1 / logit KD | step (ms), median | step / logit KD |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, entry in methods.items():
        seeds = entry["seeds"]
        per_seed = ", ".join(f"{entry['top1'][seed]:.2f}" for seed in seeds)
        if name == NO_KD:
            beats, better = "(reference)", "-"
        else:
            beats = f"{'yes' if entry['beats_no_kd'] else 'no'} ({entry['mean_gain_vs_no_kd']:+.2f})"
            better = f"{entry['seeds_better_than_no_kd']}/{len(seeds)}"
        lines.append(f"| {entry['label']} | {name} | {entry['top1_mean']:.2f} ± {entry['top1_std']:.2f} | {per_seed} "
                     f"| {beats} | {better} | {entry['top1_ratio_to_logit_kd']:.3f} | "
                     f"{entry['step_time_median_s'] * 1e3:.1f} | {entry['step_time_ratio_to_logit_kd']:.2f} |")
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    settings = result["settings"]
    seeds = " ".join(str(seed) for seed in settings["seeds"])
    reused = sum(not run["trained_in_this_invocation"] for entry in result["methods"].values()
                 for run in entry["runs"].values())
    notes = [f"Student seeds {seeds}; epochs x {settings['epochs_scale']:g} of the demo recipes"
             + (f", overrides {' '.join(settings['overrides'])}" if settings["overrides"] else "")
             + f"; {settings['machine']}.",
             "Top-1: final-epoch validation top-1 on the 360 validation digits (one image = 0.28 points); std: sample "
             "standard deviation over seeds. \"beats no-KD?\" compares means; \"seeds better\" pairs runs by seed "
             "(same data order and augmentation).",
             "Step time: a run's training seconds (sum of train/epoch_time_s, evaluation excluded) / its optimizer "
             "steps, median over seeds; ratios are to logit KD's mean top-1 and median step time in this table.",
             f"Runs reused from an earlier invocation (timed then): {reused}."]
    if result["skipped"]:
        notes.append("Skipped: " + "; ".join(f"{name}: {reason}" for name, reason in result["skipped"].items()) + ".")
    return ("# method_table: every distillation method on the bundled digits at the demo's budget\n\n"
            + format_table(result["methods"]) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n")


def machine_description() -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    demo_dir = Path(arguments.output_dir) / "demo"
    methods = selected_methods(arguments.methods)
    added = [name for name in (NO_KD, LOGIT_KD) if name not in arguments.methods]
    if added:
        print(f"[method_table] adding the reference methods {' '.join(added)}", flush=True)
    runs, skipped = train_methods(methods, arguments.seeds, demo_dir, arguments.epochs_scale, arguments.overrides)
    result = {
        "settings": {"seeds": list(arguments.seeds), "epochs_scale": arguments.epochs_scale,
                     "overrides": list(arguments.overrides), "runs_dir": str(demo_dir),
                     "machine": machine_description(), "references": {"no_kd": NO_KD, "ratios": LOGIT_KD}},
        "methods": summarize_methods(runs, {method.name: method.label for method in methods}),
        "skipped": skipped,
    }
    report = format_report(result)
    out = arguments.out
    if out is None:
        quick = arguments.epochs_scale != 1.0 or arguments.overrides
        out = Path(arguments.output_dir) / "method_table" if quick else DEFAULT_OUT
    write_result_files(out, "method_table", result, report)
    print()
    print(report, end="")
    print(f"written to {out}: method_table.json, method_table.md ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
