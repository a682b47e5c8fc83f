"""2-bit (ternary) weights, TWN (Li et al. 2016, "Ternary Weight Networks"): threshold delta = 0.7 * mean |W|, weights
with |W| > delta become sign(W) * alpha, the others 0, alpha = the mean |W| of the kept weights; per output row or
per group (the granularity BinaryBERT and XTC use).

Written here rather than taken from a library: torchao has no ternary grid with TWN's threshold, and brevitas'
ternary quantiser thresholds at a fraction of a learned or max-based scale, not at 0.7 * mean |W| with the kept
weights' mean as the scale; the whole quantiser is the few lines below.
"""

from __future__ import annotations

from typing import Optional

import torch

from vitkd.models.quantize.grouping import as_groups, from_groups

#: TWN's threshold factor: delta = 0.7 * mean |W| (an approximation of the optimal threshold for Gaussian weights).
TWN_THRESHOLD = 0.7


class TernaryWeight:
    """Ternarises a weight per output row (or per `group_size` consecutive weights of a row).

    codes (out, G, g) uint8 in {0, 1, 2} (-alpha, 0, +alpha), scales (out, G) float: alpha per group.
    """

    bits = 2

    def __init__(self, group_size: Optional[int] = None) -> None:
        self.group_size = group_size

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grouped = as_groups(weight.detach(), self.group_size)  # (out, G, g)
        magnitude = grouped.abs()
        delta = TWN_THRESHOLD * magnitude.mean(dim=-1, keepdim=True)  # (out, G, 1)
        kept = magnitude > delta
        kept_count = kept.sum(dim=-1)
        scales = (magnitude * kept).sum(dim=-1) / kept_count.clamp(min=1)  # (out, G); 0 for an all-zero group
        codes = (torch.sign(grouped) * kept + 1).to(torch.uint8)
        return codes, scales

    @staticmethod
    def decode(codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        values = codes.to(scales.dtype) - 1  # (out, G, g) in {-1, 0, +1}
        return from_groups(values * scales.unsqueeze(-1), shape)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The ternarised weight (same shape and dtype), without gradient; see `straight_through`."""
        codes, scales = self.encode(weight)
        return self.decode(codes, scales, weight.shape).to(weight.dtype)

    def __repr__(self) -> str:
        return f"TernaryWeight(group_size={self.group_size})"
