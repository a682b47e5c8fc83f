"""Where teacher outputs come from in a training step: nowhere, a live frozen teacher, or a sparse-logit cache
(`vitkd.tasks.classification.cached_teacher.CachedTeacher`).

Every source also says which data epoch to replay at a training epoch (`data_epoch`): the training epoch itself,
except for a cache whose policy `cycle` reuses cached epochs (and so their images).
"""

from __future__ import annotations

from typing import Protocol

import torch

from vitkd.data.loader import Batch
from vitkd.losses.base import TapRequest
from vitkd.losses.inputs import TeacherOutputs
from vitkd.tasks.classification.runners import forward_teacher
from vitkd.models.teacher import FrozenTeacher


class TeacherSource(Protocol):
    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs: ...

    def data_epoch(self, epoch: int) -> int: ...


class NoTeacher:
    """Recipes whose terms need no teacher (plain supervised training)."""

    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs:
        return TeacherOutputs()

    def data_epoch(self, epoch: int) -> int:
        return epoch


class OnlineTeacher:
    """Runs the frozen teacher on the same (augmented, mixed) images the student sees: one forward per step that
    returns its logits and the tokens and module outputs `taps` requests (the union of the loss terms' needs)."""

    def __init__(self, teacher: FrozenTeacher, taps: TapRequest = TapRequest()) -> None:
        self.teacher = teacher
        self.taps = taps

    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs:
        return forward_teacher(self.teacher, images, self.taps)

    def data_epoch(self, epoch: int) -> int:
        return epoch


__all__ = ["NoTeacher", "OnlineTeacher", "TeacherSource"]
