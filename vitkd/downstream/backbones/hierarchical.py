"""A hierarchical timm student (TinyViT, Swin, ResNet, ConvNeXt...) as a backbone: stage outputs into torchvision's
`FeaturePyramidNetwork`.

The stage outputs come from the model's `forward_intermediates`, the mechanism timm's `features_only=True` uses
for these models (its "getter" feature wrapper), called on the model as built and loaded: a `features_only` model
is a fresh wrapper whose parameter names differ from the classification checkpoint's, so the student's weights
could not be loaded into it strictly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.errors import ConfigError


def default_out_indices(feature_info: list[dict]) -> list[int]:
    """The last feature of each stride from 4 on (a stem at stride 2 is too fine and too wide to be worth it)."""
    last_of_stride: dict[int, int] = {}
    for index, info in enumerate(feature_info):
        if info["reduction"] >= 4:
            last_of_stride[info["reduction"]] = index
    return sorted(last_of_stride.values())


class HierarchicalBackbone(DownstreamBackbone):
    """Stage outputs of a timm model -> FPN (top-down path, 3x3 output convs) -> OrderedDict.

    Args:
        model: a timm model with `feature_info` and `forward_intermediates` (modified in place: head removed,
            stages after the last used one pruned).
        out_indices: which features (indices into `model.feature_info`) feed the FPN; default: the last feature of
            each stride from 4 on.
        out_channels: channels of every FPN level.
        extra_pool_level: add torchvision's max-pooled "pool" level after the coarsest one.

    Shapes: images (B, 3, H, W) -> OrderedDict "0", "1", ... (, "pool") of (B, out_channels, H / s, W / s) for
    the strides s of the chosen stages (4, 8, 16, 32 for TinyViT; 64 for "pool").
    """

    def __init__(self, model: nn.Module, out_indices: Optional[Sequence[int]] = None, out_channels: int = 256,
                 extra_pool_level: bool = True) -> None:
        super().__init__()
        name = type(model).__name__
        feature_info = getattr(model, "feature_info", None)
        if not feature_info or not hasattr(model, "forward_intermediates"):
            raise ConfigError(f"model {name} does not describe its stages (timm feature_info and "
                              f"forward_intermediates), so it cannot feed a feature pyramid; use a timm model that "
                              f"supports features_only=True")
        feature_info = list(feature_info)
        indices = list(out_indices) if out_indices is not None else default_out_indices(feature_info)
        outside = [index for index in indices if not 0 <= index < len(feature_info)]
        if not indices or outside:
            raise ConfigError(f"downstream.backbone.out_indices {indices} must name features of {name} (valid: 0.."
                              f"{len(feature_info) - 1}, strides {[info['reduction'] for info in feature_info]})")
        self.out_indices = model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True) \
            if hasattr(model, "prune_intermediate_layers") else indices
        self.body = model
        self.fpn = FeaturePyramidNetwork([feature_info[index]["num_chs"] for index in indices], out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool_level else None)
        self.out_channels = out_channels
        self.strides = [feature_info[index]["reduction"] for index in indices]
        self.level_names = [str(level) for level in range(len(indices))]
        if extra_pool_level:
            self.strides.append(self.strides[-1] * 2)
            self.level_names.append("pool")

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.body.forward_intermediates(images, indices=self.out_indices, intermediates_only=True)
        return self.fpn(OrderedDict((str(level), features) for level, features in enumerate(stages)))
