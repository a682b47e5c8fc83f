"""A semantic segmenter: a `DownstreamBackbone` and a head (Semantic FPN or linear on tokens), logits at input size."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.layer_decay import BackboneLayerGroups
from vitkd.downstream.heads.linear import LinearTokenHead
from vitkd.downstream.heads.semantic_fpn import SemanticFPNHead
from vitkd.errors import ConfigError

SegmentationHeadName = Literal["semantic_fpn", "linear"]
SEGMENTATION_HEADS: tuple[str, ...] = ("semantic_fpn", "linear")


class SemanticSegmenter(BackboneLayerGroups, nn.Module):
    """images in [0, 1] -> normalised -> backbone -> head -> logits bilinearly upsampled to the input size.

    Args:
        backbone: the feature extractor (`DownstreamBackbone`).
        head: maps the backbone's OrderedDict to (B, num_classes, h, w) logits.
        image_mean, image_std: the student's input normalisation.

    Shapes: images (B, 3, H, W) float in [0, 1] -> logits (B, num_classes, H, W).
    """

    def __init__(self, backbone: DownstreamBackbone, head: nn.Module, image_mean: Sequence[float],
                 image_std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        normalised = (images - self.image_mean) / self.image_std
        logits = self.head(self.backbone(normalised))  # (B, C, h, w)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(backbone: DownstreamBackbone, num_classes: int, head: SegmentationHeadName = "semantic_fpn",
                    image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                    image_std: Sequence[float] = (0.229, 0.224, 0.225), channels: int = 128,
                    dropout: float = 0.1) -> SemanticSegmenter:
    """A segmenter with the Semantic FPN head on the backbone's levels (the max-pooled "pool" level left out) or a
    linear head on its tokens (a plain-ViT backbone built with `pyramid=False`)."""
    if num_classes < 1:
        raise ConfigError(f"segmentation needs at least one class, got num_classes={num_classes}")
    if head == "semantic_fpn":
        levels = [(name, stride) for name, stride in zip(backbone.level_names, backbone.strides) if name != "pool"]
        module: nn.Module = SemanticFPNHead(backbone.out_channels, [name for name, _ in levels],
                                            [stride for _, stride in levels], num_classes, channels, dropout)
    elif head == "linear":
        if len(backbone.level_names) != 1:
            raise ConfigError("downstream.head.name: linear reads a plain ViT's tokens; build the backbone without its "
                              "pyramid (downstream.backbone.pyramid: false)")
        module = LinearTokenHead(backbone.out_channels, num_classes, backbone.level_names[0])
    else:
        raise ConfigError(f"downstream.head.name: unknown segmentation head '{head}'; valid heads: "
                          f"{', '.join(SEGMENTATION_HEADS)}")
    return SemanticSegmenter(backbone, module, image_mean, image_std)
