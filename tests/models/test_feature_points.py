"""Feature points: block indices and hooked module names, and the layouts `patch_tokens` reads them in."""

import pytest
import torch
from torch import nn

from vitkd.models.feature_points import FeaturePoint, patch_tokens, probe_feature_shapes, resolve_feature_points


class ChannelsLastStage(nn.Module):
    """A model whose stage returns (B, H, W, C), as Swin-style stages do (timm's forward_features contract)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=4, stride=4)
        self.stage = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.conv(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(1, 2))


def test_nchw_map_becomes_row_major_tokens():
    feature_map = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)  # (B, C, H, W)
    tokens, grid = patch_tokens(feature_map, None, 0)
    assert grid == (2, 4) and tokens.shape == (2, 8, 3)
    # token (row 1, col 2) is cell 1 * 4 + 2 = 6 and holds that cell's 3 channels
    assert torch.equal(tokens[1, 6], feature_map[1, :, 1, 2])


def test_nhwc_suffix_reads_channels_last_maps_the_right_way_round():
    model = ChannelsLastStage()
    (point,) = resolve_feature_points(["stage:nhwc"], model, "teacher_layers")
    assert point == FeaturePoint(module="stage", channels_last=True) and "(NHWC)" in point.describe()
    (shape,) = probe_feature_shapes(model, [point], img_size=16)
    assert shape.width == 6 and shape.grid == (4, 4)
    feature_map = torch.randn(2, 4, 4, 6)  # (B, H, W, C)
    tokens, grid = patch_tokens(feature_map, None, 0, channels_last=True)
    assert grid == (4, 4) and torch.equal(tokens[0, 1 * 4 + 3], feature_map[0, 1, 3])
    # without the suffix the same module reads as 4 channels on a 4x6 grid: the reason the suffix is required
    (unmarked,) = resolve_feature_points(["stage"], model, "teacher_layers")
    assert probe_feature_shapes(model, [unmarked], img_size=16)[0].width == 4


def test_unknown_module_with_suffix_names_the_module():
    with pytest.raises(ValueError, match=r"teacher_layers: ChannelsLastStage has no module named 'stagex'"):
        resolve_feature_points(["stagex:nhwc"], ChannelsLastStage(), "teacher_layers")
