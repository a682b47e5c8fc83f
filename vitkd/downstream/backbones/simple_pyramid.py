"""ViTDet's simple feature pyramid (Li et al. 2022): a multi-scale pyramid from one stride-16 ViT feature map.

A plain ViT has a single scale; ViTDet shows that building the pyramid from its last map alone (deconvolutions up,
pooling down, no top-down FPN path) is enough for detection. Per level: the rescaling, then a 1x1 and a 3x3 conv
to `out_channels`, each followed by a channel-wise LayerNorm; an extra max-pooled level (torchvision's
`LastLevelMaxPool`) completes the five levels torchvision's RPN and RoI heads expect.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

#: Rescaling factors of ViTDet (strides 4, 8, 16, 32 from a stride-16 map).
VITDET_SCALES: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
#: The strides the default pyramid has, whatever the patch size (those of ViTDet and of torchvision's FPNs).
PYRAMID_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


def scales_for_patch(patch_size: int, strides: Sequence[int] = PYRAMID_STRIDES) -> tuple[float, ...]:
    """Rescaling factors that bring a stride-`patch_size` map to `strides` (16 -> ViTDet's 4, 2, 1, 0.5)."""
    return tuple(patch_size / stride for stride in strides)


def _rescale(scale: float, channels: int) -> tuple[nn.Module, int]:
    """The layers that resize a map by `scale` (a power of two) and the channel count they output.

    Up by 2^k: k 2x2 transposed convs halving the channels, LayerNorm + GELU between them (ViTDet's x4 and x2).
    Down by 2^k: one max-pool of kernel and stride 2^k (ViTDet's x0.5). 1: the map itself."""
    exponent = math.log2(scale)
    if exponent != round(exponent):
        raise ValueError(f"pyramid scale {scale} is not a power of two (ViTDet's are {VITDET_SCALES})")
    exponent = int(round(exponent))
    if exponent == 0:
        return nn.Identity(), channels
    if exponent < 0:
        return nn.MaxPool2d(kernel_size=2 ** -exponent, stride=2 ** -exponent), channels
    if channels % 2 ** exponent:
        raise ValueError(f"scale {scale:g} halves the {channels} channels {exponent} times; use a width divisible by "
                         f"{2 ** exponent}")
    layers: list[nn.Module] = []
    for step in range(exponent):
        if step:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    return (layers[0] if len(layers) == 1 else nn.Sequential(*layers)), channels


class SimpleFeaturePyramid(nn.Module):
    """Pyramid levels from one feature map.

    Args:
        in_channels: channels D of the input map (the ViT's embedding width; divisible by 4 when scale 4 is used).
        in_stride: stride of the input map relative to the image (the ViT's patch size).
        scales: rescaling factors (powers of two), finest first (default ViTDet's 4, 2, 1, 0.5; see
            `scales_for_patch` for other patch sizes).
        out_channels: channels of every level (256 in torchvision's detectors).
        extra_pool_level: add a max-pooled coarsest level named "pool" (stride x2 of the last one).

    Shapes: (B, D, h, w) -> OrderedDict "0", "1", ... (, "pool") of (B, out_channels, h * s, w * s); a 0.5 level
    has floor(h / 2) rows. `level_names` lists the dict's keys, `strides` each level's stride relative to the image.
    """

    def __init__(self, in_channels: int, in_stride: int, scales: Sequence[float] = VITDET_SCALES,
                 out_channels: int = 256, extra_pool_level: bool = True) -> None:
        super().__init__()
        if not scales:
            raise ValueError("the pyramid needs at least one scale")
        self.out_channels = out_channels
        self.stages = nn.ModuleList()
        self.strides: list[int] = []
        for scale in scales:
            rescale, channels = _rescale(float(scale), in_channels)
            self.stages.append(nn.Sequential(
                rescale,
                nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ))
            self.strides.append(int(in_stride / scale))
        self.level_names = [str(index) for index in range(len(scales))]
        self.extra_level = LastLevelMaxPool() if extra_pool_level else None
        if self.extra_level is not None:
            self.strides.append(self.strides[-1] * 2)
            self.level_names.append("pool")

    def forward(self, features: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = [stage(features) for stage in self.stages]  # each (B, out_channels, h * scale, w * scale)
        names = [str(index) for index in range(len(levels))]
        if self.extra_level is not None:
            levels, names = self.extra_level(levels, [], names)  # appends "pool": max-pool k1 s2 of the last
        return OrderedDict(zip(names, levels))
