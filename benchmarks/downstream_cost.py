"""What a plain ViT backbone costs at detection resolutions: global vs window attention, and a hierarchical student.

For each backbone -- ViT-Ti and ViT-S with global attention in every block, the same with ViTDet's window
attention (14x14-token windows, global attention in blocks 2, 5, 8, 11), and TinyViT-5M into an FPN -- one
training step of backbone + neck (ViTDet's simple feature pyramid, or torchvision's FPN) is timed at each image
size: forward of a batch, a scalar loss over every pyramid level, backward. Random weights (the cost does not
depend on them), the position embedding resampled once to the size (`fine_tune_size`), as a fine-tune does.
Configurations are interleaved per round (A B C, B C A, ...) so machine noise hits them alike; the median and the
minimum over the rounds are reported, and the ratios window / global and TinyViT / ViT-Ti global are taken from the
minima (the step least disturbed by other processes: on a shared machine the median moves with their load).

Peak memory of the same step: on CUDA `torch.cuda.max_memory_allocated` above what was allocated before the step;
on CPU the most tensor bytes alive at once on top of weights and input, counted op by op by
`vitkd.bench.memory.LiveTensorTracker` (gradients included, allocator caches not). Attention runs through
`F.scaled_dot_product_attention` as timm's blocks call it, so whether the N x N scores are held depends on the
kernel the device picks (CPU and CUDA both have fused kernels that never materialise them).

Run from the repository root (about 10-15 minutes on 2 CPU cores with the defaults)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/downstream_cost.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/downstream_cost.py --sizes 512 --repeats 5 --device cuda

Writes `<out>/downstream_cost.json` and `<out>/downstream_cost.md` (default out: benchmarks/results/downstream_cost).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkd.bench import write_result_files
from vitkd.bench.memory import LiveTensorTracker
from vitkd.downstream.backbones import DownstreamBackbone, build_backbone
from vitkd.models.factory import build_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "downstream_cost"
VITDET_WINDOW = 14
VITDET_GLOBAL_BLOCKS = [2, 5, 8, 11]


@dataclass(frozen=True)
class BackboneSetting:
    """One measured backbone: a timm student and how it is wrapped."""

    label: str
    model: str
    window_size: int = 0
    family: str = ""  # the global-attention label this one is compared with

    def build(self, size: int) -> DownstreamBackbone:
        student = build_model(self.model, {})
        if self.model.startswith("tiny_vit"):
            return build_backbone(student)
        return build_backbone(student, window_size=self.window_size, fine_tune_size=(size, size),
                              global_blocks=VITDET_GLOBAL_BLOCKS if self.window_size else None)


SETTINGS = [
    BackboneSetting("ViT-Ti global", "vit_tiny_patch16_224"),
    BackboneSetting("ViT-Ti window", "vit_tiny_patch16_224", VITDET_WINDOW, "ViT-Ti global"),
    BackboneSetting("ViT-S global", "vit_small_patch16_224"),
    BackboneSetting("ViT-S window", "vit_small_patch16_224", VITDET_WINDOW, "ViT-S global"),
    BackboneSetting("TinyViT-5M FPN", "tiny_vit_5m_224", family="ViT-Ti global"),
]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides (512 1024)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per step (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first (default: 1)")
    parser.add_argument("--only", nargs="+", choices=[setting.label for setting in SETTINGS], metavar="LABEL",
                        help=f"measure these backbones only (of: {', '.join(s.label for s in SETTINGS)})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current count)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(backbone: DownstreamBackbone, images: torch.Tensor) -> None:
    """Forward, a scalar over every level (each level's mean, so all of them get gradients), backward."""
    levels = backbone(images)
    loss = sum(level.float().mean() for level in levels.values())
    loss.backward()
    backbone.zero_grad(set_to_none=True)


def peak_step_bytes(backbone: DownstreamBackbone, images: torch.Tensor) -> int:
    """Most bytes alive at once during one training step, on top of the weights and the input."""
    device = images.device
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        training_step(backbone, images)
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorTracker(resident=(*backbone.parameters(), *backbone.buffers(), images)) as tracker:
        training_step(backbone, images)
    return tracker.peak_bytes


def measure_size(settings: list[BackboneSetting], size: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbones = {setting.label: setting.build(size).to(device).train() for setting in settings}
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    rows: dict[str, dict[str, Any]] = {}
    for label, backbone in backbones.items():
        rows[label] = {"params": sum(p.numel() for p in backbone.parameters()),
                       "peak_bytes": peak_step_bytes(backbone, images), "step_s_all": []}
        print(f"  {size}px {label:>15}: peak {rows[label]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    labels = list(backbones)
    for round_index in range(args.warmup + args.repeats):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:  # rotate the order every round
            _synchronize(device)
            start = time.perf_counter()
            training_step(backbones[label], images)
            _synchronize(device)
            seconds = time.perf_counter() - start
            if round_index >= args.warmup:
                rows[label]["step_s_all"].append(seconds)
            print(f"  {size}px round {round_index + 1}/{args.warmup + args.repeats} {label:>15}: {seconds:.3f} s",
                  flush=True)
    for row in rows.values():
        row["step_s_median"] = statistics.median(row["step_s_all"])
        row["step_s_min"] = min(row["step_s_all"])
    return rows


def add_ratios(rows: dict[str, dict[str, Any]], settings: list[BackboneSetting]) -> None:
    """Each windowed / hierarchical backbone against its global-attention reference (time and memory)."""
    for setting in settings:
        reference = rows.get(setting.family)
        if setting.family and reference is not None:
            rows[setting.label]["vs"] = setting.family
            rows[setting.label]["time_ratio"] = rows[setting.label]["step_s_min"] / reference["step_s_min"]
            rows[setting.label]["memory_ratio"] = rows[setting.label]["peak_bytes"] / reference["peak_bytes"]


def markdown_report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = ["# Downstream backbone cost: global vs window attention, and a hierarchical student", "",
             f"One training step (forward, loss over every pyramid level, backward) of backbone + neck, batch "
             f"{settings['batch_size']}, {settings['repeats']} interleaved steps after {settings['warmup']} "
             f"warm-up, {settings['device']} ({settings['machine']}, {settings['threads']} threads). Window: "
             f"{VITDET_WINDOW}x{VITDET_WINDOW} tokens, global blocks {VITDET_GLOBAL_BLOCKS}. Time ratios from the "
             f"fastest step of each.", "",
             "| size | backbone | params (M) | step median (s) | step min (s) | peak (MiB) | vs | time ratio | "
             "memory ratio |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for size, rows in results["sizes"].items():
        for label, row in rows.items():
            ratio = (f"{row['vs']} | {row['time_ratio']:.2f} | {row['memory_ratio']:.2f}" if "vs" in row
                     else "- | - | -")
            lines.append(f"| {size} | {label} | {row['params'] / 1e6:.1f} | {row['step_s_median']:.3f} | "
                         f"{row['step_s_min']:.3f} | {row['peak_bytes'] / 2**20:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [setting for setting in SETTINGS if not args.only or setting.label in args.only]
    results: dict[str, Any] = {
        "settings": {"sizes": args.sizes, "batch_size": args.batch_size, "repeats": args.repeats,
                     "warmup": args.warmup, "device": args.device, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "machine": f"{platform.machine()} "
                                                            f"{platform.processor() or platform.system()}"},
        "sizes": {}}
    for size in args.sizes:
        print(f"{size}x{size}: {', '.join(setting.label for setting in chosen)}", flush=True)
        rows = measure_size(chosen, size, args)
        add_ratios(rows, chosen)
        results["sizes"][str(size)] = rows
    report = markdown_report(results)
    write_result_files(args.out, "downstream_cost", results, report)
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
