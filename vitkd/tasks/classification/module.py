"""The one trainable module of classification with distillation: the student and every trainable part of the
objective (ViTKD projections, generation blocks, mask tokens) in one `nn.Module`.

DistributedDataParallel wraps this module whole, so one wrapper broadcasts the initial weights of both and averages
all their gradients; the frozen teacher stays outside it (its outputs come in as an argument).
"""

from __future__ import annotations

import torch
from torch import nn

from vitkd.losses.inputs import Targets, TeacherOutputs
from vitkd.tasks.classification.objective import DistillationObjective
from vitkd.tasks.classification.runners import TappedStudent


class DistillationModule(nn.Module):
    """forward(images (B, 3, H, W), teacher outputs, targets) -> (total loss scalar, {term name: value}).

    `student` (a `TappedStudent`) runs once and serves every term; `objective` weighs and sums the terms.
    """

    def __init__(self, student: TappedStudent, objective: DistillationObjective) -> None:
        super().__init__()
        self.student = student  # registered first: the optimizer's parameter order is the student's, then the terms'
        self.objective = objective

    def forward(self, images: torch.Tensor, teacher: TeacherOutputs,
                targets: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.student(images), teacher, targets)
