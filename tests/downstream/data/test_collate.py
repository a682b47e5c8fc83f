"""Batching: detection batches stay lists; segmentation batches are stacked, padded with 0 and the ignore index."""

from __future__ import annotations

import pickle

import torch
from torchvision import tv_tensors

from vitkd.downstream.data.collate import SegmentationCollate, detection_collate, segmentation_collate


def test_detection_collate_keeps_images_of_different_sizes_and_their_targets_in_order():
    batch = [(torch.rand(3, 10, 12), {"image_id": 1}), (torch.rand(3, 7, 5), {"image_id": 2})]
    images, targets = detection_collate(batch)
    assert isinstance(images, list) and [image.shape for image in images] == [(3, 10, 12), (3, 7, 5)]
    assert images[1] is batch[1][0] and [target["image_id"] for target in targets] == [1, 2]


def test_segmentation_collate_pads_bottom_right_with_zero_and_ignore_index():
    first = (tv_tensors.Image(torch.rand(3, 4, 6)), tv_tensors.Mask(torch.ones(4, 6, dtype=torch.int64)))
    second = (tv_tensors.Image(torch.rand(3, 5, 3)), tv_tensors.Mask(torch.full((5, 3), 2, dtype=torch.int64)))
    images, masks = SegmentationCollate(ignore_index=99)([first, second])
    assert images.shape == (2, 3, 5, 6) and masks.shape == (2, 5, 6) and masks.dtype == torch.int64
    assert type(images) is torch.Tensor and type(masks) is torch.Tensor
    assert torch.equal(images[0, :, :4], first[0]) and images[0, :, 4:].abs().sum() == 0
    assert torch.equal(masks[0, :4], first[1]) and (masks[0, 4:] == 99).all()
    assert torch.equal(images[1, :, :, :3], second[0]) and images[1, :, :, 3:].abs().sum() == 0
    assert (masks[1, :, :3] == 2).all() and (masks[1, :, 3:] == 99).all()


def test_segmentation_collate_of_equal_sizes_stacks_unchanged_and_pickles_for_workers():
    batch = [(torch.rand(3, 4, 4), torch.randint(0, 3, (4, 4))) for _ in range(3)]
    images, masks = segmentation_collate(batch)
    assert torch.equal(images, torch.stack([image for image, _ in batch]))
    assert torch.equal(masks, torch.stack([mask for _, mask in batch]))
    assert pickle.loads(pickle.dumps(SegmentationCollate(7))).ignore_index == 7
