"""Where teacher outputs come from in a training step: nowhere, a live frozen teacher, or (later) a cache."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from vitkd.data.loader import Batch
from vitkd.engine.outputs import TeacherOutputs
from vitkd.models.tapped import forward_teacher
from vitkd.models.teacher import FrozenTeacher


class TeacherSource(Protocol):
    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs: ...


class NoTeacher:
    """Recipes whose terms need no teacher (plain supervised training)."""

    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs:
        return TeacherOutputs()


class OnlineTeacher:
    """Runs the frozen teacher on the same (augmented, mixed) images the student sees."""

    def __init__(self, teacher: FrozenTeacher, layers: Sequence[int] = ()) -> None:
        self.teacher = teacher
        self.layers = tuple(layers)

    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs:
        return forward_teacher(self.teacher, images, self.layers)


def needs_teacher(teacher_logits: bool, teacher_layers: Sequence[int]) -> bool:
    return teacher_logits or bool(teacher_layers)


__all__ = ["NoTeacher", "OnlineTeacher", "TeacherSource", "needs_teacher"]
