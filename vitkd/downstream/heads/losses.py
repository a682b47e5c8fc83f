"""Per-pixel cross-entropy for semantic segmentation, with an ignored label (255: unlabelled or `reduce_zero_label`
background in ADE20K)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationCrossEntropy(nn.Module):
    """Cross-entropy averaged over the labelled pixels of the batch.

    Args:
        ignore_index: the label of pixels that carry no loss.

    Shapes: logits (B, C, H, W), target (B, H, W) int64 with values in [0, C) or `ignore_index` -> scalar.
    Reduction: the mean over pixels whose label is not `ignore_index` (all images together, so a small object
    weighs the same in every image); a batch without a labelled pixel gives 0 (with a gradient of zeros), not the
    NaN that `F.cross_entropy`'s mean of nothing is. Computed in float32 (logits may come from autocast).
    `normaliser` replaces the batch's count of labelled pixels as the divisor: under DDP the mean count over
    processes (`labelled_pixels` reduced by the caller), so that the averaged gradients are those of the mean over
    every labelled pixel of the global batch, whatever each process's share of ignored pixels.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def labelled_pixels(self, target: torch.Tensor) -> torch.Tensor:
        """The number of pixels of `target` (B, H, W) that carry a loss, as a float scalar."""
        return (target != self.ignore_index).sum().float()

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                normaliser: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must share batch and "
                             f"spatial sizes")
        summed = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum")
        labelled = self.labelled_pixels(target) if normaliser is None else normaliser
        return summed / labelled.clamp(min=1)
