"""Datasets (bundled digits, ImageNet-style folders), transforms, Mixup/CutMix and replayable augmentation."""

from vitkd.data.digits import DigitsDataset
from vitkd.data.folder import CorruptImageError, ImageFolderDataset
from vitkd.data.loader import (Batch, build_base_dataset, build_eval_loader, build_train_dataset, build_train_loader,
                               build_val_dataset, build_val_loader, collate_skipping_corrupt, num_classes_of)
from vitkd.data.mixup import build_mixup
from vitkd.data.seeded import SeededAugmentDataset, augmentation_seed, seeded_rng

__all__ = [
    "Batch", "CorruptImageError", "DigitsDataset", "ImageFolderDataset", "SeededAugmentDataset", "augmentation_seed",
    "build_base_dataset", "build_eval_loader", "build_mixup", "build_train_dataset", "build_train_loader",
    "build_val_dataset", "build_val_loader", "collate_skipping_corrupt", "num_classes_of", "seeded_rng",
]
