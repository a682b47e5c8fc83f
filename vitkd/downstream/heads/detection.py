"""torchvision's Faster R-CNN (detection) and Mask R-CNN (instance segmentation) on a `DownstreamBackbone`.

The detectors are torchvision's own, unchanged: the backbone is the module they take. What is set here is what a
recipe must control so that both the 64-pixel digit scenes and COCO's 1024-pixel images work: the anchor sizes
(default: 8 x each level's stride, torchvision's 32..512 on strides 4..64), the resize bounds `min_size`/`max_size`
(or a `fixed_size`), the input normalisation of the student, and the RoI pooling levels (the backbone's levels
without the extra max-pooled one, as torchvision's FPN detectors use).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.layer_decay import BackboneLayerGroups
from vitkd.errors import ConfigError


class LayerDecayFasterRCNN(BackboneLayerGroups, FasterRCNN):
    """torchvision `FasterRCNN` with the parameter groups timm's layer decay needs (`BackboneLayerGroups`)."""


class LayerDecayMaskRCNN(BackboneLayerGroups, MaskRCNN):
    """torchvision `MaskRCNN` with the parameter groups timm's layer decay needs (`BackboneLayerGroups`)."""


def default_anchor_sizes(strides: Sequence[int]) -> list[int]:
    """One anchor size per level, 8 x its stride (torchvision's 32, 64, 128, 256, 512 for strides 4..64)."""
    return [8 * stride for stride in strides]


def build_detector(backbone: DownstreamBackbone, num_classes: int, masks: bool = False,
                   anchor_sizes: Optional[Sequence[int]] = None,
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int = 800, max_size: int = 1333,
                   fixed_size: Optional[Sequence[int]] = None, image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                   image_std: Sequence[float] = (0.229, 0.224, 0.225), box_head_width: int = 1024,
                   mask_head_width: int = 256, **detector_kwargs: Any) -> FasterRCNN:
    """A Faster R-CNN (or with `masks` a Mask R-CNN) on `backbone`.

    Args:
        num_classes: object classes without the background (the detector gets `num_classes + 1`, label 0 being
            torchvision's background).
        anchor_sizes: one size in pixels per backbone level (default `default_anchor_sizes(backbone.strides)`).
        aspect_ratios: anchor height/width ratios, the same on every level.
        min_size, max_size: torchvision's resize of each image (shorter side to `min_size`, longer side at most
            `max_size`); `fixed_size` (H, W) resizes every image to that size instead.
        image_mean, image_std: the normalisation the student was trained with (images come in [0, 1]).
        box_head_width, mask_head_width: width of the box head's two fully connected layers and of the mask head's
            four 3x3 convs (torchvision's and the papers' 1024 and 256; smaller for CPU-sized experiments).
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
    pooled = [name for name in levels if name != "pool"]
    channels = backbone.out_channels
    common = dict(
        min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, box_head_width),
        box_predictor=FastRCNNPredictor(box_head_width, num_classes + 1),
        fixed_size=tuple(fixed_size) if fixed_size is not None else None, **detector_kwargs)
    if masks:
        return LayerDecayMaskRCNN(
            backbone, mask_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(channels, [mask_head_width] * 4, dilation=1),
            mask_predictor=MaskRCNNPredictor(mask_head_width, mask_head_width, num_classes + 1), **common)
    return LayerDecayFasterRCNN(backbone, **common)
