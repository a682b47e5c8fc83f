"""The Semantic FPN head (Kirillov et al. 2019, "Panoptic Feature Pyramid Networks"): every pyramid level brought
to stride 4 and summed, then a 1x1 classifier.

Per level at stride s (4, 8, 16, 32): log2(s / 4) stages of 3x3 conv + GroupNorm + ReLU + 2x bilinear upsampling
(one conv stage without upsampling at stride 4). Kirillov et al. use 128 channels and GroupNorm with 32 groups.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitkd.errors import ConfigError


def _conv_stage(in_channels: int, channels: int, upsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, channels), channels),
        nn.ReLU(inplace=True),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticFPNHead(nn.Module):
    """Pyramid levels -> per-class logits at the finest level's stride.

    Args:
        in_channels: channels of every input level (the backbone's `out_channels`).
        level_names, strides: the levels to use and their strides (powers of two times the finest one; the
            extra max-pooled "pool" level is left out by the caller).
        num_classes: output classes.
        channels: width of the upsampling branches (128 in the paper).
        dropout: dropout before the classifier.

    Shapes: OrderedDict of (B, in_channels, H / s, W / s) -> (B, num_classes, H / s0, W / s0), s0 the finest
    stride; levels are cropped/padded to the finest level's size after upsampling (sizes that are not exact
    multiples round up at coarse levels).
    """

    def __init__(self, in_channels: int, level_names: Sequence[str], strides: Sequence[int], num_classes: int,
                 channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if len(level_names) != len(strides) or not level_names:
            raise ConfigError(f"the Semantic FPN head needs one stride per level, got levels {list(level_names)} and "
                              f"strides {list(strides)}")
        finest = min(strides)
        self.level_names = list(level_names)
        self.branches = nn.ModuleList()
        for stride in strides:
            doublings = math.log2(stride / finest)
            if doublings != int(doublings):
                raise ConfigError(f"Semantic FPN levels must be powers of two apart, got strides {list(strides)}")
            stages = [_conv_stage(in_channels, channels, upsample=doublings > 0)]
            stages += [_conv_stage(channels, channels, upsample=True) for _ in range(int(doublings) - 1)]
            self.branches.append(nn.Sequential(*stages))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.output_stride = finest

    def forward(self, features: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
        finest = features[self.level_names[0]].shape[-2:]
        total = None
        for name, branch in zip(self.level_names, self.branches):
            level = branch(features[name])  # (B, channels, ~H / s0, ~W / s0)
            if level.shape[-2:] != finest:  # coarse levels of sizes that are not multiples of their stride
                level = F.interpolate(level, size=finest, mode="bilinear", align_corners=False)
            total = level if total is None else total + level
        return self.classifier(self.dropout(total))  # (B, num_classes, H / s0, W / s0)
