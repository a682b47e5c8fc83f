"""What every downstream backbone shares: torchvision's backbone contract, layer ids for layer-wise lr decay, and
freezing the pretrained body.

torchvision's detectors accept any module that returns an `OrderedDict[str, Tensor]` of feature maps and has an
`out_channels` attribute (`models/detection/backbone_utils.py`, `BackboneWithFPN`); the backbones here are such
modules, built from a timm `body` (the student, classifier head removed) and a neck (pyramid or FPN).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.models import group_parameters
from torch import nn


class DownstreamBackbone(nn.Module):
    """Base class: a timm `body` plus a neck, images (B, 3, H, W) in -> OrderedDict of (B, out_channels, h, w).

    Attributes:
        body: the timm student (classifier head removed); `timm_model` is the module holding its `group_matcher`.
        out_channels: channels of every output level (torchvision reads it).
        level_names: the output dict's keys, finest first ("0", "1", ..., and "pool" for the extra max-pooled level).
        strides: each output level's stride relative to the input image, in the order of `level_names`.
        frozen: the body's weights are fixed (`freeze_body`); it stays in eval mode even when the backbone trains,
            so its dropout, drop path and BatchNorm statistics stay as pretrained.
    """

    body: nn.Module
    out_channels: int
    strides: list[int]
    level_names: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    @property
    def timm_model(self) -> tuple[nn.Module, str]:
        """(the timm model with `group_matcher`, its parameter-name prefix inside this module)."""
        return self.body, "body."

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        raise NotImplementedError

    def freeze_body(self) -> None:
        """Train only the neck (and whatever head sits on top): linear probing of the pyramid's input."""
        self.frozen = True
        for parameter in self.body.parameters():
            parameter.requires_grad_(False)
        self.body.eval()

    def train(self, mode: bool = True) -> "DownstreamBackbone":
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def layer_ids(self) -> dict[str, int]:
        """Parameter name (relative to this module) -> depth of the layer it belongs to, from the timm model's own
        `group_matcher` (stem 0, then one id per block/stage, the final norm with the last block). The neck's
        parameters are not listed: they sit above every body layer."""
        model, prefix = self.timm_model
        layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        return {prefix + name: layer for name, layer in layers.items()}

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) the timm model exempts from weight decay (position embedding, tokens)."""
        model, prefix = self.timm_model
        names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        own = {name for name, _ in model.named_parameters()}
        return {prefix + name for name in names if name in own}
