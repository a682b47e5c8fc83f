"""A linear head on the stride-16 tokens of a plain ViT: the simplest baseline of Segmenter (Strudel et al. 2021),
which shows how much of a segmentation result the backbone's tokens carry by themselves."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class LinearTokenHead(nn.Module):
    """One linear map per token to class logits (a 1x1 conv on the token grid).

    Args:
        in_channels: token width D (the backbone's `out_channels` when built with `pyramid=False`).
        num_classes: output classes.
        level: the backbone output to read (the tokens are level "0").

    Shapes: OrderedDict with level (B, D, h, w) -> (B, num_classes, h, w), at the tokens' stride.
    """

    def __init__(self, in_channels: int, num_classes: int, level: str = "0") -> None:
        super().__init__()
        self.level = level
        # a BatchNorm before the linear map, as DINOv2's linear segmentation probe has: a ViT's token channels are
        # far from zero-centred and unit-scaled, which a single linear layer trains poorly on; still linear at eval
        self.norm = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.norm(features[self.level]))
