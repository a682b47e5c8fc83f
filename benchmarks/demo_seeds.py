"""How much of the demo's table is seed noise: the no-distillation, DeiT-hard and logit-KD rows over several seeds.

The demo (`vitkd demo`) trains each row once, with `train.seed=0`, and validates on 360 images (one image is 0.28
points). This script trains the same three demo recipes with other student seeds (the CNN teacher stays the demo's
`runs/demo/teacher_cnn`, trained first if missing) and reports per-seed top-1, mean and standard deviation, and the
per-seed difference of each distillation row against the plain row (paired by seed: same data order, same
augmentation).

Finished runs (`runs/demo/<recipe>_seed<S>/summary.json` of the same recipe) are reused, interrupted ones resumed.
Results go to `benchmarks/results/demo_seeds/demo_seeds.json` and `.md`.

Run from the repository root (about a minute per run on 2 CPU cores, 12 runs with the defaults)::

    HF_HUB_OFFLINE=1 python benchmarks/demo_seeds.py
    HF_HUB_OFFLINE=1 python benchmarks/demo_seeds.py --seeds 0 1 --rows vit_plain deit_hard
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from vitkd.bench import write_result_files  # noqa: E402
from vitkd.demo import demo_recipe, demo_recipes_dir, train_or_reuse  # noqa: E402

DEFAULT_ROWS = ("vit_plain", "deit_hard", "logit_kd")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "demo_seeds"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="student seeds (default: 0 1 2 3)")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS),
                        help=f"demo recipes (names in recipes/demo/, default: {' '.join(DEFAULT_ROWS)}); the first "
                             f"is the baseline the others are compared with")
    parser.add_argument("--output-dir", default="runs", help="runs go to <output-dir>/demo/ (default: runs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def seed_recipe(row: str, seed: int, demo_dir: Path, epochs_scale: float = 1.0, extra_overrides: Sequence[str] = (),
                name: str | None = None):
    """The demo recipe `row` with student seed `seed`, run as `<demo_dir>/<name>` (default `<row>_seed<seed>`).

    `epochs_scale` and `extra_overrides` (dotted `key=value`, applied last) are `vitkd.demo.demo_recipe`'s.
    """
    if not (demo_recipes_dir() / f"{row}.yaml").is_file():
        valid = sorted(p.stem for p in demo_recipes_dir().glob("*.yaml") if p.stem != "base")
        raise SystemExit(f"demo_seeds: no demo recipe {row}.yaml; valid rows: {valid}")
    overrides = ["train.progress=false", f"train.seed={seed}", f"name={name or f'{row}_seed{seed}'}",
                 *extra_overrides]
    return demo_recipe(f"{row}.yaml", demo_dir, epochs_scale, overrides)


def summarize(top1: dict[str, dict[int, float]], baseline: str) -> dict[str, Any]:
    """Per-row mean/std over seeds, and per-row paired differences against `baseline` (same seed)."""
    result: dict[str, Any] = {"top1": top1, "rows": {}}
    for row, by_seed in top1.items():
        values = list(by_seed.values())
        entry = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        if row != baseline:
            differences = [by_seed[s] - top1[baseline][s] for s in by_seed]
            entry.update(mean_gain=statistics.fmean(differences), min_gain=min(differences),
                         max_gain=max(differences), seeds_better=sum(d > 0 for d in differences),
                         seeds=len(differences))
        result["rows"][row] = entry
    return result


def format_report(result: dict[str, Any], baseline: str) -> str:
    seeds = sorted({seed for by_seed in result["top1"].values() for seed in by_seed})
    lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | gain vs plain (min .. max) | "
             "seeds better |",
             "|---|" + "---:|" * (len(seeds) + 4)]
    for row, by_seed in result["top1"].items():
        entry = result["rows"][row]
        gain = (f"{entry['mean_gain']:+.2f} ({entry['min_gain']:+.2f} .. {entry['max_gain']:+.2f})"
                if row != baseline else "-")
        better = f"{entry['seeds_better']}/{entry['seeds']}" if row != baseline else "-"
        lines.append(f"| {row} | " + " | ".join(f"{by_seed[s]:.2f}" for s in seeds)
                     + f" | {entry['mean']:.2f} | {entry['std']:.2f} | {gain} | {better} |")
    return ("demo_seeds: val top-1 (%) of demo rows over student seeds (360 validation images; teacher fixed)\n\n"
            + "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    demo_dir = Path(arguments.output_dir) / "demo"
    train_or_reuse(demo_recipe("teacher_cnn.yaml", demo_dir))  # the demo's teacher, reused when `vitkd demo` ran
    baseline = arguments.rows[0]
    top1: dict[str, dict[int, float]] = {row: {} for row in arguments.rows}
    for seed in arguments.seeds:
        for row in arguments.rows:
            summary = train_or_reuse(seed_recipe(row, seed, demo_dir))
            top1[row][seed] = float(summary["top1"])
            print(f"[demo_seeds] {row} seed {seed}: top-1 {top1[row][seed]:.2f}%", flush=True)
    result = summarize(top1, baseline)
    report = format_report(result, baseline)
    write_result_files(arguments.out, "demo_seeds", result, report)
    print()
    print(report, end="")
    print(f"written to {arguments.out}: demo_seeds.json, demo_seeds.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
