"""Profile a zoo of compact students (and a few CNNs for contrast) at their 224x224 input with `vitkd.bench`.

Every model is built with pretrained=False (no download; FLOPs, parameters, latency and memory do not depend on
the weights), profiled at batch 1 for latency and at `--batch-size` for throughput and peak memory in eager PyTorch
and in ONNX Runtime (CPU, `--runtime`, default both; `--ort-int8` adds the int8 dynamic quantisation), and written as
`bench.csv`, `bench.json`, `bench.md` and `bench.png` (latency vs GFLOPs: no accuracy is measured here) to the
output directory. The Markdown table is printed at the end.

Run from the repository root (about 2-4 minutes on 2 CPU cores with the defaults)::

    pip install -e .                      # or prefix the command with PYTHONPATH=.
    HF_HUB_OFFLINE=1 python benchmarks/students.py
    HF_HUB_OFFLINE=1 python benchmarks/students.py --threads 4 --time-budget 10 --out runs/students
    HF_HUB_OFFLINE=1 python benchmarks/students.py --models deit_tiny_patch16_224 tiny_vit_5m_224 --runtime torch \
        --device cuda

All models are built first and timed together in interleaved rounds (each round times every model in turn, so
drift of the machine hits them alike); the reports are written once the timings end, and `--resume` skips models
already in `<out>/bench.json` (those are then not in the same rounds as the rest: the report's notes say so).
Latency figures are only as quiet as the machine: check the Spread column before quoting one. The ONNX Runtime
columns need the deploy extra (`pip install -e '.[deploy]'`); the printed ranking lines say where the order of
the models by batch-1 latency differs between the runtimes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vitkd.bench import ProfileRecord, SuiteSettings, TimingSettings, markdown_table, profile_specs
from vitkd.bench.suite import RUNTIME_CHOICES

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
    parser.add_argument("--runtime", choices=sorted(RUNTIME_CHOICES), default="both",
                        help="torch, onnxruntime or both (default: both)")
    parser.add_argument("--ort-int8", action="store_true", help="add ONNX Runtime int8 dynamic quantisation rows")
    return parser.parse_args(argv)


def latency_ranking(records: list[ProfileRecord], runtime: str) -> list[str]:
    """Model names of one runtime's records, fastest batch-1 latency first."""
    chosen = [record for record in records if record.runtime == runtime]
    return [record.name for record in sorted(chosen, key=lambda record: record.latency_ms_median)]


def ranking_changes(records: list[ProfileRecord]) -> list[str]:
    """One line per runtime whose latency order differs from torch's, naming the models that moved."""
    reference = latency_ranking(records, "torch")
    lines = []
    for runtime in dict.fromkeys(record.runtime for record in records if record.runtime != "torch"):
        ranking = [name for name in latency_ranking(records, runtime) if name in reference]
        moved = [f"{name} {reference.index(name) + 1}->{position + 1}" for position, name in enumerate(ranking)
                 if reference.index(name) != position]
        lines.append(f"{runtime} vs torch latency ranking: " + (", ".join(moved) if moved else "unchanged"))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = SuiteSettings(
        batch_size=arguments.batch_size, device=arguments.device, threads=arguments.threads,
        timing=TimingSettings(warmup_iterations=arguments.warmup, time_budget_s=arguments.time_budget),
        runtimes=RUNTIME_CHOICES[arguments.runtime], ort_int8=arguments.ort_int8,
    )
    records = profile_specs(
        arguments.models, settings=settings, out_dir=arguments.out, resume=arguments.resume,
        on_record=lambda record: print(f"profiled {record.name} ({record.runtime})", file=sys.stderr, flush=True),
    )
    print(markdown_table(records), end="")
    for line in ranking_changes(records):
        print(line)
    print(f"\nwritten to {arguments.out}: bench.csv, bench.json, bench.md, bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
