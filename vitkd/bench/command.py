"""`vitkd bench`: profile students (and a teacher) from the command line.

Examples::

    vitkd bench deit_tiny_patch16_224 tiny_vit_5m_224 --teacher deit_base_patch16_224 --threads 4 --out runs/bench
    vitkd bench vit_tiny_patch16_224:img_size=32,patch_size=4,num_classes=10 runs/demo/deit_hard --dataset digits
    vitkd bench deit_tiny_patch16_224@weights/student.safetensors --device cuda --amp --batch-size 256
    vitkd bench deit_tiny_patch16_224 resnet18 --runtime both --ort-int8 --dataset folder --root imagenet --threads 2

User errors (unknown model, impossible input size, class-count mismatch, bad checkpoint) are raised as
`ValueError`s with a message naming the culprit; `vitkd`'s entry point prints that line and exits with status 2.

Under torchrun (`WORLD_SIZE` > 1) only rank 0 measures and writes: latency with several processes competing for the
same cores would measure the competition. The other ranks return 0 at once, printing nothing; rank 0 says they were
idle.
"""

from __future__ import annotations

import argparse
import os
import sys

from vitkd.bench.latency import TimingSettings
from vitkd.bench.profile import ProfileRecord
from vitkd.bench.report import REPORT_FILE_NAMES, format_table
from vitkd.bench.suite import ONNX_DIR_NAME, PLOT_FILE_NAME, RUNTIME_CHOICES, SuiteSettings, profile_specs

__all__ = ["add_arguments", "run", "settings_from_args"]

SPEC_HELP = (
    "model spec: a timm name (built with pretrained=False), optionally with timm kwargs and local weights, "
    "NAME[:KEY=VALUE,...][@CHECKPOINT], e.g. vit_tiny_patch16_224:img_size=32,num_classes=10 or "
    "deit_tiny_patch16_224@student.safetensors; or a checkpoint file, export or vitkd run directory that records "
    "its model name (with a student.packed.safetensors there: the low-bit model it rebuilds)"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `vitkd bench`'s arguments to `parser`."""
    parser.description = ("Profile models: parameters, FLOPs (1 multiply-add = 1 FLOP), activations, batch-1 "
                          "latency, throughput (all models timed in interleaved rounds), peak memory, bits per stored "
                          "weight and stored size and, with --dataset, top-1/top-5; optionally as ratios against a "
                          "teacher. A run or export directory holding a packed low-bit export is benched as the "
                          "low-bit model it rebuilds.")
    parser.add_argument("models", nargs="+", metavar="MODEL", help=SPEC_HELP)
    parser.add_argument("--teacher", metavar="MODEL", help="teacher spec (same syntax); adds speed-up, parameter and "
                        "FLOP reduction and accuracy-retained columns")
    parser.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                        help="images per forward for throughput, peak memory and evaluation (default: 32)")
    parser.add_argument("--img-size", type=_positive_int, metavar="S",
                        help="square input side for every model (default: each model's own size; a ViT built for "
                             "another size needs NAME:img_size=S instead)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for torch.set_num_threads (default: torch's current count)")
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    parser.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU, fp16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (compile time is untimed)")
    parser.add_argument("--dataset", help="evaluate top-1/top-5 on this dataset (as for `vitkd eval`: digits, folder)")
    parser.add_argument("--root", help="dataset root for --dataset folder (root/<split>/<class>/*)")
    parser.add_argument("--split", default="val", help="dataset split to evaluate (default: val)")
    parser.add_argument("--out", metavar="DIR", help=f"write {', '.join(REPORT_FILE_NAMES.values())} and "
                        f"{PLOT_FILE_NAME} here (rewritten after each model's evaluation, once all are timed)")
    parser.add_argument("--resume", action="store_true", help="with --out, reuse models already in DIR/bench.json")
    parser.add_argument("--time-budget", type=_positive_float, default=10.0, metavar="SECONDS",
                        help="seconds of timed rounds per latency and per throughput measurement (all models are timed "
                             "in interleaved rounds, so the rounds end after SECONDS x the number of measurements); "
                             "at least 3 rounds always run (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="untimed forwards before each timing (default: 3)")
    parser.add_argument("--runtime", choices=sorted(RUNTIME_CHOICES), default="torch",
                        help="torch (eager PyTorch), onnxruntime (the model exported to ONNX, run by ONNX Runtime on "
                             "the CPU with intra_op_num_threads = --threads) or both, in one table with the "
                             "onnxruntime/torch speed ratio (default: torch); --amp, --compile and --channels-last "
                             "apply to torch rows only; ONNX needs pip install -e '.[deploy]'")
    parser.add_argument("--ort-int8", action="store_true",
                        help="also run ONNX Runtime's int8 dynamic quantisation of each model (its own row, with "
                             f"its accuracy on --dataset and its file size; the files stay in DIR/{ONNX_DIR_NAME})")


def settings_from_args(args: argparse.Namespace) -> SuiteSettings:
    """The `SuiteSettings` that parsed `vitkd bench` arguments ask for."""
    if args.root and not args.dataset:
        raise ValueError("--root needs --dataset (e.g. --dataset folder --root DIR)")
    return SuiteSettings(
        batch_size=args.batch_size, img_size=args.img_size, device=args.device, threads=args.threads,
        channels_last=args.channels_last, amp=args.amp, compile=args.compile, dataset=args.dataset,
        data_root=args.root, split=args.split,
        timing=TimingSettings(warmup_iterations=args.warmup, time_budget_s=args.time_budget),
        runtimes=RUNTIME_CHOICES[args.runtime], ort_int8=args.ort_int8,
    )


def launched_processes() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch from its environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run(args: argparse.Namespace) -> int:
    """Profile the models, print the table, and write reports and the plot when `--out` is given; returns 0.

    Under torchrun, ranks other than 0 return 0 at once (see the module docstring)."""
    rank, world_size = launched_processes()
    if rank != 0:
        return 0
    if world_size > 1:
        print(f"vitkd bench: only rank 0 measures; the other processes of this launch ({world_size - 1}) stay idle "
              "(timings with processes competing for the cores would not mean anything)", file=sys.stderr)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out DIR (the reports it resumes from)")
    settings = settings_from_args(args)

    def announce(record: ProfileRecord) -> None:
        print(f"profiled {record.name} ({record.runtime}): {record.latency_ms_median:.2f} ms at batch 1",
              file=sys.stderr)

    records = profile_specs(args.models, teacher=args.teacher, settings=settings, out_dir=args.out,
                            resume=args.resume, on_record=announce)
    print(format_table(records))
    if args.out:
        print(f"reports and plot written to {args.out}")
    return 0
