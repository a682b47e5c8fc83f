"""torchvision's Faster R-CNN (detection) and Mask R-CNN (instance segmentation) on a `DownstreamBackbone`.

The detectors are torchvision's own, unchanged: the backbone is the module they take. What is set here is what a
recipe must control so that both the 64-pixel digit scenes and COCO's 1024-pixel images work: the anchor sizes
(default: 8 x each level's stride, torchvision's 32..512 on strides 4..64), the resize bounds `min_size`/`max_size`
(or a `fixed_size`), the input normalisation of the student, and the RoI pooling levels (the backbone's levels
without the extra max-pooled one, as torchvision's FPN detectors use). The box head is torchvision's two-layer MLP
(Faster R-CNN's) or its four-conv-one-fc head (ViTDet's "4conv1fc"), the RPN has one or more 3x3 convs (ViTDet: 2),
and the box and mask heads' convs can be followed by a channel-wise LayerNorm (ViTDet's "LN").
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from timm.layers import LayerNorm2d
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.layer_decay import BackboneLayerGroups
from vitkd.errors import ConfigError


class LayerDecayFasterRCNN(BackboneLayerGroups, FasterRCNN):
    """torchvision `FasterRCNN` with the parameter groups timm's layer decay needs (`BackboneLayerGroups`)."""


class LayerDecayMaskRCNN(BackboneLayerGroups, MaskRCNN):
    """torchvision `MaskRCNN` with the parameter groups timm's layer decay needs (`BackboneLayerGroups`)."""


#: Box heads: torchvision's two-layer MLP, or four convs and one fully connected layer (ViTDet).
BOX_HEADS = ("2mlp", "4conv1fc")
#: Norms after the convs of the box and mask heads.
CONV_NORMS = ("none", "layernorm")


def default_anchor_sizes(strides: Sequence[int]) -> list[int]:
    """One anchor size per level, 8 x its stride (torchvision's 32, 64, 128, 256, 512 for strides 4..64)."""
    return [8 * stride for stride in strides]


def build_detector(backbone: DownstreamBackbone, num_classes: int, masks: bool = False,
                   anchor_sizes: Optional[Sequence[int]] = None,
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int = 800, max_size: int = 1333,
                   fixed_size: Optional[Sequence[int]] = None, image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                   image_std: Sequence[float] = (0.229, 0.224, 0.225), box_head_width: int = 1024,
                   mask_head_width: int = 256, box_head: str = "2mlp", rpn_convs: int = 1,
                   conv_norm: str = "none", **detector_kwargs: Any) -> FasterRCNN:
    """A Faster R-CNN (or with `masks` a Mask R-CNN) on `backbone`.

    Args:
        num_classes: object classes without the background (the detector gets `num_classes + 1`, label 0 being
            torchvision's background).
        anchor_sizes: one size in pixels per backbone level (default `default_anchor_sizes(backbone.strides)`).
        aspect_ratios: anchor height/width ratios, the same on every level.
        min_size, max_size: torchvision's resize of each image (shorter side to `min_size`, longer side at most
            `max_size`); `fixed_size` (H, W) resizes every image to that size instead.
        image_mean, image_std: the normalisation the student was trained with (images come in [0, 1]).
        box_head_width, mask_head_width: width of the box head's fully connected layers and of the mask head's
            four 3x3 convs (torchvision's and the papers' 1024 and 256; smaller for CPU-sized experiments).
        box_head: "2mlp" (two fully connected layers) or "4conv1fc" (four 3x3 convs of the backbone's width, then
            one fully connected layer; ViTDet's).
        rpn_convs: 3x3 convs of the RPN head before its two 1x1 predictors (torchvision 1, ViTDet 2).
        conv_norm: "none" or "layernorm" (channel-wise LayerNorm after each conv of the box and mask heads).
        detector_kwargs: further torchvision arguments (`box_detections_per_img`, `rpn_batch_size_per_image`...).

    Input/output are torchvision's: training takes (list of (3, H, W) images, list of target dicts) and returns
    the loss dict; evaluation returns per image {"boxes" (K, 4) in input pixels, "labels", "scores"(, "masks")}.
    """
    if num_classes < 1:
        raise ConfigError(f"the detector needs at least one object class, got num_classes={num_classes}")
    levels = backbone.level_names
    sizes = list(anchor_sizes) if anchor_sizes is not None else default_anchor_sizes(backbone.strides)
    if len(sizes) != len(levels):
        raise ConfigError(f"downstream.head.anchor_sizes has {len(sizes)} sizes but the backbone has {len(levels)} "
                          f"levels (strides {backbone.strides}); give one size per level")
    anchors = AnchorGenerator(sizes=tuple((int(size),) for size in sizes),
                              aspect_ratios=(tuple(float(ratio) for ratio in aspect_ratios),) * len(levels))
    if box_head not in BOX_HEADS:
        raise ConfigError(f"downstream.head.box_head: unknown box head '{box_head}'; valid: {', '.join(BOX_HEADS)}")
    if conv_norm not in CONV_NORMS:
        raise ConfigError(f"downstream.head.conv_norm: unknown norm '{conv_norm}'; valid: {', '.join(CONV_NORMS)}")
    norm_layer = LayerNorm2d if conv_norm == "layernorm" else None
    pooled = [name for name in levels if name != "pool"]
    channels = backbone.out_channels
    boxes = TwoMLPHead(channels * 7 * 7, box_head_width) if box_head == "2mlp" else \
        FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [box_head_width], norm_layer=norm_layer)
    common = dict(
        min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=rpn_convs),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=7, sampling_ratio=2),
        box_head=boxes,
        box_predictor=FastRCNNPredictor(box_head_width, num_classes + 1),
        fixed_size=tuple(fixed_size) if fixed_size is not None else None, **detector_kwargs)
    if masks:
        return LayerDecayMaskRCNN(
            backbone, mask_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(channels, [mask_head_width] * 4, dilation=1, norm_layer=norm_layer),
            mask_predictor=MaskRCNNPredictor(mask_head_width, mask_head_width, num_classes + 1), **common)
    return LayerDecayFasterRCNN(backbone, **common)
