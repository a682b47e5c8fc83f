"""Layer-wise learning-rate decay for a model built on a `DownstreamBackbone`, through timm's optimizer factory.

timm's `create_optimizer_v2(model, layer_decay=d)` (`param_groups_layer_decay`, after BEiT) gives each parameter
the lr scale d ** (L - layer), with `layer` from the model's `group_matcher` and L the top layer; it also exempts
`model.no_weight_decay()` names and 1-D parameters from weight decay. A torchvision detector or a segmenter has no
`group_matcher`, so `BackboneLayerGroups` provides one: the student's own layers keep the ids its timm
`group_matcher` gives them (stem 0, block i -> i + 1, ...), and everything else -- the pyramid, the FPN, the RPN,
the RoI and segmentation heads -- is one layer above the last block, trained at the full learning rate. For a
12-block ViT and d = 0.7 that is ViTDet's rule: the last block at 0.7, the patch embedding at 0.7 ** 13.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


class BackboneLayerGroups:
    """Mixin for a module with a `backbone` attribute (a `DownstreamBackbone`): timm's `group_matcher` and
    `no_weight_decay` for the whole model, so `create_optimizer_v2(model, layer_decay=...)` works on it."""

    backbone: nn.Module

    def group_matcher(self, coarse: bool = False) -> Callable[[str], float]:
        # coarse grouping is not offered: layer decay asks for the fine one, and the body's ids come from it
        body_layers = {f"backbone.{name}": float(layer) for name, layer in self.backbone.layer_ids().items()}
        top = max(body_layers.values(), default=-1.0) + 1.0

        def layer_of(name: str) -> float:
            return body_layers.get(name, top)

        return layer_of

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}
