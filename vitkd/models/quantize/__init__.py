"""Low-bit students: 1-bit (binary), 2-bit (ternary), 4/8-bit (uniform) weights and 8-bit activations, trained with
straight-through gradients; BinaryBERT's weight splitting; the packed low-bit export and its loader."""

from vitkd.models.quantize.apply import DEFAULT_LAYERS, layer_kind, quantize_model, quantized_layers, weight_quantizer
from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.packed import (PACKED_FILE, add_activation_quantizers, load_packed, read_packed_info,
                                          save_packed, stored_bytes, weight_bits)
from vitkd.models.quantize.ternary import TernaryWeight
from vitkd.models.quantize.uniform import UniformWeight
from vitkd.models.quantize.weight_split import split_ternary_model

__all__ = ["DEFAULT_LAYERS", "PACKED_FILE", "BinaryWeight", "TernaryWeight", "UniformWeight",
           "add_activation_quantizers", "layer_kind", "load_packed", "quantize_model", "quantized_layers",
           "read_packed_info", "save_packed", "split_ternary_model", "stored_bytes", "weight_bits", "weight_quantizer"]
