"""Datasets by recipe name and the data loaders (sharded by rank when distributed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vitkd.config import DataConfig
from vitkd.errors import ConfigError
from vitkd.data.digits import DigitsDataset
from vitkd.data.folder import ImageFolderDataset
from vitkd.data.seeded import SeededAugmentDataset, TransformDataset
from vitkd.data.transforms import build_eval_transform, build_train_transform

#: The bundled digits are stored at this side before timm's transforms resize them to `data.img_size`.
DIGITS_STORED_SIZE = 32


@dataclass
class Batch:
    """images (B, 3, H, W); labels (B,); sample_ids (B,); seeds (B,) augmentation seeds; skipped: corrupt images
    dropped from this batch."""

    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    seeds: torch.Tensor
    skipped: int = 0


def collate_skipping_corrupt(items: list[Optional[tuple]]) -> Batch:
    """Stack items, dropping those a dataset returned as None (skipped corrupt images)."""
    kept = [item for item in items if item is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                     torch.empty(0, dtype=torch.long), skipped)
    images, labels, ids, seeds = zip(*kept)
    return Batch(torch.stack(images), torch.tensor(labels, dtype=torch.long), torch.tensor(ids, dtype=torch.long),
                 torch.tensor(seeds, dtype=torch.long), skipped)


def build_base_dataset(dataset: str, split: str, root: Optional[str] = None, on_corrupt: str = "fail") -> Dataset:
    """PIL-image dataset by name: `digits` (bundled; splits train/val) or `folder` (root/<split>/<class>/*)."""
    if dataset == "digits":
        return DigitsDataset("train" if split == "train" else "val", image_size=DIGITS_STORED_SIZE)
    if dataset == "folder":
        if not root:
            raise ConfigError("data.root is required for the 'folder' dataset")
        return ImageFolderDataset(root, split, on_corrupt=on_corrupt)
    raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; valid datasets: 'digits', 'folder'")


def num_classes_of(dataset: Dataset) -> int:
    base = getattr(dataset, "base", dataset)
    return int(base.num_classes)


def build_train_dataset(cfg: DataConfig, seed: int) -> SeededAugmentDataset:
    base = build_base_dataset(cfg.dataset, cfg.train_split, cfg.root, cfg.on_corrupt)
    return SeededAugmentDataset(base, build_train_transform(cfg), base_seed=seed)


def build_val_dataset(cfg: DataConfig) -> TransformDataset:
    base = build_base_dataset(cfg.dataset, cfg.val_split, cfg.root, cfg.on_corrupt)
    return TransformDataset(base, build_eval_transform(cfg.img_size, cfg.mean, cfg.std, cfg.crop_pct,
                                                       cfg.interpolation))


def build_train_sampler(dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1) -> DistributedSampler:
    """The training order: a permutation per epoch (`set_epoch`; torch.randperm seeded with seed + epoch), rank r
    taking every `world_size`-th index. The `len % world_size` samples left over at the end of each epoch's
    permutation are left out that epoch (different ones every epoch) rather than padded with repeats, so no sample
    appears twice in an epoch and every batch can be re-created exactly (`vitkd.data.replay`)."""
    drop_tail = world_size > 1 and len(dataset) >= world_size
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                              drop_last=drop_tail)


def build_train_loader(dataset: Dataset, cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled per epoch by `sampler.set_epoch` (seed + epoch), sharded over `world_size` ranks
    (`build_train_sampler`). The last incomplete batch is dropped when a rank has more than one batch."""
    sampler = build_train_sampler(dataset, seed, rank, world_size)
    drop_last = len(dataset) // world_size > cfg.batch_size
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=collate_skipping_corrupt, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      generator=loader_generator(seed))


def loader_generator(seed: int) -> torch.Generator:
    """The loader's own generator. Every new loader iterator draws its workers' base seed from it; without one it
    draws from the global torch RNG, so the student's dropout/drop-path stream would depend on how many iterators
    were started (a persistent evaluation loader starts one per run, a resumed run one more) and on whether workers
    are used at all. Augmentation never reads these seeds (it is seeded per sample, `vitkd.data.seeded`)."""
    return torch.Generator().manual_seed(seed)


def build_val_loader(dataset: Dataset, batch_size: int, num_workers: int, rank: int = 0,
                     world_size: int = 1) -> DataLoader:
    """In order; with several ranks each evaluates a strided shard (DistributedSampler without shuffling)."""
    sampler: Any = None
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    # Evaluation data has no per-epoch state, so its workers can live across epochs (training's cannot: the
    # training dataset's epoch is set in the main process before each epoch).
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skipping_corrupt, persistent_workers=num_workers > 0,
                      generator=loader_generator(0))


def build_eval_loader(dataset: str, root: Optional[str], img_size: int, batch_size: int,
                      mean: tuple = (0.485, 0.456, 0.406), std: tuple = (0.229, 0.224, 0.225),
                      split: str = "val", crop_pct: float = 0.875, num_workers: int = 0,
                      interpolation: str = "bicubic") -> DataLoader:
    """A loader over a validation split for `vitkd eval` and `vitkd bench`. Batches are `Batch` objects."""
    base = build_base_dataset(dataset, split, root)
    transformed = TransformDataset(base, build_eval_transform(img_size, mean, std, crop_pct, interpolation))
    return build_val_loader(transformed, batch_size, num_workers)
