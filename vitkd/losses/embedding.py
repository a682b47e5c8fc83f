"""Pulling the student's pooled feature towards a fixed per-sample target embedding (GPT4Image, Ding et al. 2023).

GPT4Image captions every training image once, encodes the captions with CLIP's text encoder and trains the student
with `CE + lambda * L_text`: the student's pooled feature f_i goes through a small trainable projection P to the
targets' width and both sides are L2-normalised,

    s_i = P(f_i) / |P(f_i)|,   t_i = e_i / |e_i|,   Z = S T^T / tau   (B x B; B = the global batch with `gather`)

and, with the diagonal as the positives (Z_ij: student i against target j),

    clip:         (CE(Z, diag) + CE(Z^T, diag)) / 2     symmetric InfoNCE, CE averaged over rows
    contrastive:  CE(Z, diag)                           the student -> target direction only
    cosine:       mean_i (1 - s_i . t_i)                no negatives, no batch coupling

with CE(Z, diag) = mean_i -log softmax(Z_i)_i. GPT4Image uses tau 0.05 for DeiT students and lambda 0.3.

Mixup/CutMix: a mixed image shows two samples, weighted lam_i and 1 - lam_i (the CutMix box area), and its CE target
mixes the two labels with those weights. The targets are mixed the same way, with the batch's own pairs and weights
(`vitkd.data.mixup.MixPlan`):

    t_i' = normalize(lam_i t_i + (1 - lam_i) t_partner(i))      (t already unit-norm, so lam weights directions)

The reference code does not mix the targets (a mixed image keeps its own sample's embedding). We mix them because
otherwise the alignment contradicts the CE term on every mixed image: it would pull a half-and-half image onto one
caption only, while the partner's caption sits in the same batch as a negative that the image is pushed away from
although it shows that partner too. Mixing unit vectors and renormalising keeps the target on the sphere the cosine
and the InfoNCE compare on; unmixed samples (lam 1) keep their own target exactly.

Distributed (`gather=True`, under torchrun): both sides are all-gathered (`vitkd.losses.gather`) so every process
computes the same InfoNCE over the global batch; the local rows keep their gradient and the gather's backward sums
the other processes' gradients into them, so after DDP's averaging the update is exactly that of the single-process
loss on the concatenated batch (tested with 2 gloo processes). The loss is computed in float32 with autocast off.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vitkd.data.mixup import MixPlan
from vitkd.losses.gather import batch_sizes, distributed_world, gather_batch

EMBEDDING_LOSSES = ("clip", "contrastive", "cosine")
PROJECTIONS = ("mlp", "linear")


def build_projection(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`mlp`: Linear(in, in) - GELU - Linear(in, out) (GPT4Image's head; hidden width = the feature width);
    `linear`: Linear(in, out). (B, in_dim) -> (B, out_dim)."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    raise ValueError(f"projection: {kind!r} is not valid; valid values: {', '.join(PROJECTIONS)}")


def mix_embeddings(targets: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """(B, D) unit-norm targets -> (B, D) `normalize(lam_i t_i + (1 - lam_i) t_partner(i))` with the batch's plan."""
    lam = plan.lam.to(device=targets.device, dtype=targets.dtype).unsqueeze(1)  # (B, 1)
    partner = plan.partner.to(targets.device)  # (B,)
    return F.normalize(lam * targets + (1 - lam) * targets[partner], dim=-1)


def alignment_loss(student: torch.Tensor, target: torch.Tensor, loss: str, tau: float) -> torch.Tensor:
    """Scalar loss between (N, D) unit-norm student rows and (N, D) unit-norm targets, row i paired with row i.

    clip: (CE(Z, diag) + CE(Z^T, diag)) / 2, contrastive: CE(Z, diag), cosine: mean(1 - s_i . t_i); Z = S T^T / tau.
    """
    if loss == "cosine":
        return (1 - (student * target).sum(dim=-1)).mean()
    logits = student @ target.t() / tau  # (N, N): student i against target j
    positives = torch.arange(logits.shape[0], device=logits.device)  # (N,)
    forward = F.cross_entropy(logits, positives)
    if loss == "contrastive":
        return forward
    if loss == "clip":
        return (forward + F.cross_entropy(logits.t(), positives)) / 2
    raise ValueError(f"loss: {loss!r} is not valid; valid values: {', '.join(EMBEDDING_LOSSES)}")


class EmbeddingAlignmentLoss(nn.Module):
    """Projection + alignment of pooled student features with per-sample target embeddings (module docstring).

    Args:
        in_dim: width of the student's pooled feature.
        out_dim: width of the target embeddings.
        projection: `mlp` or `linear` (`build_projection`); its parameters train with the student.
        loss: `clip`, `contrastive` or `cosine`.
        tau: temperature of the InfoNCE losses (> 0).
        gather: all-gather both sides across processes for the InfoNCE losses (a no-op without a process group).

    Forward: features (B, in_dim), targets (B, out_dim) (any norm; detached), mix_plan (the batch's MixPlan or None)
    -> scalar. Every process must call it the same number of times when `gather` is on (it is a collective).
    """

    def __init__(self, in_dim: int, out_dim: int, projection: str = "mlp", loss: str = "clip", tau: float = 0.05,
                 gather: bool = False) -> None:
        super().__init__()
        if loss not in EMBEDDING_LOSSES:
            raise ValueError(f"loss: {loss!r} is not valid; valid values: {', '.join(EMBEDDING_LOSSES)}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if gather and loss == "cosine":
            raise ValueError("gather: true widens the InfoNCE negatives to the global batch; loss: cosine has no "
                             "negatives, so set gather: false (or loss: clip / contrastive)")
        self.projection = build_projection(projection, in_dim, out_dim)
        self.loss, self.tau, self.gather = loss, float(tau), bool(gather)

    def forward(self, features: torch.Tensor, targets: torch.Tensor, mix_plan: Optional[MixPlan] = None
                ) -> torch.Tensor:
        if features.dim() != 2 or targets.dim() != 2 or features.shape[0] != targets.shape[0]:
            raise ValueError(f"EmbeddingAlignmentLoss: expected features (B, D_in) and targets (B, D) with equal B, "
                             f"got {tuple(features.shape)} and {tuple(targets.shape)}")
        projected = self.projection(features)  # (B, out_dim), under the caller's autocast
        with torch.autocast(projected.device.type, enabled=False):
            student = F.normalize(projected.float(), dim=-1)  # (B, D)
            target = F.normalize(targets.detach().float(), dim=-1)  # (B, D)
            if mix_plan is not None:
                target = mix_embeddings(target, mix_plan)
            if self.gather and distributed_world():
                sizes = batch_sizes(student.shape[0], student.device)
                student, target = gather_batch(student, sizes), gather_batch(target, sizes)  # (B_global, D)
            return alignment_loss(student, target, self.loss, self.tau)

    def extra_repr(self) -> str:
        return f"loss={self.loss}, tau={self.tau}, gather={self.gather}"
