"""Training throughput of 1 process against 2 DistributedDataParallel processes (gloo, CPU), side by side.

The demo's ViT student (`recipes/demo/vit_plain.yaml`: digits, RandAugment, a loader worker per process) trains
`--steps` steps at the same global batch both ways: one process with batch B, and two processes with B / 2 each
(torch.multiprocessing, gloo through a file rendezvous). The CPU threads are split the same way: one process gets
`--threads` threads, each of the two gets half. Rounds alternate the order (1 2, 2 1, ...) after an untimed warm-up
round, so drifts of a shared machine's load hit both; each round's ratio is taken within the round and the median
over rounds reported, with images/s of both. On a 2-core CPU two processes compete for the same cores, so a ratio
near 1 (or below) is expected there: this measures the overhead of the DDP path (gradient all-reduce, per-process
loaders), not a speed-up; on a multi-GPU node each process has its own device. The two processes are started by
torch.multiprocessing and use the "fork" start method for their loader workers, as processes torchrun starts do on
Linux.

Results: `benchmarks/results/ddp_throughput/ddp_throughput.json` and `.md`. Run from the repository root (about 3
minutes on 2 cores with the defaults)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/ddp_throughput.py [--steps 20] [--rounds 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from vitkd.bench import write_result_files  # noqa: E402
from vitkd.config import load_recipe  # noqa: E402
from vitkd.engine.distributed import DistributedContext  # noqa: E402
from vitkd.training import build_trainer  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "ddp_throughput"


def _recipe(batch: int, steps: int, output_dir: str, name: str, overrides: list[str]):
    return load_recipe(ROOT / "recipes" / "demo" / "vit_plain.yaml",
                       [f"data.batch_size={batch}", f"train.max_steps_per_epoch={steps}", "train.progress=false",
                        f"train.output_dir={output_dir}", f"name={name}", "train.epochs=1", *overrides])


def _timed_epoch(trainer) -> float:
    start = time.perf_counter()
    trainer.train_one_epoch(0)
    return time.perf_counter() - start


def _worker(rank: int, world_size: int, init_file: str, batch: int, steps: int, threads: int, output_dir: str,
            result_file: str, overrides: list[str]) -> None:
    # Processes started by torch.multiprocessing.spawn default to the "spawn" start method themselves, so each
    # epoch's loader worker would be a fresh interpreter importing torch, timm and vitkd (seconds per epoch). Under
    # torchrun, as users launch, the default on Linux is "fork"; use it here too.
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(threads)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        context = DistributedContext(rank=rank, world_size=world_size)
        trainer = build_trainer(_recipe(batch, steps, output_dir, f"ddp{world_size}", overrides), context=context)
        trainer.train_one_epoch(0)  # warm-up: allocator, loader worker start
        if world_size > 1:
            dist.barrier()
        seconds = _timed_epoch(trainer)
        if rank == 0:
            Path(result_file).write_text(str(seconds))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _run(world_size: int, batch: int, steps: int, threads: int, scratch: Path, round_index: int,
         overrides: list[str]) -> float:
    result = scratch / f"seconds_{world_size}_{round_index}.txt"
    args = (world_size, str(scratch / f"init_{world_size}_{round_index}"), batch // world_size, steps,
            max(1, threads // world_size), str(scratch / "runs"), str(result), overrides)
    if world_size == 1:
        _worker(0, *args)
    else:
        mp.spawn(_worker, args=args, nprocs=world_size, join=True)
    return float(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="global batch (each of 2 processes takes half)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for both runs, e.g. --set data.num_workers=0")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    images = args.batch * args.steps
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = (1, 2) if round_index % 2 == 0 else (2, 1)
            seconds = {world: _run(world, args.batch, args.steps, args.threads, Path(scratch), round_index,
                                   args.overrides) for world in order}
            rows.append({"round": round_index, "order": list(order), "seconds_1": seconds[1], "seconds_2": seconds[2],
                         "ratio_2_over_1": seconds[1] / seconds[2]})
            print(f"[ddp_throughput] round {round_index}: 1 process {images / seconds[1]:.0f} img/s, 2 processes "
                  f"{images / seconds[2]:.0f} img/s")
    ratio = statistics.median(row["ratio_2_over_1"] for row in rows)
    result = {
        "global_batch": args.batch, "steps": args.steps, "rounds": rows, "threads": args.threads,
        "overrides": args.overrides,
        "images_per_s_1": images / statistics.median(row["seconds_1"] for row in rows),
        "images_per_s_2": images / statistics.median(row["seconds_2"] for row in rows),
        "throughput_ratio_2_over_1": ratio,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}",
    }
    markdown = (f"# ddp_throughput: 1 process vs 2 DDP processes (gloo, CPU)\n\n"
                f"| processes | batch per process | images/s (median of {args.rounds} rounds) |\n|---:|---:|---:|\n"
                f"| 1 | {args.batch} | {result['images_per_s_1']:.0f} |\n"
                f"| 2 | {args.batch // 2} | {result['images_per_s_2']:.0f} |\n\n"
                f"Throughput ratio 2 / 1 (median of per-round ratios): {ratio:.2f}. {result['machine']}; "
                f"{args.steps} timed steps per run after a warm-up epoch; threads split between processes.\n")
    json_path, md_path = write_result_files(args.out, "ddp_throughput", result, markdown)
    print(markdown)
    print(f"written to {json_path.parent}: {json_path.name}, {md_path.name}")


if __name__ == "__main__":
    main()
