"""The packed low-bit export: quantised weights stored at their bit width, and a loader rebuilding a plain timm model.

File (`student.packed.safetensors`, a safetensors file, so it is read without unpickling anything):
- for each quantised layer NAME: `NAME.weight.codes`, uint8, the layer's codes packed 8 / bits to a byte (1-bit signs,
  2-bit ternary codes, 4- or 8-bit integers; row-major, the last byte zero-padded), and `NAME.weight.scales` (out, G)
  float32, one scale per output row or group;
- every other tensor of the state dict (biases, norms, embeddings, the full-precision head) as it is;
- metadata `vitkd_packed`: JSON with the model name and kwargs and, per layer, bits, the stored weight shape, the group
  size, the quantiser and whether the layer is a split (2x-wide) binary layer.
The loader decodes every layer to its float weight (a split layer's two halves summed) and loads the result into
`timm.create_model(name, **kwargs)`: a plain timm model whose outputs equal the fake-quantised student's (without the
8-bit activation rounding, which `add_activation_quantizers` puts back when wanted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from vitkd.errors import CheckpointError
from vitkd.files import atomic_write
from vitkd.models.factory import build_model
from vitkd.models.quantize.activations import activation_quantizer
from vitkd.models.quantize.apply import quantized_layers, weight_quantizer
from vitkd.models.quantize.binary import BinaryWeight
from vitkd.models.quantize.layers import SplitBinaryLinear
from vitkd.models.quantize.ternary import TernaryWeight

PACKED_FILE = "student.packed.safetensors"
_METADATA_KEY = "vitkd_packed"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (any shape, uint8 values < 2^bits) -> uint8 (ceil(n * bits / 8),): `8 / bits` codes per byte, the first
    in the lowest bits."""
    per_byte = 8 // bits
    flat = codes.reshape(-1).to(torch.uint8)
    padding = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(padding)]).reshape(-1, per_byte).to(torch.int32)  # (bytes, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (flat << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of `pack_codes`: uint8 (bytes,) -> uint8 (count,)."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2 ** bits - 1)  # (bytes, per_byte)
    return codes.reshape(-1)[:count].to(torch.uint8)


def _quantizer_name(quantizer: Any) -> str:
    if isinstance(quantizer, BinaryWeight):
        return "binary"
    if isinstance(quantizer, TernaryWeight):
        return "ternary"
    return "uniform"


def save_packed(model: nn.Module, path: str | Path, model_name: str, model_kwargs: dict,
                activation_bits: Optional[int] = None) -> Path:
    """Write the packed file of a quantised student (a timm model after `quantize_model`, possibly split). The
    file is written to a temporary name and renamed. Raises ValueError when `model` has no quantised layer."""
    from safetensors.torch import save_file

    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no quantised layers to pack; export it with export_student instead")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        quantizer = layer.weight_quantizer
        codes, scales = quantizer.encode(layer.weight)
        tensors[f"{name}.weight.codes"] = pack_codes(codes, quantizer.bits)
        tensors[f"{name}.weight.scales"] = scales.float().contiguous()
        entries[name] = {"bits": quantizer.bits, "shape": list(layer.weight.shape), "group_size": quantizer.group_size,
                         "quantizer": _quantizer_name(quantizer), "split": isinstance(layer, SplitBinaryLinear)}
    packed_weights = {f"{name}.weight" for name in layers}
    for key, value in model.state_dict().items():
        if key not in packed_weights:
            tensors[key] = value.detach().cpu().contiguous()
    info = {"model": model_name, "kwargs": model_kwargs, "layers": entries, "activation_bits": activation_bits}
    path = Path(path)
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata={_METADATA_KEY: json.dumps(info)}))
    return path


def read_packed_info(path: str | Path) -> dict[str, Any]:
    """The packed file's metadata: model, kwargs, layers {name: {bits, shape, group_size, quantizer, split}},
    activation_bits. Raises CheckpointError for a file that is not a vitkd packed export."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several error types for damaged files
        raise CheckpointError(f"cannot read {path} as a packed vitkd export: {error}") from None
    if _METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} is not a packed vitkd export (no '{_METADATA_KEY}' metadata); expected a "
                              f"{PACKED_FILE} written by vitkd")
    return json.loads(metadata[_METADATA_KEY])


def stored_bytes(path: str | Path) -> int:
    """Bytes the packed model occupies on disk (the file's size: packed codes, scales, full-precision tensors and
    the safetensors header)."""
    return Path(path).stat().st_size


def weight_bits(info: dict[str, Any]) -> Optional[int]:
    """The stored bits per quantised weight of a packed file's info (the largest, if layers differ)."""
    bits = [entry["bits"] for entry in info["layers"].values()]
    return max(bits) if bits else None


def load_packed(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(plain timm model with the decoded weights, the file's info). Raises CheckpointError for a damaged file."""
    from safetensors import safe_open

    info = read_packed_info(path)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state_dict: dict[str, torch.Tensor] = {}
    for name, entry in info["layers"].items():
        shape = torch.Size(entry["shape"])
        quantizer = weight_quantizer(entry["bits"], entry["group_size"])
        if f"{name}.weight.scales" not in tensors or f"{name}.weight.codes" not in tensors:
            raise CheckpointError(f"{path} lists the packed layer {name} but holds no codes or scales for it; the file "
                                  f"is damaged, export the student again")
        scales = tensors.pop(f"{name}.weight.scales")
        codes = unpack_codes(tensors.pop(f"{name}.weight.codes"), entry["bits"], math.prod(shape))
        groups = scales.shape[1]
        weight = quantizer.decode(codes.reshape(shape[0], groups, -1), scales, shape)
        if entry["split"]:
            weight = weight.reshape(shape[0], 2, shape[1] // 2).sum(dim=1)  # W_b1 + W_b2
        state_dict[f"{name}.weight"] = weight
    state_dict.update(tensors)
    model = build_model(info["model"], info["kwargs"])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit model '{info['model']}': {' '.join(str(error).split())[:300]}"
                              ) from None
    return model, info


def add_activation_quantizers(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """Put the student's 8-bit input rounding back on the packed layers of a loaded model (forward pre-hooks, so
    the model and its state dict stay plain timm); a no-op for a student trained with full-precision activations."""
    bits = info.get("activation_bits")
    if not bits:
        return model
    for name in info["layers"]:
        module = model.get_submodule(name)
        quantizer = activation_quantizer(bits)
        if isinstance(module, nn.Conv2d):
            module.register_forward_pre_hook(lambda _, args, q=quantizer: (q(args[0].movedim(1, -1)).movedim(-1, 1),))
        else:
            module.register_forward_pre_hook(lambda _, args, q=quantizer: (q(args[0]),))
    return model
