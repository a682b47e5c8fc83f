"""Progressive module replacement (BERT-of-Theseus, Xu et al. 2020) for timm ViTs.

The teacher's T blocks form S modules of k = T / S consecutive blocks (the predecessors, frozen); each has one student
block (its successor). At every training step each module, independently, runs its successor with probability p and
its predecessor otherwise; the embeddings, final norm and head are the student's own (trained, shared by both paths).
In evaluation mode only the successors run: the model is then exactly the student, which is also what is exported.

p follows one of the paper's schedules (`replacement_probability`): linear, p = min(1, b + k * step), or constant,
p = b for the first `constant_steps` steps and 1 after them (successor fine-tuning).

The draws use a generator seeded from (seed, step), so every process of a distributed run takes the same path (DDP
then sees the same modules used on every rank) and a resumed run repeats the draws of an uninterrupted one; the step
count is a buffer, saved with the model, and mirrored on the host so a step never waits for the device.
Limitation: under DistributedDataParallel the successors not drawn in a step get no gradient, which DDP without
`find_unused_parameters` refuses; train Theseus students in one process.
"""

from __future__ import annotations

import copy
from typing import Callable, Literal, Optional

import torch
from torch import nn


def replacement_probability(step: int, schedule: Literal["linear", "constant"], replacing_rate: float,
                            slope: float = 0.0, constant_steps: int = 0) -> float:
    """p at optimizer step `step` (0-based): linear min(1, replacing_rate + slope * step); constant replacing_rate
    until `constant_steps`, then 1."""
    if schedule == "linear":
        return min(1.0, replacing_rate + slope * step)
    if schedule == "constant":
        return replacing_rate if step < constant_steps else 1.0
    raise ValueError(f"unknown replacement schedule {schedule!r}; valid: linear, constant")


class TheseusModel(nn.Module):
    """forward(images (B, 3, H, W)) -> logits (B, C), the student with some of its blocks swapped for the frozen
    teacher modules they replace.

    Args:
        student: a timm ViT of S blocks (already initialised, e.g. from teacher layers).
        teacher: a timm ViT of T = k * S blocks of the same width; its blocks are copied and frozen.
        probability: step -> p (see `replacement_probability`).
        seed: seeds the per-step draws.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, probability: Callable[[int], float],
                 seed: int = 0) -> None:
        super().__init__()
        student_depth, teacher_depth = len(student.blocks), len(teacher.blocks)
        if teacher_depth % student_depth:
            raise ValueError(f"the teacher's {teacher_depth} blocks cannot be grouped into modules for "
                             f"{student_depth} student blocks; the teacher depth must be a multiple of the student's")
        self.module_size = teacher_depth // student_depth
        self.student = student
        self.predecessors = nn.ModuleList(
            nn.Sequential(*(copy.deepcopy(teacher.blocks[i * self.module_size + j]) for j in range(self.module_size)))
            for i in range(student_depth))
        for parameter in self.predecessors.parameters():
            parameter.requires_grad_(False)
        self.probability = probability
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training forwards so far (checkpointed)
        self._host_step: Optional[int] = None  # its value on the host, read once after construction or loading
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_host_step", None))
        self.last_choice: list[bool] = []  # per module: True = the successor ran (the last training step)

    def train(self, mode: bool = True) -> "TheseusModel":
        super().train(mode)
        self.predecessors.eval()  # frozen: no dropout / drop path in the teacher's blocks
        return self

    def draw(self, step: int) -> list[bool]:
        """Per module, whether its successor runs at `step` (the same on every process and on a resumed run)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        p = self.probability(step)
        return (torch.rand(len(self.predecessors), generator=generator) < p).tolist()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.student(images)
        if self._host_step is None:
            self._host_step = int(self.step)
        choice = self.draw(self._host_step)
        self._host_step += 1
        self.step.fill_(self._host_step)  # no host sync: the value is known here
        self.last_choice = choice
        path = [successor if use_successor else predecessor
                for successor, predecessor, use_successor in zip(self.student.blocks, self.predecessors, choice)]
        successors = self.student.blocks
        # run timm's own forward (embeddings, prefix tokens, norm, head) with the chosen path as its blocks
        self.student.blocks = nn.Sequential(*path)
        try:
            return self.student(images)
        finally:
            self.student.blocks = successors

    def successor_only(self) -> nn.Module:
        """The student alone (a plain timm model): what evaluation runs and the export holds."""
        return self.student
