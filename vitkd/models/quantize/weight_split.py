"""BinaryBERT's ternary weight splitting (Bai et al. 2021): a ternary layer becomes a binary layer of twice the input
width whose output equals the ternary layer's, the stage between a 2-bit and a 1-bit student.

For one group of a ternary weight (TWN codes t in {-1, 0, 1}, scale alpha, latent w) the two binary latents are

    kept weights (t != 0):   w1 = a * w,                 w2 = (1 - a) * w
    zeroed weights, w > 0:   w1 = b + w,                 w2 = -b
    zeroed weights, w <= 0:  w1 = b,                     w2 = w - b

so sign(w1) = sign(w2) = t on the kept weights and sign(w1) = -sign(w2) on the zeroed ones. The binary scales
mean|w1| and mean|w2| both equal alpha / 2 when

    a = (S_I + N_J - P_J) / (2 S_I),    b = (n alpha - S_I - S_J) / (2 |J|)

(S_I: sum of |w| over the kept weights, S_J over the zeroed ones, P_J / N_J: the sums of the positive / the
magnitudes of the non-positive zeroed weights, n the group size), hence binarise(w1) + binarise(w2) = ternarise(w).
The latents keep the ternary latent's information, as the paper intends; a group where a is outside (0, 1) or b is
not positive (possible for odd weight distributions) falls back to w1 = alpha / 2 * s1, w2 = alpha / 2 * s2 with the
same signs, which is equally exact.
"""

from __future__ import annotations

import torch
from torch import nn

from vitkd.models.quantize.grouping import as_groups
from vitkd.models.quantize.layers import QuantizedLinear, SplitBinaryLinear
from vitkd.models.quantize.ternary import TernaryWeight


def split_latent(weight: torch.Tensor, quantizer: TernaryWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary latent (out, in) -> the two binary latents (out, in) each, as in the module docstring."""
    grouped = as_groups(weight.detach(), quantizer.group_size)  # (out, G, g)
    codes, alpha = quantizer.encode(weight)
    ternary = codes.to(grouped.dtype) - 1  # (out, G, g) in {-1, 0, 1}
    kept = ternary != 0
    zeroed = ~kept
    magnitude = grouped.abs()
    size = grouped.shape[-1]
    kept_sum = (magnitude * kept).sum(-1, keepdim=True)  # S_I (out, G, 1)
    zeroed_sum = (magnitude * zeroed).sum(-1, keepdim=True)  # S_J
    positive = (grouped.clamp(min=0) * zeroed).sum(-1, keepdim=True)  # P_J
    negative = zeroed_sum - positive  # N_J
    zeroed_count = zeroed.sum(-1, keepdim=True)
    a = (kept_sum + negative - positive) / (2 * kept_sum).clamp(min=torch.finfo(grouped.dtype).tiny)
    b = (size * alpha.unsqueeze(-1) - kept_sum - zeroed_sum) / (2 * zeroed_count).clamp(min=1)
    first = torch.where(kept, a * grouped, torch.where(grouped > 0, b + grouped, b.expand_as(grouped)))
    second = torch.where(kept, (1 - a) * grouped, torch.where(grouped > 0, -b.expand_as(grouped), grouped - b))
    regular = (a > 0) & (a < 1) & ((b > 0) | (zeroed_count == 0)) & (kept_sum > 0)
    half = alpha.unsqueeze(-1) / 2  # the fallback: constant magnitudes alpha / 2 with the same signs
    sign_first = torch.where(kept, ternary, torch.ones_like(ternary))
    first = torch.where(regular, first, half * sign_first)
    second = torch.where(regular, second, half * torch.where(kept, ternary, -torch.ones_like(ternary)))
    return first.reshape(weight.shape), second.reshape(weight.shape)


def split_layer(layer: QuantizedLinear) -> SplitBinaryLinear:
    """The 2x-wide binary layer whose output equals the ternary `layer`'s (float tolerance)."""
    quantizer = layer.weight_quantizer
    if not isinstance(quantizer, TernaryWeight):
        raise ValueError(f"weight splitting starts from ternary weights, got {quantizer}")
    first, second = split_latent(layer.weight, quantizer)
    split = SplitBinaryLinear(layer.in_features, layer.out_features, layer.bias is not None, quantizer.group_size,
                              layer.input_quantizer).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        split.weight.copy_(torch.cat([first, second], dim=1))  # (out, 2 * in)
        if layer.bias is not None:
            split.bias.copy_(layer.bias)
    return split


def split_ternary_model(model: nn.Module) -> list[str]:
    """Replace, in place, every ternary `QuantizedLinear` with its split binary layer; returns their names.
    Raises ValueError when the model has none (a ternary patch embedding convolution is not split)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, QuantizedLinear) and isinstance(module.weight_quantizer, TernaryWeight)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no ternary linear layers to split")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, split_layer(getattr(parent, child)))
    return names
