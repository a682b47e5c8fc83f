"""The inputs of every loss term in one training step: student outputs, teacher outputs and targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from vitkd.data.mixup import MixPlan


@dataclass
class StudentOutputs:
    """One student forward.

    logits: (B, C) class-token head. dist_logits: (B, C) distillation-token head, None for plain students.
    tokens: layer index -> (B, N_prefix + N, D) tokens of that block (NLC, prefix tokens first).
    normed_tokens: layer index -> the same block's tokens after the model's final norm.
    hooked: module name -> that module's output as it returned it (e.g. (B, C, H, W) for a conv stage).
    """

    logits: torch.Tensor
    dist_logits: Optional[torch.Tensor] = None
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    normed_tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    hooked: dict[str, Any] = field(default_factory=dict)
    num_prefix_tokens: int = 0
    grid_size: Optional[tuple[int, int]] = None


@dataclass
class TeacherOutputs:
    """One teacher forward, or targets read back from a sparse-logit cache.

    logits: (B, C). From a cache these are log-probabilities of the rebuilt soft label (softmax(logits) == probs).
    tokens: layer index -> (B, N_prefix + N, D), only from a live teacher; normed_tokens and hooked as for the
    student (`StudentOutputs`).
    """

    logits: Optional[torch.Tensor] = None
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    normed_tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    hooked: dict[str, Any] = field(default_factory=dict)
    num_prefix_tokens: int = 0
    grid_size: Optional[tuple[int, int]] = None
    from_cache: bool = False


@dataclass
class Targets:
    """Ground truth for one batch.

    labels: (B,) integer classes before Mixup/CutMix. soft: (B, C) mixed and/or smoothed targets when Mixup/CutMix
    is active, else None. sample_ids: (B,) int64 dataset ids of the batch's samples (per-sample targets such as
    stored embeddings are read by them), None where a caller has none. mix_plan: the batch's Mixup/CutMix decisions
    (`vitkd.data.mixup.MixPlan`: partner, lam...) when Mixup/CutMix is active, so per-sample targets can be mixed
    with the same pairs and weights as the images; else None.
    """

    labels: torch.Tensor
    soft: Optional[torch.Tensor] = None
    sample_ids: Optional[torch.Tensor] = None
    mix_plan: Optional[MixPlan] = None
