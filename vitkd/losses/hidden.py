"""Hidden-state transfer: the student's tokens regress the teacher's at matched layers.

* ``mse`` (TinyBERT, Jiao et al. 2020; MobileBERT, Sun et al. 2020): ``MSE(s W + b, t)`` with a learned linear
  projection ``W`` from the student's width to the teacher's (TinyBERT's ``W_h``, and ``W_e`` for the embedding
  layer), the identity when the widths agree (as TinyBERT's code and MobileBERT's equal-width feature maps).
* ``cosine`` (DistilBERT, Sanh et al. 2019): the cosine embedding loss ``1 - cos(s W + b, t)`` per token, which
  aligns directions and ignores norms (DistilBERT's widths agree; here the same projection bridges unequal ones).

Token sequences must agree in length (prefix tokens kept on both sides or dropped, the teacher's patch grid
resampled onto the student's first). The teacher side carries no gradient; errors are computed in float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HIDDEN_MODES", "HiddenStateLoss"]

HIDDEN_MODES = ("mse", "cosine")


class HiddenStateLoss(nn.Module):
    """Hidden-state loss between matched student/teacher layers, summed over the layer pairs (as TinyBERT sums).

    ``forward(student_feats, teacher_feats)``: ``L`` tensors ``(B, N, Ds_l)`` and ``L`` tensors ``(B, N, Dt_l)``,
    paired by position -> scalar. Per pair, with ``P_l`` the pair's projection (``Linear(Ds_l, Dt_l)``, identity when
    ``Ds_l == Dt_l``):

    * ``mode="mse"``: mean over the ``B * N * Dt_l`` elements of ``(P_l(s) - t)^2``;
    * ``mode="cosine"``: mean over the ``B * N`` tokens of ``1 - cos(P_l(s), t)`` (``nn.CosineEmbeddingLoss`` with
      target 1, DistilBERT's reduction).

    Trainable state: ``projections`` (one per pair; they train with the student and are not part of its export).
    After each call ``last_terms`` holds each pair's value under ``"layer{l}"``, detached.
    """

    def __init__(self, student_dims: Sequence[int], teacher_dims: Sequence[int], mode: str = "mse") -> None:
        super().__init__()
        if mode not in HIDDEN_MODES:
            raise ValueError(f"HiddenStateLoss: mode must be one of {', '.join(HIDDEN_MODES)}, got {mode!r}")
        if len(student_dims) != len(teacher_dims) or not student_dims:
            raise ValueError(f"HiddenStateLoss: one student and one teacher width per layer pair, got "
                             f"{list(student_dims)} and {list(teacher_dims)}")
        self.mode = mode
        self.student_dims, self.teacher_dims = list(student_dims), list(teacher_dims)
        self.projections = nn.ModuleList(nn.Identity() if ds == dt else nn.Linear(ds, dt)
                                         for ds, dt in zip(student_dims, teacher_dims))
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_feats) != len(self.projections) or len(teacher_feats) != len(self.projections):
            raise ValueError(f"HiddenStateLoss expects {len(self.projections)} student and teacher feature maps, got "
                             f"{len(student_feats)} and {len(teacher_feats)}")
        total, self.last_terms = 0.0, {}
        for layer, (s, t, projection) in enumerate(zip(student_feats, teacher_feats, self.projections)):
            if s.dim() != 3 or s.shape[:2] != t.shape[:2]:
                raise ValueError(f"HiddenStateLoss (layer pair {layer}): expected (B, N, D) tokens with equal B and N, "
                                 f"got student {tuple(s.shape)} and teacher {tuple(t.shape)}")
            s = projection(s.float())  # (B, N, Dt)
            t = t.detach().float()  # (B, N, Dt)
            if self.mode == "mse":
                value = F.mse_loss(s, t)
            else:  # 1 - cos per token, mean over the B * N tokens
                value = (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
            self.last_terms[f"layer{layer}"] = value.detach()
            total = total + value
        return total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, student_dims={self.student_dims}, teacher_dims={self.teacher_dims}"
