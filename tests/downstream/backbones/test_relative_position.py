"""ViTDet's decomposed relative position biases on timm attention: equal to timm's SAM/ViTDet attention with the
same weights and tables, no change at their zero initialisation, and trained through the backbone."""

import pytest
import timm
import torch
from timm.models.vision_transformer_sam import Attention as SamAttention

from vitkd.downstream.backbones import build_backbone
from vitkd.downstream.backbones.window_attention import GridAttention
from vitkd.errors import ConfigError

from tiny_students import tiny_tinyvit, tiny_vit


def _filled(grid_attention):
    torch.manual_seed(1)
    with torch.no_grad():
        grid_attention.rel_pos.rel_pos_h.normal_(std=0.5)
        grid_attention.rel_pos.rel_pos_w.normal_(std=0.5)
    return grid_attention


def _sam_copy(vit_attention, rel_pos, size):
    """timm's SAM (ViTDet) attention with the same projections and tables: the reference implementation."""
    sam = SamAttention(32, num_heads=2, qkv_bias=True, use_rel_pos=True, input_size=size).eval()
    with torch.no_grad():
        sam.qkv.load_state_dict(vit_attention.qkv.state_dict())
        sam.proj.load_state_dict(vit_attention.proj.state_dict())
        sam.rel_pos_h.copy_(rel_pos.rel_pos_h)
        sam.rel_pos_w.copy_(rel_pos.rel_pos_w)
    return sam


def test_global_attention_with_biases_equals_timm_sam_attention():
    attention = tiny_vit().blocks[0].attn.eval()
    ours = _filled(GridAttention(attention, 0, rel_pos_grid=(4, 5))).eval()
    assert ours.rel_pos.rel_pos_h.shape == (7, 16) and ours.rel_pos.rel_pos_w.shape == (9, 16)  # 2 * size - 1, head dim
    grid = torch.randn(2, 4, 5, 32)
    with torch.no_grad():
        expected = _sam_copy(attention, ours.rel_pos, (4, 5))(grid)
        torch.testing.assert_close(ours(grid), expected, rtol=1e-5, atol=1e-5)
        plain = GridAttention(attention, 0)(grid)
        assert (ours(grid) - plain).abs().max() > 0.1 * plain.abs().max()  # the biases do change the attention


def test_window_blocks_size_their_tables_for_the_window_and_match_sam_per_window():
    attention = tiny_vit().blocks[0].attn.eval()
    ours = _filled(GridAttention(attention, 2, rel_pos_grid=(4, 4))).eval()
    assert ours.rel_pos.rel_pos_h.shape == (3, 16)  # a 2 x 2 window: offsets -1..1
    grid = torch.randn(1, 4, 4, 32)
    sam = _sam_copy(attention, ours.rel_pos, (2, 2))
    with torch.no_grad():
        out = ours(grid)
        for top in (0, 2):
            for left in (0, 2):
                window = grid[:, top:top + 2, left:left + 2]
                torch.testing.assert_close(out[:, top:top + 2, left:left + 2], sam(window), rtol=1e-5, atol=1e-5)


def test_zero_tables_change_nothing_and_the_backbone_trains_them():
    biased = build_backbone(tiny_vit(), out_channels=16, fine_tune_size=(48, 80), window_size=2, global_blocks=[1],
                            rel_pos=True).eval()
    tables = {name: parameter for name, parameter in biased.named_parameters() if "rel_pos_" in name}
    assert sorted(tables) == [f"body.blocks.{index}.attn.rel_pos.rel_pos_{axis}" for index in (0, 1)
                              for axis in "hw"]
    assert tables["body.blocks.0.attn.rel_pos.rel_pos_h"].shape == (3, 16)  # window block: 2 x 2 windows
    assert tables["body.blocks.1.attn.rel_pos.rel_pos_w"].shape == (9, 16)  # global block: the 3 x 5 fine-tune grid
    images = torch.rand(2, 3, 48, 80)
    windowed = build_backbone(tiny_vit(), out_channels=16, fine_tune_size=(48, 80), window_size=2,
                              global_blocks=[1])
    windowed.load_state_dict({k: v for k, v in biased.state_dict().items() if "rel_pos_" not in k})
    with torch.no_grad():
        for name, level in biased(images).items():
            torch.testing.assert_close(level, windowed.eval()(images)[name])  # zero tables: no bias at all
    biased.train()
    sum(level.sum() for level in biased(torch.rand(1, 3, 40, 56)).values()).backward()  # another size: resampled
    assert all(table.grad is not None and table.grad.abs().sum() > 0 for table in tables.values())


def test_rel_pos_is_refused_for_hierarchical_students():
    with pytest.raises(ConfigError, match=r"downstream\.backbone\.rel_pos applies to plain ViT backbones only"):
        build_backbone(tiny_tinyvit(), rel_pos=True)


def test_rel_pos_is_refused_for_attention_without_one_qkv_projection():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16, embed_dim=32,
                            depth=1, num_heads=2)
    del vit.blocks[0].attn.qkv
    with pytest.raises(ConfigError, match=r"downstream\.backbone\.rel_pos needs timm's standard Attention"):
        GridAttention(vit.blocks[0].attn, 0, rel_pos_grid=(2, 2))
