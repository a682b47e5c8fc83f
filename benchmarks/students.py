"""Profile a zoo of compact students (and a few CNNs for contrast) at their 224x224 input with `vitkd.bench`.

Every model is built with pretrained=False (no download; FLOPs, parameters, latency and memory do not depend on
the weights), profiled at batch 1 for latency and at `--batch-size` for throughput and peak memory, and written as
`bench.csv`, `bench.json`, `bench.md` and `bench.png` (latency vs GFLOPs: no accuracy is measured here) to the
output directory. The Markdown table is printed at the end.

Run from the repository root (about 2-4 minutes on 2 CPU cores with the defaults)::

    pip install -e .                      # or prefix the command with PYTHONPATH=.
    HF_HUB_OFFLINE=1 python benchmarks/students.py
    HF_HUB_OFFLINE=1 python benchmarks/students.py --threads 4 --time-budget 10 --out runs/students
    HF_HUB_OFFLINE=1 python benchmarks/students.py --models deit_tiny_patch16_224 tiny_vit_5m_224 --device cuda

Reports are rewritten after each model; `--resume` skips models already in `<out>/bench.json`.
Latency figures are only as quiet as the machine: check the Spread column before quoting one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vitkd.bench import SuiteSettings, TimingSettings, markdown_table, profile_specs

STUDENT_ZOO = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    # timm's TinyViT configs default to the ImageNet-22k head (21,841 classes): profile the 1k-class models the
    # TinyViT paper's 5M/11M/21M figures describe
    "tiny_vit_5m_224:num_classes=1000",
    "tiny_vit_11m_224:num_classes=1000",
    "tiny_vit_21m_224:num_classes=1000",
    "resnet18",
    "resnet50",
    "mobilenetv3_large_100",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "students"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(STUDENT_ZOO), metavar="MODEL",
                        help="model specs to profile (default: the student zoo)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--batch-size", type=int, default=16, help="throughput / peak-memory batch (default: 16)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current count)")
    parser.add_argument("--time-budget", type=float, default=3.0,
                        help="seconds of timed rounds per latency and per throughput measurement (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards before each timing (default: 2)")
    parser.add_argument("--resume", action="store_true", help="skip models already in <out>/bench.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = SuiteSettings(
        batch_size=arguments.batch_size, device=arguments.device, threads=arguments.threads,
        timing=TimingSettings(warmup_iterations=arguments.warmup, time_budget_s=arguments.time_budget),
    )
    records = profile_specs(
        arguments.models, settings=settings, out_dir=arguments.out, resume=arguments.resume,
        on_record=lambda record: print(f"profiled {record.name}", file=sys.stderr, flush=True),
    )
    print(markdown_table(records), end="")
    print(f"\nwritten to {arguments.out}: bench.csv, bench.json, bench.md, bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
