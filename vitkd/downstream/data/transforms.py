"""Augmentation for detection and segmentation, built from `torchvision.transforms.v2`, which moves boxes and masks
with the image (every geometric step below is torchvision's own).

Detection (ViTDet's large-scale jitter): the image is scaled to fit a `size` x `size` square times a factor drawn
uniformly from `scale_range` (`v2.ScaleJitter`), flipped horizontally with probability `hflip_prob`, then cropped
or padded (zeros, at a random offset) to exactly `size` x `size`; boxes the crop cut to under one pixel are removed
with their labels and masks (`v2.SanitizeBoundingBoxes`).

Segmentation (the mmsegmentation ADE20K recipe): the image's shorter side is resized to a random length in
`size * scale_range` (`v2.RandomResize`), cropped or padded to `size` x `size` (images with zeros, masks with
`ignore_index`, so padding counts in no loss), and flipped. mmsegmentation's retry of crops dominated by one class
(`cat_max_ratio`) and its photometric distortion are not part of it.

Evaluation transforms change no geometry: images keep their own size. torchvision's detectors resize inside the
model and return boxes and masks at the input's size, which is what COCO evaluation compares with; segmentation is
scored at the annotation's resolution (`vitkd.downstream.data.collate.SegmentationCollate` pads a batch of
different sizes). Nothing here normalises pixels: images stay in [0, 1] (torchvision's detectors normalise inside).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vitkd.errors import ConfigError


def detection_transforms(train: bool, size: int, scale_range: Sequence[float] = (0.1, 2.0),
                         hflip_prob: float = 0.5) -> v2.Transform:
    """`transform(image, target) -> (image, target)` for `CocoDataset` items; training output is `size` x `size`."""
    low, high = _checked(size, scale_range, hflip_prob)
    if not train:
        return v2.ToDtype(torch.float32, scale=True)  # float images pass unchanged; uint8 ones become [0, 1]
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.ScaleJitter(target_size=(size, size), scale_range=(low, high), antialias=True),
        v2.RandomHorizontalFlip(p=hflip_prob),
        v2.RandomCrop((size, size), pad_if_needed=True, fill=0),  # instance masks pad with 0 (not the object)
        v2.SanitizeBoundingBoxes(min_size=1.0),
    ])


def segmentation_transforms(train: bool, size: int, scale_range: Sequence[float] = (0.5, 2.0),
                            hflip_prob: float = 0.5, ignore_index: int = 255) -> v2.Transform:
    """`transform(image, mask) -> (image, mask)` for `SemanticFolder` items; training output is `size` x `size`."""
    low, high = _checked(size, scale_range, hflip_prob)
    if not train:
        return v2.ToDtype(torch.float32, scale=True)
    shortest, longest = max(1, round(size * low)), max(1, round(size * high))
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomResize(min_size=shortest, max_size=longest + 1, antialias=True),  # shorter side in [shortest, longest]
        v2.RandomCrop((size, size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
        v2.RandomHorizontalFlip(p=hflip_prob),
    ])


def _checked(size: int, scale_range: Sequence[float], hflip_prob: float) -> tuple[float, float]:
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"transform size must be a positive integer, got {size!r}")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ConfigError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
    if not 0.0 <= hflip_prob <= 1.0:
        raise ConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
    return float(scale_range[0]), float(scale_range[1])
