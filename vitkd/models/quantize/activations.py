"""8-bit activations: torchao's QAT fake quantiser, asymmetric int8 per token (each token's features share one scale
and zero point, recomputed from the batch at every forward), with torchao's straight-through rounding."""

from __future__ import annotations

import torch
from torch import nn


def activation_quantizer(bits: int) -> nn.Module:
    """A module (B, ..., D) -> (B, ..., D) that fake-quantises its input to `bits` (8) per token."""
    if bits != 8:
        raise ValueError(f"activations are quantised at 8 bits, got {bits}")
    from torchao.quantization.qat import IntxFakeQuantizeConfig  # imported on first use (a slow import)
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    return IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))


class PerChannelActivation(nn.Module):
    """Fake-quantises an image-like input (B, C, H, W) per pixel (its C values share a scale), as a token would be."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.quantizer = activation_quantizer(bits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels_last = images.movedim(1, -1)  # (B, H, W, C)
        return self.quantizer(channels_last).movedim(-1, 1)
