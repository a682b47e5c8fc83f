"""What the proposal and sample counts cost in a Faster R-CNN training step on the digit scenes.

Two detectors built from the same recipe (`downstream/demo_det` by default) with the same seed, so they have the same
backbone, heads and weights: one at torchvision's defaults (2000 proposals per level before and after NMS, 256 RPN and
512 RoI samples per image), one at the recipe's own counts (the digit-scene recipes: 300 / 150, 64 and 64). Each
timed call is one training step on the same batch of training scenes: forward with targets, the summed losses'
backward, gradients cleared. Both are timed in interleaved rounds (`vitkd.bench.time_interleaved`), so machine drift
hits them alike, and the ratio of the medians is printed.

Run from the repository root (about a minute on 2 CPU cores; the digit scenes are written on first use)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/detection_sampling.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/detection_sampling.py --recipe downstream/digit_scenes_inst

Writes `<out>/detection_sampling.json` and `.md` (default out: benchmarks/results/detection_sampling).
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any, Sequence

import torch

from vitkd.bench import TimedForward, TimingSettings, time_interleaved, write_result_files
from vitkd.config import DETECTOR_SAMPLING_KEYS, DownstreamHeadConfig, load_recipe
from vitkd.shipped_recipes import find_recipe
from vitkd.tasks import resolve_recipe
from vitkd.training import build_trainer

#: torchvision's own counts, the `DownstreamHeadConfig` defaults.
TORCHVISION_DEFAULTS = {name: getattr(DownstreamHeadConfig(), name) for name in DETECTOR_SAMPLING_KEYS}


def build_step(recipe_name: str, overrides: Sequence[str], output_dir: str) -> tuple[TimedForward, dict[str, int]]:
    """One training step of the recipe's detector on a fixed batch, as a timed subject; and the counts it uses."""
    recipe = resolve_recipe(load_recipe(find_recipe(recipe_name), overrides=[
        f"train.output_dir={output_dir}", "train.progress=false", "student.checkpoint=null", *overrides]))
    task = build_trainer(recipe).task
    model = task.model.train()
    batch = next(iter(task.train_loader))

    def step() -> None:
        task.training_step(model, batch, 0).losses["loss"].backward()
        model.zero_grad(set_to_none=True)

    counts = {name: getattr(recipe.downstream.head, name) for name in DETECTOR_SAMPLING_KEYS}
    label = "torchvision defaults" if counts == TORCHVISION_DEFAULTS else "recipe counts"
    return TimedForward(label, step, len(batch[0])), counts


def run(recipe_name: str, output_dir: str, settings: TimingSettings) -> dict[str, Any]:
    torch.manual_seed(0)
    defaults, default_counts = build_step(recipe_name, [f"downstream.head.{k}={v}" for k, v in
                                                        TORCHVISION_DEFAULTS.items()], output_dir)
    torch.manual_seed(0)
    tuned, tuned_counts = build_step(recipe_name, [], output_dir)
    if tuned_counts == default_counts:
        raise SystemExit(f"{recipe_name} keeps torchvision's default counts; nothing to compare")
    timings = time_interleaved([defaults, tuned], settings=settings)
    rows = [{"setting": subject.label, "counts": counts, "batch": subject.batch_size,
             "step_ms_median": timing.median_ms, "step_ms_p90": timing.p90_ms,
             "relative_spread": timing.relative_spread, "rounds": len(timing.round_medians_ms)}
            for subject, counts, timing in zip((defaults, tuned), (default_counts, tuned_counts), timings)]
    return {"recipe": recipe_name, "threads": torch.get_num_threads(), "machine": platform.processor() or
            platform.machine(), "rows": rows, "default_over_recipe": rows[0]["step_ms_median"] /
            rows[1]["step_ms_median"]}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Faster R-CNN step cost by proposal and sample counts ({result['recipe']})", "",
             f"{result['threads']} thread(s); one training step on the same batch, interleaved rounds.", "",
             "| setting | pre-NMS / post-NMS (train) | RPN / RoI samples | batch | step (ms, median) | p90 | spread |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        counts = row["counts"]
        lines.append(f"| {row['setting']} | {counts['rpn_pre_nms_top_n_train']} / {counts['rpn_post_nms_top_n_train']} "
                     f"| {counts['rpn_batch_size_per_image']} / {counts['box_batch_size_per_image']} | {row['batch']} "
                     f"| {row['step_ms_median']:.0f} | {row['step_ms_p90']:.0f} | {row['relative_spread']:.2f} |")
    lines += ["", f"torchvision defaults / recipe counts: **{result['default_over_recipe']:.2f}x** the step time", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="downstream/demo_det", help="a detection recipe (name or file)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the demo)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting")
    parser.add_argument("--steps-per-round", type=int, default=3, help="timed steps per setting and round")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=30.0, help="seconds of timed rounds per setting")
    parser.add_argument("--runs", default="/tmp/vitkd-detection-sampling", help="where the two trainers' (unused) "
                        "run folders go")
    parser.add_argument("--out", default="benchmarks/results/detection_sampling")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = TimingSettings(warmup_iterations=args.warmup, iterations_per_round=args.steps_per_round,
                              min_rounds=args.min_rounds, time_budget_s=args.budget_s)
    result = run(args.recipe, args.runs, settings)
    text = markdown(result)
    write_result_files(args.out, "detection_sampling", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
