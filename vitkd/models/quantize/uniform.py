"""4- and 8-bit weights: symmetric uniform integers per output row or group, through torchao's affine quantisation
primitives (`choose_qparams_affine`, `quantize_affine`, `dequantize_affine`; torchao's QAT fake quantiser computes
exactly these): scale = max |W| / ((q_max - q_min) / 2), q = clamp(round(W / scale), q_min, q_max), W_q = q * scale,
with [q_min, q_max] = [-8, 7] for 4 bits and [-128, 127] for 8 bits. The integers are what the packed export stores.
torchao is imported on first use: its import takes seconds, which students without 4/8-bit layers need not pay.
"""

from __future__ import annotations

from typing import Optional

import torch

from vitkd.models.quantize.grouping import as_groups, from_groups


def integer_range(bits: int) -> tuple[int, int]:
    """(q_min, q_max) of a signed `bits`-bit integer: 4 -> (-8, 7), 8 -> (-128, 127)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class UniformWeight:
    """Symmetric `bits`-bit integer weights (4 or 8).

    codes (out, G, g) uint8: q - q_min in [0, 2^bits), scales (out, G) float.
    """

    def __init__(self, bits: int, group_size: Optional[int] = None) -> None:
        if bits not in (4, 8):
            raise ValueError(f"uniform weights take 4 or 8 bits, got {bits}")
        self.bits = bits
        self.group_size = group_size

    def _grid(self, grouped: torch.Tensor) -> tuple[tuple[int, int, int], int, int]:
        q_min, q_max = integer_range(self.bits)
        return (1, 1, grouped.shape[-1]), q_min, q_max

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

        grouped = as_groups(weight.detach(), self.group_size).float()  # (out, G, g)
        block, q_min, q_max = self._grid(grouped)
        scale, zero_point = choose_qparams_affine(grouped, MappingType.SYMMETRIC, block, torch.int8, q_min, q_max)
        integers = quantize_affine(grouped, block, scale, zero_point, torch.int8, q_min, q_max)  # (out, G, g)
        codes = (integers.to(torch.int16) - q_min).to(torch.uint8)
        return codes, scale.reshape(grouped.shape[:2])

    def decode(self, codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        from torchao.quantization.quant_primitives import dequantize_affine

        block, q_min, q_max = self._grid(codes)
        integers = (codes.to(torch.int16) + q_min).to(torch.int8)
        values = dequantize_affine(integers, block, scales.float(), None, torch.int8, q_min, q_max)
        return from_groups(values, shape)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantised weight (same shape and dtype), without gradient; see `straight_through`."""
        codes, scales = self.encode(weight)
        return self.decode(codes, scales, weight.shape).to(weight.dtype)

    def __repr__(self) -> str:
        return f"UniformWeight(bits={self.bits}, group_size={self.group_size})"
