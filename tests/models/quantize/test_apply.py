import timm
import torch

from tests.conftest import TINY_VIT_KWARGS
from vitkd.models.quantize.apply import layer_kind, quantize_model, quantized_layers
from vitkd.models.quantize.layers import QuantizedConv2d, QuantizedLinear


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT_KWARGS)


def test_layer_kinds_of_a_timm_vit():
    assert [layer_kind(n) for n in ("blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
                                    "patch_embed.proj", "head")] == ["qkv", "proj", "fc1", "fc2", "patch_embed", None]


def test_default_kinds_leave_patch_embedding_and_head_full_precision():
    model = _vit()
    names = quantize_model(model, 1)
    assert len(names) == 4 * 2 and not any(n.startswith(("patch_embed", "head")) for n in names)
    assert type(model.head) is torch.nn.Linear and type(model.patch_embed.proj) is torch.nn.Conv2d
    assert all(isinstance(m, QuantizedLinear) for m in quantized_layers(model).values())


def test_chosen_kinds_only_and_patch_embedding_on_request():
    model = _vit()
    names = quantize_model(model, 4, layers=["fc1", "patch_embed"])
    assert names == ["patch_embed.proj", "blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert isinstance(model.patch_embed.proj, QuantizedConv2d) and type(model.blocks[0].attn.qkv) is torch.nn.Linear


def test_quantised_model_keeps_state_dict_and_trains_through_ste():
    model = _vit()
    keys = list(model.state_dict())
    quantize_model(model, 2, activation_bits=8)
    assert list(model.state_dict()) == keys  # loads into the plain timm model and back
    images = torch.randn(2, 3, 16, 16)
    model(images).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_quantised_forward_uses_quantised_weights():
    model = _vit().eval()
    quantize_model(model, 1)
    layer = model.blocks[0].mlp.fc1
    x = torch.randn(3, layer.in_features)
    expected = x @ layer.quantized_weight().T + layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert layer.quantized_weight().abs().unique().numel() <= layer.out_features  # one magnitude per row
