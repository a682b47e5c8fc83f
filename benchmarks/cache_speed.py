"""What a sparse-logit cache saves: the same student trained the same steps without KD, with an online teacher, and
with cached teacher logits, measured side by side on the bundled digits.

Four trainers built from the demo's settings (`recipes/demo/base.yaml`: the demo ViT student, 16x16 digits,
RandAugment) differ only in their teacher (and (a') in how often it reads its losses):

  (a) plain   cross-entropy only, no teacher
  (b) online  0.5 CE + 0.5 KD (T=4) from a live ViT teacher (width 192, 6 blocks: several times the student's cost)
  (c) cached  the same loss, the same teacher's top-K read from a cache written beforehand (not timed); the teacher
              is never built in (c)
  (a') plain_sync  (a) with `train.log_every: 1`: the host reads the loss sums after every step, as the loop did
              before losses stayed on the device; a/a' is the step-time gain of that change (on a CPU, where a read
              waits for nothing, it is expected near 1; on a GPU every read waits for the queued kernels)

Rounds of `--steps` training steps run in rotating order (a b c, b c a, c a b, ...) after one untimed warm-up
round, so drifts of the shared machine's load hit all three alike; each ratio is taken within a round, then the
median over rounds is reported. A fourth timing per round, the online teacher's forward pass alone on that round's
batches (loaded and mixed beforehand, so no data work is timed), gives the measured cost ratio the c/b target refers
to: (student training round + teacher forward) / (student training round), with the plain run's round as the
student's cost. The data loader runs in its own worker (`data.num_workers: 1` in the demo's base recipe), so loading
overlaps compute in all three modes.

Prints throughput ratios c/a and c/b, the forward-cost ratio teacher/student (fvcore FLOPs through `vitkd.bench`),
the expected online slowdown (teacher forward + student training) / (student training) with backward = 2x forward,
and the cache's bytes per sample per epoch (target <= 4K + 8). Results go to
`benchmarks/results/cache_speed/cache_speed.json` (and `.md`).

Run from the repository root (about 3 minutes on 2 CPU cores with the defaults)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/cache_speed.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/cache_speed.py --steps 30 --rounds 6 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from vitkd.bench import count_flops, training_flops_per_image, write_result_files  # noqa: E402
from vitkd.cache.info import summarize_cache  # noqa: E402
from vitkd.cache.logit_job import build_logit_cache  # noqa: E402
from vitkd.config import load_raw_recipe, load_recipe  # noqa: E402
from vitkd.engine.amp import autocast  # noqa: E402
from vitkd.engine.trainer import Trainer  # noqa: E402
from vitkd.training import build_trainer  # noqa: E402
from vitkd.models.factory import build_model  # noqa: E402

DEMO_BASE = ROOT / "recipes" / "demo" / "base.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cache_speed"
TEACHER = {"name": "vit_small_patch16_224",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3}}
KD_LOSSES = [{"name": "ce", "weight": 0.5}, {"name": "kd", "temperature": 4.0, "weight": 0.5}]
MODES = ("plain", "online", "cached", "plain_sync")


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round (default: 20)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per mode (default: 6)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (default: the demo's 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--topk", type=int, default=10, help="K stored per sample (default: 10)")
    parser.add_argument("--cached-epochs", type=int, default=2,
                        help="epochs written to the cache; training cycles through them (default: 2)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench_cache_speed",
                        help="teacher weights, cache and scratch runs (default: runs/bench_cache_speed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def _recipes(arguments: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    base = load_raw_recipe(DEMO_BASE)
    base["data"]["batch_size"] = arguments.batch_size
    base["train"].update(epochs=arguments.rounds + 2, max_steps_per_epoch=arguments.steps, progress=False,
                         output_dir=str(work_dir / "runs"))
    base["optim"]["warmup_epochs"] = 0
    teacher = dict(TEACHER, checkpoint=str(work_dir / "teacher.pt"))
    raws = {
        "plain": dict(base, name="plain", losses=[{"name": "ce"}]),
        "online": dict(base, name="online", teacher=teacher, losses=KD_LOSSES),
        "cached": dict(base, name="cached", losses=KD_LOSSES,
                       teacher=dict(teacher, cache=str(work_dir / "cache"), cache_topk=arguments.topk,
                                    cache_epochs_policy="cycle")),
        # (a) as the loop ran before losses stayed on the device: the host reads them after every step
        "plain_sync": dict(base, name="plain_sync", losses=[{"name": "ce"}],
                           train=dict(base["train"], log_every=1)),
    }
    return {mode: load_recipe(raw=copy.deepcopy(raw)) for mode, raw in raws.items()}


def _costs(recipe) -> dict[str, float]:
    size = (3, recipe.data.img_size, recipe.data.img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = count_flops(build_model(recipe.student.name, dict(recipe.student.kwargs, num_classes=10)), size)
        teacher = count_flops(build_model(TEACHER["name"], dict(TEACHER["kwargs"], num_classes=10)), size)
    student_train = training_flops_per_image(student)
    return {"student_forward_flops": student, "teacher_forward_flops": teacher,
            "teacher_over_student_forward": teacher / student,
            "expected_online_slowdown": (teacher + student_train) / student_train}


def _time_teacher_forward(trainer: Trainer, epoch: int, steps: int) -> float:
    """Seconds of the frozen teacher's forward over `steps` batches of `epoch` (what online KD adds per round).

    The batches are loaded and mixed first, untimed: only the teacher's compute is measured.
    """
    task = trainer.task
    task.set_epoch(epoch)
    batches = []
    for step, batch in enumerate(task.train_loader):
        if step >= steps:
            break
        images = batch.images
        if task.mixup is not None:
            images, _ = task.mixup(images, batch.labels, batch.seeds)
        batches.append(images)
    start = time.perf_counter()
    for images in batches:
        with autocast(trainer.device, trainer.amp_dtype):
            task.teacher(images)
    return time.perf_counter() - start


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(arguments.threads)
    work_dir = arguments.work_dir
    shutil.rmtree(work_dir / "runs", ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    recipes = _recipes(arguments, work_dir)
    if not (work_dir / "teacher.pt").is_file():  # random weights: cost does not depend on them
        torch.manual_seed(0)
        torch.save(build_model(TEACHER["name"], dict(TEACHER["kwargs"], num_classes=10)).state_dict(),
                   work_dir / "teacher.pt")
    print(f"[cache_speed] building the cache ({arguments.cached_epochs} epochs, K={arguments.topk}; not timed)",
          flush=True)
    cache_result = build_logit_cache(recipes["cached"], epochs=arguments.cached_epochs, progress=False)
    cache_summary = summarize_cache(cache_result.path)
    trainers = {mode: build_trainer(recipe) for mode, recipe in recipes.items()}
    assert trainers["cached"].task.teacher is None
    images_per_round = arguments.steps * arguments.batch_size
    throughput: dict[str, list[float]] = {mode: [] for mode in MODES}
    teacher_seconds: list[float] = []
    for round_index in range(arguments.rounds + 1):  # round 0 warms up and is not counted
        rotation = MODES[round_index % len(MODES):] + MODES[: round_index % len(MODES)]
        for mode in rotation:
            start = time.perf_counter()
            trainers[mode].train_one_epoch(round_index)
            seconds = time.perf_counter() - start
            if round_index:
                throughput[mode].append(images_per_round / seconds)
        seconds = _time_teacher_forward(trainers["online"], round_index, arguments.steps)
        if round_index:
            teacher_seconds.append(seconds)
            print(f"[cache_speed] round {round_index}/{arguments.rounds}: "
                  + ", ".join(f"{mode} {throughput[mode][-1]:.0f} img/s" for mode in MODES)
                  + f", teacher forward alone {images_per_round / seconds:.0f} img/s", flush=True)
    return _summarize(arguments, recipes, throughput, teacher_seconds, cache_summary, images_per_round)


def _median_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def _summarize(arguments, recipes, throughput, teacher_seconds, cache_summary, images_per_round) -> dict[str, Any]:
    costs = _costs(recipes["plain"])
    plain, online, cached, plain_sync = (throughput[mode] for mode in MODES)
    # measured (student training + teacher forward) / student training, per round
    student_seconds = [images_per_round / rate for rate in plain]
    measured_online_slowdown = statistics.median((student + teacher) / student
                                                 for student, teacher in zip(student_seconds, teacher_seconds))
    topk = arguments.topk
    result = {
        "settings": {"steps_per_round": arguments.steps, "rounds": arguments.rounds, "batch_size": arguments.batch_size,
                     "threads": arguments.threads, "topk": topk, "cached_epochs": arguments.cached_epochs,
                     "student": recipes["plain"].student.name, "student_kwargs": recipes["plain"].student.kwargs,
                     "teacher": TEACHER, "torch": torch.__version__},
        "throughput_img_per_s": {mode: statistics.median(rates) for mode, rates in throughput.items()},
        "throughput_rounds": throughput,
        "teacher_forward_s_per_round": teacher_seconds,
        "measured_online_slowdown": measured_online_slowdown,
        "ratio_cached_over_plain": _median_ratio(cached, plain),
        "ratio_cached_over_online": _median_ratio(cached, online),
        "ratio_plain_over_online": _median_ratio(plain, online),
        "log_every": {"plain": recipes["plain"].train.log_every, "plain_sync": recipes["plain_sync"].train.log_every},
        "ratio_plain_over_plain_sync": _median_ratio(plain, plain_sync),
        **costs,
        "cache_bytes_per_sample_epoch": cache_summary["bytes_per_sample_epoch"],
        "cache_bytes_budget_4k_plus_8": 4 * topk + 8,
        "cache_total_bytes": cache_summary["total_bytes"],
    }
    result["targets"] = {
        "c/a >= 0.90": result["ratio_cached_over_plain"] >= 0.90,
        "teacher >= 4x student forward": costs["teacher_over_student_forward"] >= 4.0,
        "c/b within 15% of the measured cost ratio":
            abs(result["ratio_cached_over_online"] / measured_online_slowdown - 1.0) <= 0.15,
        "bytes per sample-epoch <= 4K+8": result["cache_bytes_per_sample_epoch"] <= 4 * topk + 8,
    }
    return result


def format_report(result: dict[str, Any]) -> str:
    rates = result["throughput_img_per_s"]
    lines = [
        "| figure | value |", "|---|---:|",
        f"| throughput (a) no KD | {rates['plain']:.0f} img/s |",
        f"| throughput (b) online teacher KD | {rates['online']:.0f} img/s |",
        f"| throughput (c) cached KD | {rates['cached']:.0f} img/s |",
        f"| c/a (target >= 0.90) | {result['ratio_cached_over_plain']:.3f} |",
        f"| c/b | {result['ratio_cached_over_online']:.3f} |",
        f"| throughput (a') no KD, losses read by the host after every step (the loop before) | "
        f"{rates['plain_sync']:.0f} img/s |",
        f"| a/a' (losses kept on the device, read every {result['log_every']['plain']} steps) | "
        f"{result['ratio_plain_over_plain_sync']:.3f} |",
        f"| teacher / student forward FLOPs | {result['teacher_over_student_forward']:.2f} |",
        f"| (teacher fwd + student train) / student train FLOPs | {result['expected_online_slowdown']:.2f} |",
        f"| (student train + teacher fwd) / student train, measured (c/b target) | {result['measured_online_slowdown']:.2f} |",
        f"| cache bytes per sample-epoch (budget 4K+8 = {result['cache_bytes_budget_4k_plus_8']}) | "
        f"{result['cache_bytes_per_sample_epoch']:g} |",
    ]
    settings = result["settings"]
    header = (f"cache_speed: {settings['rounds']} rounds x {settings['steps_per_round']} steps, batch "
              f"{settings['batch_size']}, {settings['threads']} thread(s), K={settings['topk']}; medians of per-round "
              "ratios")
    return header + "\n\n" + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    result = run(arguments)
    report = format_report(result)
    write_result_files(arguments.out, "cache_speed", result, report)
    print()
    print(report, end="")
    print(f"targets: {result['targets']}")
    print(f"written to {arguments.out}: cache_speed.json, cache_speed.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
