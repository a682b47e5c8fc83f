"""Stored bits and bytes: float models as safetensors, packed low-bit exports at their bit width."""

import json
import struct

import torch
from safetensors.torch import save_file

from tests.conftest import TINY_VIT_KWARGS
from vitkd.bench.storage import float_storage, packed_storage
from vitkd.models.factory import build_model
from vitkd.models.quantize import quantize_model, save_packed

NAME = "vit_tiny_patch16_224"


def test_float_model_is_its_dtype_bits_and_its_safetensors_size(tmp_path):
    model = build_model(NAME, TINY_VIT_KWARGS)
    storage = float_storage(model)
    assert storage.weight_bits == 32
    # safetensors layout: 8-byte header length, the JSON header, then the raw float32 tensors
    path = tmp_path / "w.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    payload = sum(value.numel() * 4 for value in model.state_dict().values())
    assert storage.stored_bytes == 8 + header_length + payload
    assert float_storage(model, path).stored_bytes == path.stat().st_size
    assert float_storage(model.to(torch.bfloat16)).weight_bits == 16


def test_packed_file_is_its_bit_width_and_its_file_size(tmp_path):
    model = build_model(NAME, TINY_VIT_KWARGS)
    quantize_model(model, 2)
    path = save_packed(model, tmp_path / "student.packed.safetensors", NAME, TINY_VIT_KWARGS)
    storage = packed_storage(path)
    assert storage.weight_bits == 2
    assert storage.stored_bytes == path.stat().st_size
    assert storage.stored_bytes < float_storage(build_model(NAME, TINY_VIT_KWARGS)).stored_bytes
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_length])
    start, end = header["blocks.0.attn.qkv.weight.codes"]["data_offsets"]
    assert end - start == 96 * 32 // 4  # qkv (3 * 32, 32) at 2 bits: four weights a byte
