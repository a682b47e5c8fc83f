"""Datasets (bundled digits, ImageNet-style folders), transforms, Mixup/CutMix and replayable augmentation."""

from vitkd.data.digits import DigitsDataset
from vitkd.data.folder import CorruptImageError, ImageFolderDataset
from vitkd.data.loader import (Batch, build_base_dataset, build_eval_loader, build_train_dataset, build_train_loader,
                               build_train_sampler, build_val_dataset, build_val_loader, collate_skipping_corrupt,
                               num_classes_of)
from vitkd.data.mixup import MixPlan, SeededMixup, build_mixup
from vitkd.data.replay import BatchReplay, EpochBatchPlan, plan_epoch_batches
from vitkd.data.seeded import SeededAugmentDataset, augmentation_seed, seeded_rng

__all__ = [
    "Batch", "BatchReplay", "CorruptImageError", "DigitsDataset", "EpochBatchPlan", "ImageFolderDataset", "MixPlan",
    "SeededAugmentDataset", "SeededMixup", "augmentation_seed", "build_base_dataset", "build_eval_loader",
    "build_mixup", "build_train_dataset", "build_train_loader", "build_train_sampler", "build_val_dataset",
    "build_val_loader", "collate_skipping_corrupt", "num_classes_of", "plan_epoch_batches", "seeded_rng",
]
