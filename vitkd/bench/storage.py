"""What a model occupies as stored: bits per weight and bytes, for the `Bits` and `Stored` columns of `vitkd bench`.

* A packed low-bit export (`student.packed.safetensors`, `vitkd.models.quantize.packed`): the bits its quantised
  layers are stored at (the largest, if layers differ) and the file's size (packed codes, scales, the
  full-precision tensors and the header).
* A float model: the bits of its floating-point parameters' dtype (32 for float32, 16 for bf16/fp16; the widest if
  they are mixed) and its size as safetensors: the file itself when the weights were loaded from a `.safetensors`
  file, otherwise the length of the state dict serialised by `safetensors.torch.save` (what `vitkd export` would
  write, without metadata), so a bare timm name and a `.pt` checkpoint get comparable figures.
* ONNX files: their size on disk, at 32 bits (float weights) or 8 (`quantize_dynamic`'s int8 weights); see
  `vitkd.bench.onnx_profile`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitkd.models.quantize import read_packed_info, stored_bytes, weight_bits

__all__ = ["StoredSize", "float_storage", "packed_storage"]


@dataclass(frozen=True)
class StoredSize:
    """Bits per stored weight and the stored bytes of one model."""

    weight_bits: int
    stored_bytes: int


def _parameter_bits(model: nn.Module) -> int:
    floating = [parameter.dtype for parameter in model.parameters() if parameter.dtype.is_floating_point]
    return max((dtype.itemsize * 8 for dtype in floating), default=32)


def _serialised_size(model: nn.Module) -> int:
    from safetensors.torch import save

    state_dict = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    try:
        return len(save(state_dict))
    except RuntimeError:  # tensors sharing storage (tied weights): safetensors stores each of them in full
        return len(save({key: value.clone() for key, value in state_dict.items()}))


def float_storage(model: nn.Module, weights_file: str | os.PathLike[str] | None = None) -> StoredSize:
    """Bits of the parameters' dtype and the safetensors size of a float model (see the module docstring).

    Args:
        model: the model whose weights are counted.
        weights_file: the file its weights were loaded from; its size is used when it is a `.safetensors` file.
    """
    bits = _parameter_bits(model)
    if weights_file is not None and Path(weights_file).suffix == ".safetensors":
        return StoredSize(weight_bits=bits, stored_bytes=Path(weights_file).stat().st_size)
    return StoredSize(weight_bits=bits, stored_bytes=_serialised_size(model))


def packed_storage(path: str | os.PathLike[str]) -> StoredSize:
    """Stored bits per quantised weight and the size of a packed low-bit file.

    Raises:
        CheckpointError: the file is not a vitkd packed export.
    """
    bits = weight_bits(read_packed_info(path))
    return StoredSize(weight_bits=int(bits) if bits is not None else 32, stored_bytes=stored_bytes(path))

