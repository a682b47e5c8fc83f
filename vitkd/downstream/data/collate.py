"""Batching for the downstream datasets: detection batches stay lists (torchvision's detectors take images of
different sizes and one target dict per image); segmentation batches are stacked, padded to the largest image."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor],
                                                                                      list[dict[str, Any]]]:
    """[(image (3, H_i, W_i), target), ...] -> ([images], [targets]), the inputs of torchvision's detectors."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


class SegmentationCollate:
    """[(image (3, H_i, W_i), mask (H_i, W_i)), ...] -> images (B, 3, H, W) float, masks (B, H, W) int64.

    Items of equal size (training crops) are stacked as they are. Items of different sizes (evaluation at each
    image's own size) are padded at the bottom and right to the largest height and width: images with 0, masks
    with `ignore_index`, so the padding counts in no loss and no metric. A class rather than a function so that
    loader workers can pickle it.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        height = max(image.shape[-2] for image, _ in batch)
        width = max(image.shape[-1] for image, _ in batch)
        images, masks = [], []
        for image, mask in batch:
            pad = (0, width - image.shape[-1], 0, height - image.shape[-2])  # (left, right, top, bottom)
            images.append(F.pad(image.as_subclass(torch.Tensor), pad, value=0.0))  # (3, H, W)
            masks.append(F.pad(mask.as_subclass(torch.Tensor).long(), pad, value=self.ignore_index))  # (H, W)
        return torch.stack(images), torch.stack(masks)


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`SegmentationCollate` with the default ignore index 255."""
    return SegmentationCollate()(batch)
