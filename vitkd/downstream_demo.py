"""`vitkd demo downstream`: does distillation carry over to detection and segmentation? Fully offline.

Takes two students of the classification demo (`vitkd demo`) that share one architecture: the plain ViT trained
on labels alone (`vit_plain`) and the distilled one with the highest top-1 among the demo's finished runs (ViTKD,
`vitkd.yaml`, when none has finished: the best of the demo's methods in the three-seed method table). Runs that are
missing are trained exactly as the classification demo trains them (same recipes, same folder, so either demo
reuses the other's runs), the distilled student's teacher first. Then each backbone, and an untrained one of the
same architecture as the reference, is fine-tuned for detection (`recipes/downstream/demo_det.yaml`, Faster R-CNN)
and semantic segmentation (`demo_seg.yaml`, Semantic FPN) on the bundled digit scenes, with settings that differ in
`student.checkpoint` only. Prints a table (task, backbone, method, box AP or mIoU, params, backbone FLOPs at the
fine-tune size, train img/s) and writes `<output-dir>/demo_downstream/report.md` and `report.json`.
`--finetune-epochs-scale K` multiplies the fine-tunes' epochs alone: their runs and report are named with `_xK`, so
they sit beside the standard budget's, and the classification runs are the same ones, reused.

Finished fine-tunes of the same recipe are reused and interrupted ones resumed; `--fresh` retrains the fine-tunes
(the classification runs belong to `vitkd demo`, whose `--fresh` retrains those).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from vitkd.config import Recipe, TrainConfig, load_raw_recipe, load_recipe
from vitkd.demo import DEMO_ROWS, DemoRow, demo_recipe, finished_summary, train_or_reuse
from vitkd.errors import ConfigError
from vitkd.files import atomic_write
from vitkd.shipped_recipes import recipes_dir
from vitkd.tasks import resolve_recipe

PLAIN_RECIPE = "vit_plain.yaml"
#: The distilled student trained when the classification demo has finished none: ViTKD + logit KD had the highest
#: mean top-1 of the demo's rows over three seeds (benchmarks/results/method_table).
DEFAULT_DISTILLED_RECIPE = "vitkd.yaml"


@dataclass(frozen=True)
class FineTune:
    recipe: str  # file name in recipes/downstream/
    label: str  # what the table calls the task
    short: str  # run-name prefix
    metrics: tuple[str, ...]  # summary keys the report keeps, the key metric first


FINE_TUNES = (
    FineTune("demo_det.yaml", "detection (Faster R-CNN)", "det", ("box_AP", "box_AP50")),
    FineTune("demo_seg.yaml", "semantic segmentation (Semantic FPN)", "seg", ("mIoU", "pixel_acc")),
)


@dataclass(frozen=True)
class Backbone:
    key: str  # run-name suffix
    method: str  # how the backbone was pre-trained, as the table says it
    checkpoint: Optional[str]  # a classification run directory, or None for random weights
    top1: Optional[float]  # its classification top-1 on the digits (None: untrained)


def same_architecture(recipe: Recipe, other: Recipe) -> bool:
    """Both students are the same timm model with the same kwargs (ignoring drop path) and no construction step."""
    def shape(student: Any) -> tuple:
        kwargs = {key: value for key, value in student.kwargs.items() if key != "drop_path_rate"}
        return student.name, json.dumps(kwargs, sort_keys=True, default=str), student.init, student.quantize
    return shape(recipe.student) == shape(other.student)


def choose_distilled(demo_dir: Path, epochs_scale: float, extra_overrides: Sequence[str] = ()
                     ) -> tuple[DemoRow, Optional[dict[str, Any]]]:
    """The classification demo's distilled row with the highest top-1 among its finished runs whose student has
    vit_plain's architecture, with that run's summary; `DEFAULT_DISTILLED_RECIPE` (and None) when none finished."""
    plain = demo_recipe(PLAIN_RECIPE, demo_dir, epochs_scale, extra_overrides)
    best: Optional[tuple[DemoRow, dict[str, Any]]] = None
    for row in DEMO_ROWS:
        recipe = demo_recipe(row.recipe, demo_dir, epochs_scale, extra_overrides)
        if recipe.teacher is None or row.recipe == PLAIN_RECIPE or not same_architecture(recipe, plain):
            continue
        summary = finished_summary(recipe, "top1")
        if summary is not None and (best is None or summary["top1"] > best[1]["top1"]):
            best = (row, summary)
    if best is not None:
        return best
    return next(row for row in DEMO_ROWS if row.recipe == DEFAULT_DISTILLED_RECIPE), None


def classification_run(row: DemoRow, demo_dir: Path, epochs_scale: float, extra_overrides: Sequence[str] = ()
                       ) -> tuple[Recipe, dict[str, Any]]:
    """Reuse or train a classification demo row, after the demo row that trains its teacher (when it has one)."""
    recipe = demo_recipe(row.recipe, demo_dir, epochs_scale, extra_overrides)
    if recipe.teacher is not None and recipe.teacher.checkpoint:
        teacher_dir = Path(recipe.teacher.checkpoint)
        for candidate in DEMO_ROWS:
            teacher = demo_recipe(candidate.recipe, demo_dir, epochs_scale, extra_overrides)
            if teacher.run_dir == teacher_dir:
                print(f"[demo downstream] teacher of {recipe.name}: {teacher.name}")
                train_or_reuse(teacher, candidate.builds_cache)
    print(f"[demo downstream] classification run {recipe.name} ({row.method}), {recipe.train.epochs} epochs")
    return recipe, train_or_reuse(recipe, row.builds_cache)


def budget_suffix(finetune_epochs_scale: float) -> str:
    """What the run names and report files of a longer (or shorter) fine-tuning budget end with: "" at 1, else
    e.g. "_x4", so runs of several budgets live side by side."""
    return "" if finetune_epochs_scale == 1 else f"_x{finetune_epochs_scale:g}"


def fine_tune_recipe(fine_tune: FineTune, backbone: Backbone, student: Recipe, out_dir: Path, epochs_scale: float,
                     extra_overrides: Sequence[str] = (), suffix: str = "") -> Recipe:
    """`recipes/downstream/<fine_tune.recipe>` for `backbone`, named `<task>_<backbone><suffix>`, with runs under
    `out_dir` and its epochs times `epochs_scale`; the student's name and kwargs are the classification student's
    (`student`), so the untrained reference has the same architecture."""
    raw = load_raw_recipe(recipes_dir() / "downstream" / fine_tune.recipe)
    raw["name"] = f"{fine_tune.short}_{backbone.key}{suffix}"
    kwargs = {key: value for key, value in student.student.kwargs.items() if key != "drop_path_rate"}
    raw["student"] = {**raw.get("student", {}), "name": student.student.name, "kwargs": kwargs,
                      "checkpoint": backbone.checkpoint}
    train = raw.setdefault("train", {})
    train["epochs"] = max(1, round(train.get("epochs", TrainConfig.epochs) * epochs_scale))
    train["output_dir"] = str(out_dir)
    return resolve_recipe(load_recipe(raw=raw, overrides=extra_overrides))


def backbone_cost(recipe: Recipe) -> tuple[int, int]:
    """(parameters, forward FLOPs of one image at the fine-tune size) of the recipe's backbone: the student body
    and its pyramid or FPN, without the task head (whose cost depends on the proposals). Random weights: the
    weights do not change either figure."""
    from vitkd.bench import count_flops, count_parameters
    from vitkd.downstream.backbones import build_configured_backbone, load_student

    options, size = recipe.downstream.backbone, recipe.downstream.data.size
    student = load_student(recipe.student.name, recipe.student.kwargs, None, options.drop_path_rate)
    backbone = build_configured_backbone(student.model, options, size)
    return count_parameters(backbone), count_flops(backbone, (3, size, size))


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the fine-tunes: one row per (task, backbone)."""
    lines = ["| task | backbone | pre-trained with | digits top-1 (%) | box AP (%) | box AP50 (%) | mIoU (%) | "
             "pixel acc. (%) | params (model) | backbone params | backbone FLOPs @ fine-tune size | "
             "train img/s | wall time (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        lines.append(
            f"| {row['task']} | {row['model']} | {row['method']} | {top1} | {_percent(row.get('box_AP'))} | "
            f"{_percent(row.get('box_AP50'))} | {_percent(row.get('mIoU'))} | {_percent(row.get('pixel_acc'))} | "
            f"{row['params']:,} | {row['backbone_params']:,} | {row['backbone_flops'] / 1e6:.1f} M "
            f"({row['size']}x{row['size']}) | {row['images_per_s']:.1f} | {row['wall_time_s']:.0f} |")
    return "\n".join(lines)


def run_downstream_demo(output_dir: str = "runs", epochs_scale: float = 1.0, fresh: bool = False,
                        extra_overrides: Sequence[str] = (), finetune_overrides: Sequence[str] = (),
                        finetune_epochs_scale: float = 1.0) -> list[dict[str, Any]]:
    """Reuse or train the two classification students, fine-tune them and an untrained one for each task, write
    the report; returns the table's rows.

    `epochs_scale` multiplies every run's epochs (classification runs included, which are then other runs than the
    classification demo's), `finetune_epochs_scale` the fine-tunes' alone (longer fine-tunes of the same students).
    `extra_overrides` (dotted `key=value`) apply to the classification runs and the fine-tunes,
    `finetune_overrides` to the fine-tunes only (e.g. `train.max_steps_per_epoch=1` for a smoke run).
    """
    if finetune_epochs_scale <= 0:
        raise ConfigError(f"--finetune-epochs-scale must be > 0, got {finetune_epochs_scale:g}")
    demo_dir = Path(output_dir) / "demo"
    out_dir = Path(output_dir) / "demo_downstream"
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)

    distilled_row, distilled_summary = choose_distilled(demo_dir, epochs_scale, extra_overrides)
    print(f"[demo downstream] distilled backbone: {distilled_row.recipe} ({distilled_row.method}; "
          + ("the best finished distilled run of vit_plain's architecture)" if distilled_summary else
             "no finished distilled run of vit_plain's architecture yet, the demo's default)"))
    plain_row = next(row for row in DEMO_ROWS if row.recipe == PLAIN_RECIPE)
    plain, plain_summary = classification_run(plain_row, demo_dir, epochs_scale, extra_overrides)
    distilled, distilled_summary = classification_run(distilled_row, demo_dir, epochs_scale, extra_overrides)
    backbones = (Backbone("untrained", "none (random weights)", None, None),
                 Backbone(plain.name, plain_row.method, str(plain.run_dir), plain_summary["top1"]),
                 Backbone(distilled.name, distilled_row.method, str(distilled.run_dir), distilled_summary["top1"]))

    overrides = [*extra_overrides, *finetune_overrides]
    rows = []
    costs: dict[str, tuple[int, int]] = {}  # backbone architecture -> its cost: every row here shares one, counted once
    for fine_tune in FINE_TUNES:
        for backbone in backbones:
            recipe = fine_tune_recipe(fine_tune, backbone, plain, out_dir, epochs_scale * finetune_epochs_scale,
                                      overrides, budget_suffix(finetune_epochs_scale))
            print(f"[demo downstream] {fine_tune.label} from {backbone.key}: {recipe.train.epochs} epoch(s)")
            summary = train_or_reuse(recipe, metric=fine_tune.metrics[0], tag="demo downstream")
            architecture = json.dumps([recipe.student.name, recipe.student.kwargs, recipe.downstream.backbone,
                                       recipe.downstream.data.size], sort_keys=True, default=str)
            cost = costs.get(architecture) or costs.setdefault(architecture, backbone_cost(recipe))
            rows.append({"run": recipe.name, "task": fine_tune.label, "model": recipe.student.name,
                         "method": backbone.method, "student_weights": backbone.checkpoint, "top1": backbone.top1,
                         **{metric: summary.get(metric) for metric in fine_tune.metrics},
                         "params": summary["params"], "backbone_params": cost[0], "backbone_flops": cost[1],
                         "size": recipe.downstream.data.size, "images_per_s": summary["images_per_s"],
                         "wall_time_s": summary["wall_time_s"], "epochs": recipe.train.epochs,
                         "max_steps_per_epoch": recipe.train.max_steps_per_epoch,
                         "batch_size": recipe.data.batch_size})

    table = format_table(rows)
    report = ("# vitkd demo downstream: do distilled students carry over to detection and segmentation?\n\n"
              f"Backbones: the classification demo's label-only ViT student (`{plain.name}`), its best distilled "
              f"student of the same architecture (`{distilled.name}`: {distilled_row.method}) and an untrained "
              "student of that architecture as the reference. Each is fine-tuned on the bundled digit scenes "
              "(200 training, 50 validation scenes of 2-5 real digit scans) with identical settings "
              "(`recipes/downstream/demo_det.yaml`: Faster R-CNN; `demo_seg.yaml`: Semantic FPN; only "
              "`student.checkpoint` differs). Box AP: COCO AP@[.5:.95] (pycocotools); mIoU: 11 classes (ten digits "
              "and the background) from one confusion matrix over the validation scenes. Params (model): the whole "
              "fine-tuned model; backbone params and FLOPs: the student body and its simple feature pyramid "
              "(`vitkd.bench`, forward, one multiply-add = one FLOP, batch 1) at the fine-tune input size, without "
              "the task head. Train img/s on this machine's CPU. The budgets are tiny (sized for a 10-minute demo "
              "on 2 CPU cores): read the rows against the untrained reference, not as converged results.\n\n"
              + table + "\n")
    suffix = budget_suffix(finetune_epochs_scale)
    atomic_write(out_dir / f"report{suffix}.md", report)
    atomic_write(out_dir / f"report{suffix}.json", json.dumps(rows, indent=2))
    print()
    print(table)
    print(f"\nreport: {out_dir / f'report{suffix}.md'}")
    return rows
