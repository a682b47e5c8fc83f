import pytest
import timm
import torch
import torch.nn.functional as F

from vitkd.downstream.backbones import PlainViTBackbone, build_backbone
from vitkd.errors import ConfigError

from tiny_students import tiny_vit, tiny_tinyvit


@pytest.mark.parametrize("size, grid", [((64, 64), (4, 4)), ((70, 50), (5, 4)), ((96, 128), (6, 8))])
def test_pyramid_levels_and_strides(size, grid):
    backbone = build_backbone(tiny_vit(), out_channels=24)
    assert backbone.strides == [4, 8, 16, 32, 64] and backbone.out_channels == 24
    levels = backbone(torch.randn(2, 3, *size))
    assert list(levels) == backbone.level_names == ["0", "1", "2", "3", "pool"]
    h, w = grid  # ceil(side / 16): 70x50 is padded to 80x64
    expected = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (h // 2, w // 2), ((h // 2 + 1) // 2, (w // 2 + 1) // 2)]
    assert [tuple(level.shape[-2:]) for level in levels.values()] == expected
    assert all(level.shape[:2] == (2, 24) for level in levels.values())


def test_input_is_zero_padded_to_the_patch_multiple():
    backbone = build_backbone(tiny_vit(), pyramid=False).eval()
    image = torch.randn(1, 3, 70, 50)
    tokens = backbone(image)["0"]
    assert tokens.shape == (1, 32, 5, 4) and backbone.strides == [16]
    torch.testing.assert_close(tokens, backbone(F.pad(image, (0, 14, 0, 10)))["0"])


def test_matches_the_vit_at_its_own_size_without_prefix_tokens():
    """At the trained size, with global attention, the grid is timm's own forward of the patch tokens (position
    embedding not resampled), only without the class token in attention."""
    vit = tiny_vit(class_token=False, global_pool="avg").eval()
    expected = vit.forward_features(torch.ones(1, 3, 64, 64) * 0.3)  # (1, 16, D), final norm applied
    backbone = build_backbone(vit, pyramid=False).eval()
    tokens = backbone(torch.ones(1, 3, 64, 64) * 0.3)["0"]  # (1, D, 4, 4)
    torch.testing.assert_close(tokens.flatten(2).transpose(1, 2), expected)


def test_prefix_tokens_are_removed():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, embed_dim=32, depth=2,
                             num_heads=2)
    backbone = build_backbone(deit)
    names = {name for name, _ in backbone.named_parameters()}
    assert not {"body.cls_token", "body.dist_token"} & names
    assert backbone.body.pos_embed.shape == (1, 16, 32)  # the two prefix rows dropped, 4x4 grid kept
    assert not any("head" in name for name in names)
    levels = backbone(torch.randn(1, 3, 48, 80))
    levels["0"].sum().backward()  # every remaining parameter of the body gets a gradient (none unused)
    assert all(p.grad is not None for n, p in backbone.named_parameters() if n.startswith("body."))


def test_fine_tune_size_resamples_the_position_embedding_once():
    backbone = build_backbone(tiny_vit(), fine_tune_size=(128, 96))
    assert backbone.body.pos_embed.shape == (1, 8 * 6, 32)
    assert backbone(torch.randn(1, 3, 128, 96))["2"].shape[-2:] == (8, 6)


def test_block_index_prunes_later_blocks():
    backbone = build_backbone(tiny_vit(depth=3), block_index=1)
    assert len(backbone.body.blocks) == 2
    with pytest.raises(ConfigError, match="downstream.backbone.block_index 3 is outside the model's 3 blocks"):
        build_backbone(tiny_vit(depth=3), block_index=3)


def test_window_attention_backbone_runs_on_odd_grids():
    backbone = build_backbone(tiny_vit(depth=4), window_size=2, global_blocks=[3])
    assert backbone.global_blocks == [3]
    assert backbone(torch.randn(1, 3, 80, 112))["2"].shape[-2:] == (5, 7)  # 5x7 grid, 2x2 windows padded


def test_refuses_models_that_are_not_plain_vits():
    with pytest.raises(ConfigError, match="plain-ViT backbone needs a timm VisionTransformer"):
        PlainViTBackbone(tiny_tinyvit())
    with pytest.raises(ConfigError, match="downstream.backbone.window_size applies to plain ViT backbones only"):
        build_backbone(tiny_tinyvit(), window_size=7)
