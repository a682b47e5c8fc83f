import pytest
import timm
import torch
from torch import nn

from vitkd.models.taps import TappedModel, TappedOutput, extract_features, split_prefix

TINY = dict(pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **TINY).eval()


@pytest.fixture(scope="module")
def deit_distilled():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", **TINY).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_vit_final_matches_forward_features_and_layers_match_block_outputs(vit, images):
    # layers given out of order and with a negative index; the hooks cross-check the forward_intermediates path
    tapped = extract_features(vit, images, layers=[2, 0, -2], hooks=["blocks.0", "blocks.1", "blocks.2"])
    assert torch.allclose(tapped.final, vit.forward_features(images), atol=1e-6)
    assert sorted(tapped.tokens) == [0, 1, 2]
    for index in range(3):
        assert tapped.tokens[index].shape == (2, 1 + 16, 32)  # [cls; 4x4 patches]
        assert torch.allclose(tapped.tokens[index], tapped.hooked[f"blocks.{index}"], atol=1e-6)
    assert tapped.layer(-1) is tapped.tokens[2]
    assert (tapped.num_prefix_tokens, tapped.grid_size, tapped.depth) == (1, (4, 4), 3)
    assert _no_hooks_left(vit)


def test_normed_last_layer_is_final_and_other_normed_layers_use_model_norm(vit, images):
    tapped = extract_features(vit, images, layers=[0], normed_layers=[0, -1])
    assert tapped.layer(-1, normed=True) is tapped.final  # reused, not recomputed
    assert torch.allclose(tapped.normed_tokens[0], vit.norm(tapped.tokens[0]))
    assert 2 not in tapped.tokens  # only asked for normed
    with pytest.raises(KeyError, match="not tapped as layers"):
        tapped.layer(-1)


def test_distilled_student_prefix_tokens_and_head(deit_distilled, images):
    tapped = extract_features(deit_distilled, images, layers=[0, 1], normed_layers=[-1])
    assert tapped.num_prefix_tokens == 2
    assert tapped.tokens[0].shape == (2, 2 + 16, 32)  # [cls, dist; patches]
    prefix, patches = split_prefix(tapped.tokens[1], tapped.num_prefix_tokens)
    assert prefix.shape == (2, 2, 32) and patches.shape == (2, 16, 32)
    assert torch.equal(tapped.patches(1), patches)
    assert tapped.patches(-1, normed=True).shape == (2, 16, 32)
    # timm keeps [cls, dist] in front: the head reads final[:, 0] and final[:, 1]
    deit_distilled.eval()
    assert torch.allclose(deit_distilled.forward_head(tapped.final), deit_distilled(images), atol=1e-5)

    deit_distilled.train()
    deit_distilled.set_distilled_training(True)
    try:
        tapped = extract_features(deit_distilled, images, layers=[0])
        out = deit_distilled.forward_head(tapped.final)
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == (2, 5) and out[1].shape == (2, 5)
        (out[0].sum() + out[1].sum()).backward()
        assert deit_distilled.dist_token.grad is not None and deit_distilled.head_dist.weight.grad is not None
    finally:
        deit_distilled.set_distilled_training(False)
        deit_distilled.eval()
        deit_distilled.zero_grad(set_to_none=True)


class _TokenNet(nn.Module):
    """A model without forward_intermediates: tokens (B, 1 + 4, 4) in, blocks, final norm."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.norm = nn.LayerNorm(4)

    def forward_features(self, x):
        return self.norm(self.blocks(x))


def test_fallback_hooks_for_models_without_forward_intermediates():
    torch.manual_seed(0)
    model = _TokenNet()
    x = torch.randn(3, 5, 4)
    tapped = extract_features(model, x, layers=[0], normed_layers=[-1])
    first = model.blocks[0](x)
    assert torch.allclose(tapped.tokens[0], first)
    assert torch.allclose(tapped.normed_tokens[1], model.norm(model.blocks[1](first)))
    assert torch.allclose(tapped.final, model.forward_features(x))
    assert tapped.grid_size == (2, 2)  # inferred from 5 - 1 prefix token
    assert _no_hooks_left(model)


def test_hooks_are_removed_when_the_forward_fails(vit):
    with pytest.raises(Exception):
        extract_features(vit, torch.randn(2, 5, 16, 16), layers=[0], hooks=["blocks.0.attn"])  # 5 channels
    assert _no_hooks_left(vit)
    model = _TokenNet()
    with pytest.raises(RuntimeError):
        extract_features(model, torch.randn(3, 5, 7), layers=[0, 1])  # wrong width, fails inside the forward
    assert _no_hooks_left(model)


def test_missing_hook_name_lists_close_matches(vit, images):
    with pytest.raises(ValueError) as info:
        extract_features(vit, images, layers=[], hooks=["blocks.0.atn"])
    assert "'blocks.0.atn'" in str(info.value)
    assert "blocks.0.attn" in str(info.value)


def test_bad_layer_index_names_model_index_and_range(vit, images):
    with pytest.raises(ValueError) as info:
        extract_features(vit, images, layers=[0, 3])
    assert "VisionTransformer" in str(info.value) and "3" in str(info.value) and "-3..2" in str(info.value)
    with pytest.raises(ValueError, match="-4"):
        extract_features(vit, images, layers=[], normed_layers=[-4])


def test_layers_from_model_without_blocks_is_a_clear_error():
    model = nn.Sequential(nn.Linear(2, 2))
    model.forward_features = model.forward
    with pytest.raises(ValueError, match="has no `blocks`.*hooks="):
        extract_features(model, torch.randn(1, 2), layers=[0])
    tapped = extract_features(model, torch.randn(1, 2), layers=[], hooks=["0"])
    assert isinstance(tapped, TappedOutput) and tapped.hooked["0"].shape == (1, 2)


def test_split_prefix_views_and_errors():
    tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)
    prefix, patches = split_prefix(tokens, 2)
    assert torch.equal(prefix, tokens[:, :2]) and torch.equal(patches, tokens[:, 2:])
    assert patches.data_ptr() == tokens[:, 2:].data_ptr()  # a view, no copy
    assert split_prefix(tokens, 0)[0].shape == (2, 0, 3)
    with pytest.raises(ValueError, match="num_prefix_tokens=6"):
        split_prefix(tokens, 6)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        split_prefix(tokens[0], 1)


def test_tapped_model_wrapper_forward_is_extract_features(vit, images):
    wrapper = TappedModel(vit, layers=[0], normed_layers=[-1])
    out = wrapper(images)
    direct = extract_features(vit, images, layers=[0], normed_layers=[-1])
    assert torch.allclose(out.tokens[0], direct.tokens[0]) and torch.allclose(out.final, direct.final)
    assert set(wrapper.state_dict()) == {f"model.{k}" for k in vit.state_dict()}
