"""FLOP and activation counts checked against hand-computed figures and the published DeiT-Ti number."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention
from torch import nn

from vitkd.bench import (FREE_BY_CONVENTION_OPS, InputSizeError, UncountedOpWarning, analyze_flops,
                         count_activations, count_flops, training_flops_per_image)


class TokenLinear(nn.Module):
    """Applies a Linear to the last (W) axis of a (B, C, H, W) input, so each of the C*H rows is one token."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images)  # (B, C, H, in) -> (B, C, H, out): C*H tokens


class HandAttention(nn.Module):
    """Multi-head self-attention over the H*W pixels of a (B, D, H, W) map, with fused SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = images.flatten(2).transpose(1, 2)  # (B, N, D)
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))


class ImageAttention(nn.Module):
    """timm's ViT attention block applied to the H*W pixels of a (B, D, H, W) map."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.attention = Attention(dim, num_heads=heads, qkv_bias=True)
        self.attention.fused_attn = fused

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.attention(images.flatten(2).transpose(1, 2))


def attention_flops_by_hand(tokens: int, dim: int) -> int:
    projections = tokens * dim * 3 * dim + tokens * dim * dim  # qkv and output projection
    attention_matmuls = 2 * tokens * tokens * dim  # q @ k^T and attn @ v, summed over heads
    return projections + attention_matmuls


def test_linear_costs_in_times_out_per_token():
    model = TokenLinear(in_features=16, out_features=8)
    tokens = 3 * 5  # C * H rows of W=16 features
    assert count_flops(model, (3, 5, 16)) == tokens * 16 * 8


def test_conv2d_costs_kernel_macs_per_output_pixel():
    model = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_flops(model, (3, 10, 12)) == (10 * 12) * 8 * (3 * 3 * 3)


def test_fused_attention_is_counted_like_its_two_matmuls():
    dim, heads, side = 32, 4, 6
    expected = attention_flops_by_hand(side * side, dim)
    flop_count = analyze_flops(HandAttention(dim, heads), (dim, side, side))
    assert flop_count.total == expected
    assert flop_count.by_operator["scaled_dot_product_attention"] == 2 * (side * side) ** 2 * dim
    assert flop_count.uncounted_ops == {}


@pytest.mark.parametrize("fused", [True, False])
def test_timm_attention_fused_and_unfused_agree_with_hand_count(fused):
    dim, heads, side = 48, 3, 4
    model = ImageAttention(dim, heads, fused)
    assert count_flops(model, (dim, side, side)) == attention_flops_by_hand(side * side, dim)


def test_fused_and_unfused_attention_give_the_same_activations():
    dim, heads, side = 48, 3, 4
    fused = ImageAttention(dim, heads, fused=True)
    unfused = ImageAttention(dim, heads, fused=False)
    unfused.load_state_dict(fused.state_dict())
    tokens = side * side
    by_hand = tokens * 3 * dim + heads * tokens * tokens + tokens * dim + tokens * dim  # qkv, scores, attn@v, proj
    assert count_activations(fused, (dim, side, side)) == by_hand
    assert count_activations(unfused, (dim, side, side)) == by_hand


def test_deit_tiny_matches_the_published_figure():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    flop_count = analyze_flops(model, (3, 224, 224))
    tokens, dim, depth = 197, 192, 12
    by_hand = (
        196 * (3 * 16 * 16) * dim  # patch embedding convolution
        + depth * tokens * dim * (3 * dim + dim + 4 * dim + 4 * dim)  # qkv, proj, fc1, fc2
        + depth * 2 * tokens * tokens * dim  # fused attention
        + dim * 1000  # classifier on the class token
        + (2 * depth + 1) * tokens * dim * 5  # layer norms, fvcore's 5 FLOPs per element with affine
    )
    assert flop_count.total == by_hand == 1_258_411_200
    assert round(flop_count.total / 1e9, 1) == 1.3  # DeiT paper: 1.3 GFLOPs
    assert flop_count.uncounted_ops == {}
    assert set(flop_count.ignored_ops) == {"aten::add", "aten::gelu"}
    assert training_flops_per_image(flop_count.total) == 3 * 1_258_411_200


def test_ops_free_by_convention_do_not_warn(recwarn):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU(), nn.Hardswish(), nn.Softmax(dim=1))
    flop_count = analyze_flops(model, (3, 4, 4))
    assert not [warning for warning in recwarn if issubclass(warning.category, UncountedOpWarning)]
    assert set(flop_count.ignored_ops) <= FREE_BY_CONVENTION_OPS
    assert "aten::gelu" in flop_count.ignored_ops


class CumulativeSum(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.cumsum(dim=-1)


def test_uncounted_op_warns_with_its_name():
    with pytest.warns(UncountedOpWarning, match="aten::cumsum"):
        flop_count = analyze_flops(CumulativeSum(), (3, 4, 4), model_name="cumsum-model")
    assert flop_count.uncounted_ops == {"aten::cumsum": 1}


def test_impossible_input_size_names_model_and_size():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    with pytest.raises(InputSizeError, match=r"'tiny-vit'.*\(3, 48, 48\)"):
        count_flops(model, (3, 48, 48), model_name="tiny-vit")
    with pytest.raises(InputSizeError, match=r"multiples of its patch size 8x8"):
        count_flops(model, (3, 30, 30), model_name="tiny-vit")


def test_flops_default_to_the_models_own_input_size():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    assert count_flops(model) == count_flops(model, (3, 32, 32))
