"""Replayable augmentation of (image, target) pairs: each sample's random crop, scale and flip derive from a seed of
(base seed, epoch, sample index), as the classification data's do (`vitkd.data.seeded`).

torchvision's v2 transforms draw from the global torch RNG. Seeding it per sample makes a sample's augmentation
independent of loader workers, sample order and of how many loaders a run has started, so a run resumed at any
checkpoint sees exactly the images an uninterrupted run would have.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from vitkd.data.seeded import augmentation_seed, seeded_rng


class SeededPairDataset(Dataset):
    """`transforms(*base[index])` under the seed of (base_seed, epoch, index); call `set_epoch` before each epoch.

    Items: whatever `transforms` returns for the base item, e.g. (image (3, S, S), target dict) for detection or
    (image (3, S, S), mask (S, S)) for segmentation. The dataset's own attributes (`num_classes`, `coco`) are
    `base`'s.
    """

    def __init__(self, base: Dataset, transforms: Callable, base_seed: int) -> None:
        self.base = base
        self.transforms = transforms
        self.base_seed = base_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        item = self.base[index]
        with seeded_rng(augmentation_seed(self.base_seed, self.epoch, index)):
            return self.transforms(*item)
