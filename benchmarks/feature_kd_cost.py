"""What feature distillation costs: training-step time of logit KD alone, + ViTKD and + ManifoldKD, and the peak
memory of ManifoldKD's decoupled relation terms against the full (B*N) x (B*N) relation map.

Step time: the same student and teacher (default DeiT-Tiny and DeiT III-Small at 224x224, random weights: the cost
does not depend on them) run the trainer's step path for three recipes' loss terms: the tapped student forward
(`TappedStudent`), one frozen-teacher forward (`forward_teacher`) serving every term, the weighted objective
(`DistillationObjective` built through the loss registry), backward and an AdamW step over student and objective.
The three configurations are interleaved (A B C, B C A, C A B, ...) so machine noise hits them alike; the median
over repeats is compared with the target: each feature loss adds at most 15% step time over logit KD. The loss
terms' own share (objective forward + backward on the step's tokens) is timed the same way.

Memory: `ManifoldLoss` (intra: B maps N x N, inter: N maps B x B, random: K x K) against a brute-force loss on the
full (B*N) x (B*N) maps, forward + backward, on (B, N, Ds) student and (B, N, Dt) teacher tokens (default B 64,
N 196, Ds 192 DeiT-Tiny, Dt 384). Peak = the most tensor bytes alive at once on top of the input tokens, counted
op by op by `vitkd.bench.memory.LiveTensorTracker` (a TorchDispatchMode that tracks every new storage until it is
freed: deterministic, independent of the allocator and of other processes). Target: decoupled >= 40x less.

Run from the repository root (about 3-5 minutes on 2 CPU cores with the defaults; the full map needs ~3 GB)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/feature_kd_cost.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/feature_kd_cost.py --threads 4 --repeats 8 --batch-size 64

Writes `<out>/feature_kd_cost.json` and `<out>/feature_kd_cost.md` (default out: benchmarks/results/feature_kd_cost).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from vitkd.bench import write_result_files
from vitkd.bench.memory import LiveTensorTracker
from vitkd.config import load_recipe
from vitkd.tasks import resolve_recipe
from vitkd.tasks.classification.objective import DistillationObjective
from vitkd.losses.inputs import Targets
from vitkd.losses.base import TermContext
from vitkd.losses.manifold import ManifoldLoss
from vitkd.losses.registry import build_loss_terms
from vitkd.models.factory import build_model
from vitkd.tasks.classification.runners import TappedStudent, forward_teacher
from vitkd.models.teacher import FrozenTeacher

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "feature_kd_cost"
STEP_TIME_TARGET = 0.15  # each feature loss adds at most 15% step time over logit KD
MEMORY_TARGET = 40.0  # the decoupled terms use at least 40x less memory than the full map
LOGIT_TERMS = [{"name": "ce", "weight": 0.5}, {"name": "kd", "temperature": 1.0, "weight": 0.5}]
CONFIGS = {  # paper defaults for both feature terms
    "logit KD": LOGIT_TERMS,
    "+ ViTKD": LOGIT_TERMS + [{"name": "vitkd"}],
    "+ ManifoldKD": LOGIT_TERMS + [{"name": "manifold"}],
}


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="deit_tiny_patch16_224")
    parser.add_argument("--teacher", default="deit3_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32, help="training batch of the step timing (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first (default: 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current count)")
    parser.add_argument("--memory-batch", type=int, default=64, help="B of the memory comparison (default: 64)")
    parser.add_argument("--memory-tokens", type=int, default=196, help="N of the memory comparison (default: 196)")
    parser.add_argument("--student-dim", type=int, default=192, help="Ds of the memory comparison (default: 192)")
    parser.add_argument("--teacher-dim", type=int, default=384, help="Dt of the memory comparison (default: 384)")
    parser.add_argument("--skip-full-map", action="store_true", help="do not materialise the full map (~3 GB)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# step time


class StepSetup:
    """One configuration's trainer-step path on a shared student and teacher."""

    def __init__(self, name: str, losses: list[dict], student: nn.Module, teacher: FrozenTeacher,
                 args: argparse.Namespace) -> None:
        kwargs = {"img_size": args.img_size}
        recipe = resolve_recipe(load_recipe(raw={"name": "bench", "student": {"name": args.student, "kwargs": kwargs},
                                  "teacher": {"name": args.teacher, "kwargs": kwargs},
                                  "data": {"img_size": args.img_size, "dataset": "digits"}, "losses": losses}))
        context = TermContext(student=student, teacher=teacher.model, num_classes=1000, img_size=args.img_size)
        self.name = name
        self.objective = DistillationObjective(build_loss_terms(recipe.losses, context))
        needs = self.objective.needs
        self.needs = needs
        self.runner = TappedStudent(student, needs.student_taps)
        self.teacher = teacher
        self.optimizer = create_optimizer_v2(nn.ModuleDict({"student": student, "objective": self.objective}),
                                             opt="adamw", lr=1e-5, weight_decay=0.05)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """(step seconds, loss-terms seconds): the loss terms' forward + backward is timed on detached copies of
        the step's tokens after the full step, so it is a share of the same work, not extra work inside it."""
        start = time.perf_counter()
        student_outputs = self.runner(images)
        needs = self.needs
        teacher_outputs = forward_teacher(self.teacher, images, needs.teacher_taps)
        loss, _ = self.objective(student_outputs, teacher_outputs, Targets(labels=labels))
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name}: non-finite loss {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        step_seconds = time.perf_counter() - start

        detached = _detached_copy(student_outputs)
        start = time.perf_counter()
        loss, _ = self.objective(detached, teacher_outputs, Targets(labels=labels))
        loss.backward()
        loss_seconds = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        return step_seconds, loss_seconds


def _detached_copy(outputs):
    def leaf(tensor):
        return tensor.detach().requires_grad_(True)

    return type(outputs)(logits=leaf(outputs.logits),
                         dist_logits=leaf(outputs.dist_logits) if outputs.dist_logits is not None else None,
                         tokens={k: leaf(v) for k, v in outputs.tokens.items()},
                         normed_tokens={k: leaf(v) for k, v in outputs.normed_tokens.items()},
                         hooked={k: leaf(v) for k, v in outputs.hooked.items()},
                         num_prefix_tokens=outputs.num_prefix_tokens, grid_size=outputs.grid_size)


def measure_step_times(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    kwargs = {"num_classes": 1000, "img_size": args.img_size}
    student = build_model(args.student, kwargs).train()
    teacher = FrozenTeacher(build_model(args.teacher, kwargs), (0.5,) * 3, (0.5,) * 3)
    setups = [StepSetup(name, losses, student, teacher, args) for name, losses in CONFIGS.items()]
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 1000, (args.batch_size,))
    steps: dict[str, list[float]] = {s.name: [] for s in setups}
    losses: dict[str, list[float]] = {s.name: [] for s in setups}
    for round_index in range(args.warmup + args.repeats):
        shift = round_index % len(setups)
        for setup in setups[shift:] + setups[:shift]:  # rotate the order every round
            step_seconds, loss_seconds = setup.step(images, labels)
            if round_index >= args.warmup:
                steps[setup.name].append(step_seconds)
                losses[setup.name].append(loss_seconds)
            print(f"  round {round_index + 1}/{args.warmup + args.repeats} {setup.name:>13}: step "
                  f"{step_seconds:.3f} s, loss terms {loss_seconds:.3f} s", flush=True)
    base = statistics.median(steps["logit KD"])
    rows = {}
    for setup in setups:
        median = statistics.median(steps[setup.name])
        rows[setup.name] = {
            "step_s_median": median, "step_s_min": min(steps[setup.name]), "step_s_all": steps[setup.name],
            "loss_terms_s_median": statistics.median(losses[setup.name]),
            "overhead_vs_logit_kd": median / base - 1.0,
            "min_overhead_vs_logit_kd": min(steps[setup.name]) / min(steps["logit KD"]) - 1.0,
            "objective_parameters": sum(p.numel() for p in setup.objective.parameters()),
            "feature_flops_forward": feature_forward_flops(setup, args),
        }
    return rows


def feature_forward_flops(setup: StepSetup, args: argparse.Namespace) -> int:
    """Analytic multiply-add FLOPs (x2) of the feature terms' forward for one batch: projections and the
    generation block of ViTKD, the relation maps of ManifoldKD (normalisation and element-wise work left out)."""
    B, flops = args.batch_size, 0
    for term in setup.objective.terms:
        pairs = getattr(term, "pairs", None)
        if pairs is None:
            continue
        for s_shape, t_shape in zip(pairs.student_shapes, pairs.teacher_shapes):
            N = s_shape.grid[0] * s_shape.grid[1]
            if term.registry_name == "vitkd":
                flops += 2 * B * N * s_shape.width * t_shape.width if s_shape.width != t_shape.width else 0
            else:  # intra B x N x N, inter N x B x B, random K x K, student and teacher
                K = min(term.loss.k, B * N)
                flops += 2 * (B * N * N + N * B * B) * (s_shape.width + t_shape.width)
                flops += 2 * K * K * (s_shape.width + t_shape.width)
        if term.registry_name == "vitkd":
            N = term.pairs.student_shapes[-1].grid[0] * term.pairs.student_shapes[-1].grid[1]
            width = term.loss.teacher_dim
            flops += 2 * (2 * B * N * 9 * width * width)  # two 3x3 convolutions at the teacher's width
    return flops


# ---------------------------------------------------------------------------------------------------------------------
# memory


def full_map_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The brute-force relation loss the decoupled terms avoid: mean squared difference of the full
    (B*N) x (B*N) cosine-similarity maps of student (B, N, Ds) and teacher (B, N, Dt) tokens."""
    s = F.normalize(student.float(), dim=-1).flatten(0, 1)  # (B*N, Ds)
    t = F.normalize(teacher.detach().float(), dim=-1).flatten(0, 1)  # (B*N, Dt)
    return (t @ t.T - s @ s.T).pow(2).mean()  # two (B*N) x (B*N) maps


def peak_bytes(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], student: torch.Tensor,
               teacher: torch.Tensor) -> tuple[int, float]:
    """(peak live tensor bytes on top of the inputs, seconds) of loss forward + backward."""
    student = student.detach().requires_grad_(True)
    tracker = LiveTensorTracker(resident=(student, teacher))
    start = time.perf_counter()
    with tracker:
        loss_fn(student, teacher).backward()
    seconds = time.perf_counter() - start
    return tracker.peak_bytes, seconds


def measure_memory(args: argparse.Namespace) -> dict:
    B, N = args.memory_batch, args.memory_tokens
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(B, N, args.student_dim, generator=generator)
    teacher = torch.randn(B, N, args.teacher_dim, generator=generator)
    manifold = ManifoldLoss()  # paper defaults: k 192, w_intra 4, w_inter 0.1, w_rand 0.2
    decoupled, decoupled_s = peak_bytes(lambda s, t: manifold([s], [t]), student, teacher)
    result = {"B": B, "N": N, "student_dim": args.student_dim, "teacher_dim": args.teacher_dim, "k": manifold.k,
              "decoupled_peak_bytes": decoupled, "decoupled_seconds": decoupled_s,
              "one_full_map_bytes": (B * N) ** 2 * 4,
              "method": "vitkd.bench.memory.LiveTensorTracker: live tensor storages op by op, forward + backward, "
                        "on top of the input tokens"}
    if not args.skip_full_map:
        full, full_s = peak_bytes(full_map_loss, student, teacher)
        result.update(full_map_peak_bytes=full, full_map_seconds=full_s, memory_ratio=full / decoupled)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# report


def markdown_report(results: dict) -> str:
    settings = results["settings"]
    lines = [f"# Feature distillation cost ({settings['student']} student, {settings['teacher']} teacher)", "",
             f"Step time at batch {settings['batch_size']}, {settings['img_size']}x{settings['img_size']}, "
             f"{settings['threads']} CPU threads, median of {settings['repeats']} interleaved steps "
             f"({settings['machine']}). Target: each feature loss adds <= {STEP_TIME_TARGET:.0%}.", "",
             "| configuration | step (s) | vs logit KD | target | loss terms alone (s) | feature GFLOPs fwd |",
             "|---|---:|---:|---|---:|---:|"]
    for name, row in results["step_time"].items():
        overhead = row["overhead_vs_logit_kd"]
        verdict = "-" if name == "logit KD" else ("met" if overhead <= STEP_TIME_TARGET else "MISSED")
        lines.append(f"| {name} | {row['step_s_median']:.3f} | {overhead:+.1%} | {verdict} | "
                     f"{row['loss_terms_s_median']:.3f} | {row['feature_flops_forward'] / 1e9:.1f} |")
    memory = results["memory"]
    lines += ["", f"ManifoldKD relation memory at B={memory['B']}, N={memory['N']}, Ds={memory['student_dim']}, "
                  f"Dt={memory['teacher_dim']}, K={memory['k']} (forward + backward, peak live tensor bytes on top "
                  f"of the input tokens). Target: decoupled >= {MEMORY_TARGET:.0f}x less.", "",
              "| relation maps | peak (MiB) | time (s) |", "|---|---:|---:|",
              f"| decoupled (intra + inter + random) | {memory['decoupled_peak_bytes'] / 2**20:.1f} | "
              f"{memory['decoupled_seconds']:.2f} |"]
    if "full_map_peak_bytes" in memory:
        verdict = "met" if memory["memory_ratio"] >= MEMORY_TARGET else "MISSED"
        lines += [f"| full (B*N) x (B*N) | {memory['full_map_peak_bytes'] / 2**20:.1f} | "
                  f"{memory['full_map_seconds']:.2f} |", "",
                  f"Ratio full / decoupled: {memory['memory_ratio']:.1f}x ({verdict}); one full map alone is "
                  f"{memory['one_full_map_bytes'] / 2**20:.0f} MiB."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"student": args.student, "teacher": args.teacher, "img_size": args.img_size,
                "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "machine": f"{platform.machine()} {platform.processor() or platform.system()}"}
    print(f"memory: ManifoldKD decoupled vs full relation map (B={args.memory_batch}, N={args.memory_tokens})")
    memory = measure_memory(args)
    print(f"step time: {', '.join(CONFIGS)} interleaved, {args.repeats} repeats after {args.warmup} warm-up")
    step_time = measure_step_times(args)
    results = {"settings": settings, "step_time": step_time, "memory": memory,
               "targets": {"max_step_overhead": STEP_TIME_TARGET, "min_memory_ratio": MEMORY_TARGET}}
    report = markdown_report(results)
    write_result_files(args.out, "feature_kd_cost", results, report)
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
