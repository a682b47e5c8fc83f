"""Fine-grained manifold distillation (Hao et al., NeurIPS 2022, "Learning Efficient Vision Transformers via
Fine-Grained Manifold Distillation").

The student learns the *geometry* of the teacher's patch embeddings rather than the embeddings themselves: cosine
similarity maps between patches must match. Relations are width-free, so no projection is needed when the student
and teacher widths differ.

The full relation map over a batch, ``(B * N) x (B * N)``, is far too large (ImageNet batch 256 x 196 patches:
2.5e9 entries), so it is never built. The paper decouples it into three cheap slices of it:

* intra-image: the ``B`` diagonal blocks, one ``N x N`` map per image;
* inter-image: for each patch position, the ``B x B`` map across images (the entries ``(b*N + n, b'*N + n)``);
* random: the ``K x K`` submatrix at ``K`` tokens drawn from all ``B * N`` (the same tokens for teacher and student).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitkd.losses.gather import batch_sizes, distributed_world, gather_batch

__all__ = ["ManifoldLoss"]


class ManifoldLoss(nn.Module):
    """Manifold relation loss between matched student/teacher layers (patch tokens only).

    Inputs to ``forward``: ``student_feats``, ``L`` tensors ``(B, N, Ds)``, and ``teacher_feats``, ``L`` tensors
    ``(B, N, Dt)``, paired by position (``student_feats[l]`` learns from ``teacher_feats[l]``). Prefix tokens must be
    stripped first (``vitkd.models.taps.split_prefix``); widths may differ, ``B`` and ``N`` may not (resample token
    grids with ``vitkd.models.layer_mapping.align_token_grid``). Teacher features are detached.

    Per layer pair, with ``F = normalize(tokens, dim=-1)`` and ``R = F F^T`` on the slices described in the module
    docstring, each term is the per-element mean of ``(R_teacher - R_student)^2`` over its maps (intra: ``B*N*N``
    elements, inter: ``N*B*B``, random: ``K*K``). Each term is then averaged over the ``L`` pairs and weighted::

        loss = w_intra * intra + w_inter * inter + w_rand * random

    Normalisation and relation maps are computed in float32 whatever the autocast dtype.

    Returns:
        Scalar tensor. After each call ``last_terms`` holds the weighted terms, detached, under ``"intra"``,
        ``"inter"`` and ``"random"`` (they sum to the returned value); ``last_random_indices`` the ``(K,)`` flat
        token indices (into ``B * N``, image-major) drawn for each layer pair.

    ``k``: sampled tokens for the random term; ``k >= B * N`` uses every token. Sampling uses the module's own
    ``torch.Generator`` (seeded by ``seed``, saved in ``state_dict``; the global RNG is untouched).

    ``gather_inter=True`` under ``torch.distributed`` (a no-op otherwise) widens the inter-image term to the global
    batch: every process compares its ``B`` local images with the images of *all* processes, ``N`` maps of
    ``B x (world_size * B)``. The gather passes gradients back to the process owning each image, so with DDP's
    gradient averaging the update equals that of the global-batch loss (for equal per-process batch sizes; unequal
    sizes are handled but then the per-process terms are weighted by the local batch). Intra and random terms stay
    local. Every process must call ``forward`` the same number of times (it is a collective).
    """

    def __init__(self, k: int = 192, w_intra: float = 4.0, w_inter: float = 0.1, w_rand: float = 0.2,
                 gather_inter: bool = False, seed: int = 0) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"ManifoldLoss: k must be positive, got {k}")
        self.k, self.w_intra, self.w_inter, self.w_rand = k, w_intra, w_inter, w_rand
        self.gather_inter = gather_inter
        self.generator = torch.Generator().manual_seed(seed)
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_random_indices: list[torch.Tensor] = []

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_feats) != len(teacher_feats) or not student_feats:
            raise ValueError(f"ManifoldLoss expects matching non-empty lists of layers, got {len(student_feats)} "
                             f"student and {len(teacher_feats)} teacher feature maps")
        gather = self.gather_inter and distributed_world()
        intra = inter = rand = 0.0
        self.last_random_indices = []
        for layer, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            if s.dim() != 3 or t.dim() != 3 or s.shape[:2] != t.shape[:2]:
                raise ValueError(
                    f"ManifoldLoss (layer pair {layer}): expected (B, N, D) tokens with equal B and N, got student "
                    f"{tuple(s.shape)} and teacher {tuple(t.shape)}; strip prefix tokens and align token grids first")
            s = F.normalize(s.float(), dim=-1)  # (B, N, Ds)
            t = F.normalize(t.detach().float(), dim=-1)  # (B, N, Dt)
            intra = intra + _relation_error(s, s, t, t)  # B maps of N x N
            s_by_patch = rearrange(s, "b n d -> n b d")  # (N, B, Ds)
            t_by_patch = rearrange(t, "b n d -> n b d")  # (N, B, Dt)
            if gather:
                sizes = batch_sizes(s.shape[0], s.device)
                s_all = rearrange(gather_batch(s, sizes), "b n d -> n b d")  # (N, B_global, Ds)
                t_all = rearrange(gather_batch(t, sizes), "b n d -> n b d")  # (N, B_global, Dt)
                inter = inter + _relation_error(s_by_patch, s_all, t_by_patch, t_all)  # N maps of B x B_global
            else:
                inter = inter + _relation_error(s_by_patch, s_by_patch, t_by_patch, t_by_patch)  # N maps of B x B
            B, N, _ = s.shape
            indices = torch.randperm(B * N, generator=self.generator)[:self.k]  # (K,)
            self.last_random_indices.append(indices)
            indices = indices.to(s.device)
            s_rand = rearrange(s, "b n d -> (b n) d")[indices]  # (K, Ds)
            t_rand = rearrange(t, "b n d -> (b n) d")[indices]  # (K, Dt)
            rand = rand + _relation_error(s_rand, s_rand, t_rand, t_rand)  # one K x K map
        num_pairs = len(student_feats)
        intra = self.w_intra * intra / num_pairs
        inter = self.w_inter * inter / num_pairs
        rand = self.w_rand * rand / num_pairs
        self.last_terms = {"intra": intra.detach(), "inter": inter.detach(), "random": rand.detach()}
        return intra + inter + rand

    def get_extra_state(self) -> dict:
        return {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        return (f"k={self.k}, w_intra={self.w_intra}, w_inter={self.w_inter}, w_rand={self.w_rand}, "
                f"gather_inter={self.gather_inter}")


def _relation_error(s_rows: torch.Tensor, s_cols: torch.Tensor, t_rows: torch.Tensor, t_cols: torch.Tensor
                    ) -> torch.Tensor:
    """Per-element mean of ``(t_rows t_cols^T - s_rows s_cols^T)^2``; inputs ``(..., R, D)`` and ``(..., C, D)``."""
    student = s_rows @ s_cols.transpose(-1, -2)  # (..., R, C)
    teacher = t_rows @ t_cols.transpose(-1, -2)  # (..., R, C)
    return (teacher - student).pow(2).mean()
