import json
import struct

import pytest
import timm
import torch

from tests.conftest import TINY_VIT_KWARGS
from vitkd.errors import CheckpointError
from vitkd.models.quantize.apply import quantize_model, quantized_layers
from vitkd.models.quantize.packed import (add_activation_quantizers, load_packed, pack_codes, read_packed_info,
                                          save_packed, stored_bytes, unpack_codes, weight_bits)
from vitkd.models.quantize.weight_split import split_ternary_model

NAME = "vit_tiny_patch16_224"
KWARGS = {**TINY_VIT_KWARGS, "num_classes": 10}


def test_pack_codes_by_hand():
    # 2-bit codes 1, 2, 0, 3 -> 1 + 2 * 4 + 0 * 16 + 3 * 64 = 201; 1-bit codes 1,0,1 -> 0b101 = 5
    assert pack_codes(torch.tensor([1, 2, 0, 3]), 2).tolist() == [201]
    assert pack_codes(torch.tensor([1, 0, 1]), 1).tolist() == [5]
    codes = torch.randint(0, 16, (37,), dtype=torch.uint8)
    assert torch.equal(unpack_codes(pack_codes(codes, 4), 4, 37), codes)


@pytest.mark.parametrize("bits,split,activations", [(1, False, None), (2, False, 8), (4, False, None),
                                                    (8, False, None), (1, True, None)])
def test_packed_round_trip_gives_the_fake_quantised_outputs(tmp_path, bits, split, activations):
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, **KWARGS).eval()
    quantize_model(model, 2 if split else bits, activation_bits=activations)
    if split:
        split_ternary_model(model)
    path = save_packed(model, tmp_path / "student.packed.safetensors", NAME, KWARGS, activations)
    loaded, info = load_packed(path)
    assert type(loaded) is type(timm.create_model(NAME, pretrained=False, **KWARGS))
    assert all(type(m) in (torch.nn.Linear, torch.nn.Conv2d) for n, m in loaded.named_modules() if "attn.qkv" in n)
    add_activation_quantizers(loaded, info)
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(images), model(images), atol=1e-5, rtol=1e-5)
    assert weight_bits(info) == bits


def test_file_size_matches_the_bit_width(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, **KWARGS)
    quantize_model(model, 1)
    path = save_packed(model, tmp_path / "p.safetensors", NAME, KWARGS)
    raw = path.read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_length])
    layers = quantized_layers(model)
    for name, layer in layers.items():
        start, end = header[f"{name}.weight.codes"]["data_offsets"]
        assert end - start == -(-layer.weight.numel() // 8)  # 1 bit per weight, rounded up to whole bytes
    quantized = {f"{name}.weight" for name in layers}
    full_precision = sum(v.numel() * 4 for k, v in model.state_dict().items() if k not in quantized)
    codes = sum(-(-layer.weight.numel() // 8) for layer in layers.values())
    scales = sum(layer.out_features * 4 for layer in layers.values())  # one float32 scale per row
    assert stored_bytes(path) == 8 + header_length + full_precision + codes + scales
    float_bytes = sum(v.numel() * 4 for v in model.state_dict().values())
    assert stored_bytes(path) < float_bytes  # the quantised matrices shrink 32x


def test_not_a_packed_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a packed vitkd export"):
        read_packed_info(tmp_path / "plain.safetensors")


def test_damaged_packed_file_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = timm.create_model(NAME, pretrained=False, **KWARGS)
    quantize_model(model, 1)
    path = save_packed(model, tmp_path / "p.safetensors", NAME, KWARGS)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if key != "blocks.0.attn.qkv.weight.codes"}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"packed layer blocks.0.attn.qkv but holds no codes"):
        load_packed(path)
