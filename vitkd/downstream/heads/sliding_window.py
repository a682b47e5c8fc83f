"""Sliding-window segmentation inference: logits of an image larger than the fine-tune crop, from overlapping
crop-sized windows, averaged where they overlap (the "slide" test mode of ADE20K segmenters).

Windows of `crop` x `crop` start every `stride` pixels along each axis, the last one flush with the far edge, so every
pixel is covered and no window reaches outside the image; an image smaller than the crop along an axis is
zero-padded to the crop there, and the padding is cut off the result. Each pixel's logits are the mean over the
windows that cover it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of `length` pixels: 0, stride, 2 x stride, ... and `length - crop`
    last (a single window at 0 when `length <= crop`)."""
    if crop < 1 or stride < 1:
        raise ValueError(f"crop and stride must be positive, got crop={crop}, stride={stride}")
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride))
    return starts + [length - crop]


def sliding_window_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, crop: int,
                          stride: int) -> torch.Tensor:
    """Segment `images` window by window.

    Args:
        model: maps (B, 3, crop, crop) images to (B, C, crop, crop) logits.
        images: (B, 3, H, W), any H and W.
        crop: the window side (the fine-tune crop size).
        stride: the step between windows (smaller than `crop` for overlap; mmseg's ADE20K setting is 2/3 of it).

    Returns: (B, C, H, W) float32 logits, the mean over the covering windows at each pixel.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    full_h, full_w = padded.shape[-2:]
    summed = None
    counts = torch.zeros(1, 1, full_h, full_w, device=images.device)
    for top in window_starts(full_h, crop, stride):
        for left in window_starts(full_w, crop, stride):
            logits = model(padded[..., top:top + crop, left:left + crop]).float()  # (B, C, crop, crop)
            if summed is None:
                summed = logits.new_zeros(images.shape[0], logits.shape[1], full_h, full_w)
            summed[..., top:top + crop, left:left + crop] += logits
            counts[..., top:top + crop, left:left + crop] += 1
    return (summed / counts)[..., :height, :width]
