"""1-bit weights: W_b = sign(W) * alpha, alpha = mean |W| over each output row or group (XTC, BinaryBERT; the
scaled sign of XNOR-Net).

Written here rather than taken from a library: torchao's fake quantisers are affine integer grids (no 1-bit grid
with a mean-magnitude scale), and brevitas' binary quantisers scale by a learned or max-based constant, not by the
row's mean magnitude that these papers use; the whole quantiser is the few lines below.
sign(0) is taken as +1, so every weight is one of two values and fits in one stored bit.
"""

from __future__ import annotations

from typing import Optional

import torch

from vitkd.models.quantize.grouping import as_groups, from_groups


class BinaryWeight:
    """Binarises a weight per output row (or per `group_size` consecutive weights of a row).

    codes (out, G, g) uint8 in {0, 1} (1: +alpha), scales (out, G) float: alpha = mean |W| of the group.
    """

    bits = 1

    def __init__(self, group_size: Optional[int] = None) -> None:
        self.group_size = group_size

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grouped = as_groups(weight.detach(), self.group_size)  # (out, G, g)
        scales = grouped.abs().mean(dim=-1)  # (out, G)
        codes = (grouped >= 0).to(torch.uint8)
        return codes, scales

    @staticmethod
    def decode(codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        signs = codes.to(scales.dtype) * 2 - 1  # (out, G, g) in {-1, +1}
        return from_groups(signs * scales.unsqueeze(-1), shape)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The binarised weight (same shape and dtype), without gradient; see `straight_through`."""
        codes, scales = self.encode(weight)
        return self.decode(codes, scales, weight.shape).to(weight.dtype)

    def __repr__(self) -> str:
        return f"BinaryWeight(group_size={self.group_size})"
