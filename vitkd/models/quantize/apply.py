"""Make a timm ViT a quantisation-aware student: replace the chosen kinds of layers with quantised ones in place.

Layer kinds (timm's ViT module names): `qkv` (`blocks.N.attn.qkv`), `proj` (`blocks.N.attn.proj`), `fc1`, `fc2`
(`blocks.N.mlp.fc1/fc2`) and `patch_embed` (`patch_embed.proj`, a convolution; off by default as in XTC and
BinaryBERT, which keep the embeddings in full precision). The classifier head is never quantised.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from vitkd.models.quantize.activations import PerChannelActivation, activation_quantizer
from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.layers import QUANTIZED_LAYERS, QuantizedConv2d, QuantizedLinear, WeightQuantizer
from vitkd.models.quantize.ternary import TernaryWeight
from vitkd.models.quantize.uniform import UniformWeight

DEFAULT_LAYERS = ("qkv", "proj", "fc1", "fc2")
_KIND_SUFFIXES = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
                  "patch_embed": "patch_embed.proj"}


def layer_kind(name: str) -> Optional[str]:
    """The kind of the module called `name` in a timm ViT (`blocks.3.attn.qkv` -> `qkv`), or None."""
    for kind, suffix in _KIND_SUFFIXES.items():
        if name == suffix or name.endswith("." + suffix):
            return kind
    return None


def weight_quantizer(bits: int, group_size: Optional[int] = None) -> WeightQuantizer:
    """The quantiser of `bits`-bit weights: 1 binary, 2 ternary, 4 / 8 symmetric uniform."""
    if bits == 1:
        return BinaryWeight(group_size)
    if bits == 2:
        return TernaryWeight(group_size)
    return UniformWeight(bits, group_size)


def quantize_model(model: nn.Module, weight_bits: int, layers: Sequence[str] = DEFAULT_LAYERS,
                   group_size: Optional[int] = None, activation_bits: Optional[int] = None) -> list[str]:
    """Replace, in place, every layer of the kinds `layers` with its quantisation-aware version (same weights);
    returns the replaced modules' names. Raises ValueError when the model has no such layer, or a row length is not
    a multiple of `group_size` (the message names the layer)."""
    wanted = set(layers)
    replaced = []
    for name, module in list(model.named_modules()):
        kind = layer_kind(name)
        if kind not in wanted or isinstance(module, QUANTIZED_LAYERS):
            continue
        quantizer = weight_quantizer(weight_bits, group_size)
        row = module.weight[0].numel()
        if group_size and row % group_size:
            raise ValueError(f"{name}: a weight row of {row} values cannot be cut into groups of {group_size}")
        if isinstance(module, nn.Linear):
            inputs = activation_quantizer(activation_bits) if activation_bits else None
            new = QuantizedLinear.from_linear(module, quantizer, inputs)
        elif isinstance(module, nn.Conv2d):
            inputs = PerChannelActivation(activation_bits) if activation_bits else None
            new = QuantizedConv2d.from_conv(module, quantizer, inputs)
        else:
            continue
        _set_module(model, name, new)
        replaced.append(name)
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no layers of the kinds {sorted(wanted)} (timm ViT names: "
                         f"{', '.join(f'{k} = *.{s}' for k, s in _KIND_SUFFIXES.items())})")
    return replaced


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> quantised layer, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, QUANTIZED_LAYERS)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
