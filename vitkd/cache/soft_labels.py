"""Dense teacher targets rebuilt from the cached sparse top-K probabilities."""

from __future__ import annotations

import torch


def rebuild_soft_labels(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense teacher probabilities from the stored top-K.

    The K stored probabilities go back to their classes; the mass they leave, `1 - sum(values)` clamped at 0, is
    spread evenly over the other `C - K` classes (the convention of TinyViT's sparse logit distillation). Each row
    therefore sums to 1 whenever the stored values sum to at most 1, and the teacher's ranking of the top-K classes
    is kept. With K == C there is no remaining class and the row is the stored values as they are.

    Example: C=5, K=2, values [0.6, 0.3] at classes [3, 0] -> [0.3, 0.1/3, 0.1/3, 0.6, 0.1/3].

    Args:
        values: [B, K] float16 (or any float) top-K probabilities.
        indices: [B, K] integer class indices in [0, num_classes), distinct per row.
        num_classes: C.
    Returns:
        [B, C] float32 soft labels on the device of `values`.
    """
    if values.dim() != 2 or indices.shape != values.shape:
        raise ValueError(f"values and indices must both be [B, K]; got {tuple(values.shape)} and "
                         f"{tuple(indices.shape)}")
    batch, topk = values.shape
    if topk > num_classes:
        raise ValueError(f"K={topk} stored probabilities exceed num_classes={num_classes}")
    values = values.float()
    other_classes = num_classes - topk
    if other_classes > 0:
        remaining = (1.0 - values.sum(dim=1)).clamp_min(0.0)  # (B,)
        fill = (remaining / other_classes).unsqueeze(1)  # (B, 1)
    else:
        fill = values.new_zeros(batch, 1)
    soft_labels = fill.expand(batch, num_classes).contiguous()  # (B, C)
    return soft_labels.scatter_(1, indices.to(device=values.device, dtype=torch.long), values)


def cached_argmax(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Teacher's predicted class per sample: the class of the largest stored probability.

    Args:
        values: [B, K] top-K probabilities (need not be sorted).
        indices: [B, K] their class indices.
    Returns:
        [B] int64 class indices.
    """
    best = values.float().argmax(dim=1, keepdim=True)  # (B, 1)
    return indices.to(device=values.device, dtype=torch.long).gather(1, best).squeeze(1)
