"""Logit distillation losses: Hinton KD and the DeiT distillation-token term.

Both are small `nn.Module`s called on logits; their docstrings state the shapes and how the result is normalised.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class KDLoss(nn.Module):
    """Hinton et al. knowledge distillation: `KL(softmax(t / T) || softmax(s / T)) * T^2`.

    Args:
        temperature: softening temperature T (> 0).

    Shapes: student_logits (B, C), teacher_logits (B, C) -> scalar.
    Reduction: the KL divergence is summed over classes and averaged over the batch (per-sample, `batchmean`);
    the T^2 factor keeps gradient magnitudes comparable across temperatures.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KDLoss temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_logit_shapes(student_logits, teacher_logits, "KDLoss")
        t = self.temperature
        student_log_probs = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, C)
        teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)  # (B, C)
        kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
        return kl * (t * t)


class DeiTDistillationLoss(nn.Module):
    """The DeiT distillation-token term (Touvron et al. 2021), applied to the distillation head's logits.

    Args:
        mode: "hard" -- cross-entropy of the distillation head against the teacher's argmax class.
              "soft" -- `KL(softmax(t / tau) || softmax(s / tau)) * tau^2`.
        tau: temperature of the soft mode (ignored by hard).
        normalization: for the soft mode, "element" divides the summed KL by B * C, as DeiT's released code does
            (so the paper's settings carry over); "batch" divides by B (the usual per-sample KL).

    Shapes: dist_logits (B, C), teacher_logits (B, C) -> scalar. Hard mode is averaged over the batch.
    """

    def __init__(self, mode: Literal["soft", "hard"] = "hard", tau: float = 3.0,
                 normalization: Literal["element", "batch"] = "element") -> None:
        super().__init__()
        if mode not in ("soft", "hard"):
            raise ValueError(f"DeiTDistillationLoss mode must be 'soft' or 'hard', got {mode!r}")
        if normalization not in ("element", "batch"):
            raise ValueError(f"DeiTDistillationLoss normalization must be 'element' or 'batch', got {normalization!r}")
        if tau <= 0:
            raise ValueError(f"DeiTDistillationLoss tau must be positive, got {tau}")
        self.mode = mode
        self.tau = tau
        self.normalization = normalization

    def forward(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_logit_shapes(dist_logits, teacher_logits, "DeiTDistillationLoss")
        teacher_logits = teacher_logits.detach().float()
        if self.mode == "hard":
            return F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
        tau = self.tau
        student_log_probs = F.log_softmax(dist_logits.float() / tau, dim=-1)  # (B, C)
        teacher_log_probs = F.log_softmax(teacher_logits / tau, dim=-1)  # (B, C)
        kl_sum = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
        divisor = dist_logits.numel() if self.normalization == "element" else dist_logits.shape[0]
        return kl_sum * (tau * tau) / divisor


def _check_logit_shapes(student: torch.Tensor, teacher: torch.Tensor, who: str) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"{who} expects student and teacher logits of the same shape (B, C); "
                         f"got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")
