"""Peak memory of the `attention` term's recomputed attention, for one block: forward + backward of each part on the
block's hooked `attn.qkv` outputs, against what one attention map weighs and what the block's own attention costs
when timm's fused kernel is switched off to expose the map.

Setting (defaults: ViT-B/DeiT-B geometry): B 64 images, N 197 tokens (196 patches + the class token), 12 heads,
D 768 (d = 64 per head), float32. Student and teacher `qkv` outputs (B, N, 3 * D) are the inputs (resident, not
counted: the forward keeps them anyway); the student's carries gradients, the teacher's does not. Peak = the most
tensor bytes alive at once on top of the inputs, counted op by op by `vitkd.bench.memory.LiveTensorTracker` (a
TorchDispatchMode tracking every new storage until it is freed: deterministic, independent of the allocator and of
other processes; scratch memory inside one kernel is not seen).

The block rows run timm's `Attention(768, 12)` itself, forward + backward from its (B, N, D) input, with the fused
kernel (what training runs; the term only adds a hook) and without it (what exposing the map by switching
`fused_attn` off would cost every tapped block, for the student and the teacher alike).

Run from the repository root (about a minute on 2 CPU cores; needs ~2 GB)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/attention_memory.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/attention_memory.py --batch-size 32 --skip-block

Writes `<out>/attention_memory.json` and `<out>/attention_memory.md` (default out: benchmarks/results/attention_memory).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from timm.layers import Attention
from torch import nn

from vitkd.bench import write_result_files
from vitkd.bench.memory import LiveTensorTracker
from vitkd.losses.attention import QKV, AttentionDistillationLoss
from vitkd.models.attention_maps import AttentionSite, split_qkv

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "attention_memory"
MiB = 2 ** 20
#: the rows: parts of the term, each measured alone, then the term's default (MiniLMv2's three relations)
PART_ROWS = {"attention (MiniLM KL)": ["attention"], "scores (TinyBERT MSE)": ["scores"],
             "value (MiniLM value-relation KL)": ["value"], "qq + kk + vv (MiniLMv2, R = heads)": ["qq", "kk", "vv"]}
#: the measured block's geometry, each a command-line option: default and meaning
GEOMETRY = {"batch-size": (64, "B"), "tokens": (197, "N, prefix tokens included"), "heads": (12, "attention heads"),
            "dim": (768, "D = heads x head width")}


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, (default, meaning) in GEOMETRY.items():
        parser.add_argument(f"--{flag}", type=int, default=default, help=f"{meaning} (default: {default})")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current count)")
    parser.add_argument("--skip-block", action="store_true", help="leave out the timm Attention rows")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def peak_bytes(run: Callable[[], None], resident: tuple[torch.Tensor, ...]) -> tuple[int, float]:
    """(peak live tensor bytes on top of `resident`, seconds) of `run()`."""
    tracker = LiveTensorTracker(resident=resident)
    start = time.perf_counter()
    with tracker:
        run()
    return tracker.peak_bytes, time.perf_counter() - start


def measure_parts(args: argparse.Namespace) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(0)
    B, N, D, H = args.batch_size, args.tokens, args.dim, args.heads
    site = AttentionSite(block=0, num_heads=H, head_dim=D // H, scale=(D // H) ** -0.5, q_norm=nn.Identity(),
                         k_norm=nn.Identity())
    student_qkv = torch.randn(B, N, 3 * D, generator=generator).requires_grad_(True)  # (B, N, 3D)
    teacher_qkv = torch.randn(B, N, 3 * D, generator=generator)  # (B, N, 3D)
    rows = {}
    for name, parts in PART_ROWS.items():
        loss = AttentionDistillationLoss(parts, relation_heads=H)

        def run() -> None:
            with torch.no_grad():  # as the term: the teacher's side keeps no graph
                teacher = QKV(*split_qkv(teacher_qkv, site), site.scale)
            loss([QKV(*split_qkv(student_qkv, site), site.scale)], [teacher]).backward()

        student_qkv.grad = None
        peak, seconds = peak_bytes(run, (student_qkv, teacher_qkv))
        rows[name] = {"parts": parts, "peak_bytes": peak, "seconds": seconds}
        print(f"  {name}: {peak / MiB:.1f} MiB, {seconds:.2f} s", flush=True)
    return rows


def measure_block(args: argparse.Namespace) -> dict[str, dict]:
    torch.manual_seed(0)
    attn = Attention(args.dim, num_heads=args.heads, qkv_bias=True)
    x = torch.randn(args.batch_size, args.tokens, args.dim).requires_grad_(True)  # (B, N, D)
    rows = {}
    for fused in (True, False):
        attn.fused_attn = fused
        attn.zero_grad(set_to_none=True)
        x.grad = None
        peak, seconds = peak_bytes(lambda: attn(x).sum().backward(), (x, *attn.parameters()))
        name = f"timm Attention, {'fused (SDPA)' if fused else 'non-fused'}"
        rows[name] = {"peak_bytes": peak, "seconds": seconds}
        print(f"  {name}: {peak / MiB:.1f} MiB, {seconds:.2f} s", flush=True)
    return rows


def markdown_report(results: dict) -> str:
    s = results["settings"]
    one_map = results["one_map_bytes"] / MiB
    lines = [f"# Attention term memory (one block, B={s['batch_size']}, N={s['tokens']}, {s['heads']} heads, "
             f"D={s['dim']})", "",
             f"Forward + backward, peak live tensor bytes on top of the inputs (`LiveTensorTracker`), float32, "
             f"{s['threads']} CPU threads ({s['machine']}). One (B, H, N, N) float32 map: {one_map:.1f} MiB.", "",
             "| what | peak (MiB) | maps of (B, H, N, N) | time (s) |", "|---|---:|---:|---:|"]
    for name, row in {**results["parts"], **results.get("block", {})}.items():
        lines.append(f"| {name} | {row['peak_bytes'] / MiB:.1f} | {row['peak_bytes'] / results['one_map_bytes']:.1f} "
                     f"| {row['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"batch_size": args.batch_size, "tokens": args.tokens, "heads": args.heads, "dim": args.dim,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
                "method": "vitkd.bench.memory.LiveTensorTracker: live tensor storages op by op, forward + backward, "
                          "on top of the inputs"}
    print(f"attention term parts, one block (B={args.batch_size}, N={args.tokens}, {args.heads} heads, D={args.dim})")
    results = {"settings": settings, "one_map_bytes": args.batch_size * args.heads * args.tokens ** 2 * 4,
               "parts": measure_parts(args)}
    if not args.skip_block:
        print("timm Attention forward + backward")
        results["block"] = measure_block(args)
    report = markdown_report(results)
    write_result_files(args.out, "attention_memory", results, report)
    print(f"\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
