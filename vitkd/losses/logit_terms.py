"""Loss terms on logits: ground truth (`ce`), Hinton KD (`kd`) and the DeiT distillation token (`deit`)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.logits import DeiTDistillationLoss, KDLoss
from vitkd.losses.registry import register_loss_term


@register_loss_term("ce")
class GroundTruthTerm(LossTerm):
    """Cross-entropy of the class-token head against the ground truth.

    Under Mixup/CutMix the targets are soft (B, C) and the loss is soft-target cross-entropy; otherwise integer
    labels with label smoothing `data.label_smoothing`. Mean over the batch.
    """

    is_ground_truth = True

    def __init__(self, context: TermContext) -> None:
        super().__init__()
        self.label_smoothing = context.label_smoothing
        self.soft_target_loss = SoftTargetCrossEntropy()

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        logits = student.logits.float()  # (B, C)
        if targets.soft is not None:
            return self.soft_target_loss(logits, targets.soft)
        return F.cross_entropy(logits, targets.labels, label_smoothing=self.label_smoothing)


@register_loss_term("kd")
class LogitKDTerm(LossTerm):
    """Hinton KD (`KDLoss`) between a student head and the teacher's logits.

    head: "cls" (class-token head, the only head of plain students) or "dist" (DeiT distillation head).
    """

    def __init__(self, context: TermContext, temperature: float = 4.0, head: Literal["cls", "dist"] = "cls") -> None:
        super().__init__()
        if head not in ("cls", "dist"):
            raise ValueError(f"head must be 'cls' or 'dist', got {head!r}")
        if head == "dist" and not _has_distillation_head(context):
            raise ValueError("head 'dist' needs a student with a distillation token (e.g. deit_tiny_distilled_patch16_224)")
        self.head = head
        self.loss = KDLoss(temperature)
        self.needs = LossNeeds(teacher_logits=True, dist_logits=head == "dist")

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        logits = student.dist_logits if self.head == "dist" else student.logits
        return self.loss(logits, teacher.logits)


@register_loss_term("deit")
class DeiTTokenTerm(LossTerm):
    """The DeiT distillation-token term (`DeiTDistillationLoss`) on the student's distillation head.

    Paper defaults: hard mode weight (alpha) 0.5; soft mode tau 3 and weight (lambda) 0.1. With a cache, the hard
    target is the argmax of the cached probabilities.
    """

    convex_with_ground_truth = True

    def __init__(self, context: TermContext, mode: Literal["soft", "hard"] = "hard", tau: float = 3.0,
                 normalization: Literal["element", "batch"] = "element") -> None:
        super().__init__()
        if not _has_distillation_head(context):
            raise ValueError("the 'deit' loss needs a student with a distillation token: use a deit_*_distilled_* "
                             "model name (any ViT configuration can be set through student.kwargs)")
        self.loss = DeiTDistillationLoss(mode=mode, tau=tau, normalization=normalization)
        self.needs = LossNeeds(teacher_logits=True, dist_logits=True)

    @classmethod
    def default_weight(cls, params: dict[str, Any]) -> float:
        return 0.1 if params.get("mode", "hard") == "soft" else 0.5

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        if params.get("mode", "hard") not in ("soft", "hard"):
            raise ValueError(f"{path}.mode: {params['mode']!r} is not valid; valid modes: 'hard', 'soft'")

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        return self.loss(student.dist_logits, teacher.logits)


def _has_distillation_head(context: TermContext) -> bool:
    return hasattr(context.student, "head_dist")
