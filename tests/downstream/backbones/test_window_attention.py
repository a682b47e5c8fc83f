import pytest
import torch

from vitkd.downstream.backbones.window_attention import (GridAttention, evenly_spaced_global_blocks,
                                                         grid_attention_blocks, window_partition, window_unpartition)
from vitkd.errors import ConfigError

from tiny_students import tiny_vit


def test_evenly_spaced_global_blocks_match_vitdet():
    assert evenly_spaced_global_blocks(12) == [2, 5, 8, 11]  # ViTDet's ViT-B
    assert evenly_spaced_global_blocks(24) == [5, 11, 17, 23]  # ViTDet's ViT-L
    assert evenly_spaced_global_blocks(2) == [0, 1]  # fewer blocks than global ones: all global


def test_partition_round_trip_with_padding():
    grid = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).view(2, 5, 3, 4)  # (B, H, W, D), H, W not multiples
    windows, padded = window_partition(grid, 2, 2)
    assert padded == (6, 4) and windows.shape == (2 * 3 * 2, 4, 4)
    # the first window of the first image holds tokens (0,0), (0,1), (1,0), (1,1) in row-major order
    assert torch.equal(windows[0], torch.stack([grid[0, 0, 0], grid[0, 0, 1], grid[0, 1, 0], grid[0, 1, 1]]))
    # the last window of an image is the padded corner: token (4, 2) and three zero tokens
    assert torch.equal(windows[5][0], grid[0, 4, 2]) and not windows[5][1:].any()
    assert torch.equal(window_unpartition(windows, 2, 2, padded, (5, 3)), grid)


def _vit_attention():
    return tiny_vit().blocks[0].attn.eval()


def test_window_covering_the_grid_equals_global_attention():
    attention = _vit_attention()
    grid = torch.randn(2, 4, 4, 32)
    global_out = GridAttention(attention, 0)(grid)
    expected = attention(grid.reshape(2, 16, 32)).reshape(2, 4, 4, 32)
    torch.testing.assert_close(global_out, expected)
    torch.testing.assert_close(GridAttention(attention, 4)(grid), global_out)  # window == grid
    torch.testing.assert_close(GridAttention(attention, 14)(grid), global_out)  # window > grid: clipped to it


def test_window_attention_only_sees_its_window():
    attention = _vit_attention()
    grid = torch.randn(1, 4, 4, 32)
    changed = grid.clone()
    changed[0, 3, 3] += 1.0  # a token of the bottom-right 2x2 window
    windowed = GridAttention(attention, 2)
    before, after = windowed(grid), windowed(changed)
    torch.testing.assert_close(after[0, :2], before[0, :2])  # top windows: untouched
    torch.testing.assert_close(after[0, 2:, :2], before[0, 2:, :2])  # bottom-left window: untouched
    assert not torch.allclose(after[0, 2, 2], before[0, 2, 2])  # same window: changed
    global_attention = GridAttention(attention, 0)
    assert not torch.allclose(global_attention(changed)[0, 0, 0], global_attention(grid)[0, 0, 0])


def test_grid_attention_blocks_sets_windows_and_refuses_bad_indices():
    vit = tiny_vit(depth=4)
    assert grid_attention_blocks(vit.blocks, window_size=2, global_blocks=[1, 3]) == [1, 3]
    assert [block.attn.window_size for block in vit.blocks] == [2, 0, 2, 0]
    with pytest.raises(ConfigError, match=r"downstream\.backbone\.global_blocks \[4\].*valid: 0\.\.3"):
        grid_attention_blocks(tiny_vit(depth=4).blocks, window_size=2, global_blocks=[0, 4])
    with pytest.raises(ValueError, match="already"):
        grid_attention_blocks(vit.blocks)
