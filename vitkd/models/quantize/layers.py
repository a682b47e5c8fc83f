"""Quantisation-aware layers that keep timm's parameter names and shapes (`weight`, `bias`), so a quantised student's
state dict loads into the plain timm model and back.

Each layer holds its full-precision latent weight (what the optimizer updates) and a weight quantiser
(`BinaryWeight`, `TernaryWeight`, `UniformWeight`); the forward uses the quantised weight through the
straight-through estimator, and optionally fake-quantises its input (8-bit activations).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.straight_through import straight_through


class WeightQuantizer(Protocol):
    bits: int
    group_size: Optional[int]

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, codes: torch.Tensor, scales: torch.Tensor, shape: torch.Size) -> torch.Tensor: ...

    def __call__(self, weight: torch.Tensor) -> torch.Tensor: ...


class _QuantizedForward:
    """What every quantised layer does around its op: fake-quantise the input when asked, and use the quantised
    weight with straight-through gradients. Needs `weight`, `weight_quantizer` and `input_quantizer`."""

    weight: nn.Parameter
    weight_quantizer: WeightQuantizer
    input_quantizer: Optional[nn.Module]

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def training_weight(self) -> torch.Tensor:
        """The quantised weight, same shape as `weight`, whose gradient flows to `weight` unchanged."""
        return straight_through(self.weight, self.weight_quantizer(self.weight))

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward uses, without a gradient path (for exports)."""
        return self.weight_quantizer(self.weight.detach())


class QuantizedLinear(_QuantizedForward, nn.Linear):
    """nn.Linear (in -> out) whose forward uses `weight_quantizer(weight)`; input (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, weight_quantizer: WeightQuantizer,
                 input_quantizer: Optional[nn.Module] = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_quantizer: WeightQuantizer,
                    input_quantizer: Optional[nn.Module] = None) -> "QuantizedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_quantizer,
                    input_quantizer).to(linear.weight.device, linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.training_weight(), self.bias)

    def extra_repr(self) -> str:
        quantized_inputs = self.input_quantizer is not None
        return f"{super().extra_repr()}, weights={self.weight_quantizer}, activations={quantized_inputs}"


class QuantizedConv2d(_QuantizedForward, nn.Conv2d):
    """nn.Conv2d (a patch embedding's projection) with quantised kernels; (B, C, H, W) -> (B, D, H', W')."""

    weight_quantizer: WeightQuantizer

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight_quantizer: WeightQuantizer,
                  input_quantizer: Optional[nn.Module] = None) -> "QuantizedConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
        layer.load_state_dict(conv.state_dict())
        layer.weight_quantizer = weight_quantizer
        layer.input_quantizer = input_quantizer
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.training_weight(), self.bias)


class SplitBinaryLinear(_QuantizedForward, nn.Module):
    """A binary layer of twice the input width standing for one linear layer (BinaryBERT's ternary weight splitting).

    weight (out, 2 * in) = [W_1 | W_2], each half binarised with its own scales; the forward computes
    x W_b1^T + x W_b2^T = x (W_b1 + W_b2)^T, i.e. the layer [W_b1 | W_b2] applied to the input given twice.
    input (..., in) -> (..., out). `bits` stored per weight: 1, on twice as many weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: Optional[int] = None,
                 input_quantizer: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, 2 * in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # groups never straddle the two halves: each half has its own per-row (or per-group) scales
        self.weight_quantizer = BinaryWeight(group_size or in_features)
        self.input_quantizer = input_quantizer

    def quantized_weight(self) -> torch.Tensor:
        """(out, in): W_b1 + W_b2, the equivalent single weight (for exports)."""
        return self.merge(self.weight_quantizer(self.weight.detach()))

    def merge(self, wide: torch.Tensor) -> torch.Tensor:
        """(out, 2 * in) -> (out, in): the sum of the two halves."""
        return wide.reshape(self.out_features, 2, self.in_features).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.merge(self.training_weight()), self.bias)  # wide: (out, 2 * in)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (binary, split: 2x wide)"


QUANTIZED_LAYERS = (QuantizedLinear, QuantizedConv2d, SplitBinaryLinear)
