"""Datasets by recipe name and the data loaders (sharded by rank when distributed)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vitkd.config import DataConfig
from vitkd.errors import ConfigError
from vitkd.data.digits import DigitsDataset
from vitkd.data.folder import ImageFolderDataset, SkippedImage
from vitkd.data.seeded import SeededAugmentDataset, TransformDataset
from vitkd.data.transforms import build_eval_transform, build_train_transform

#: The bundled digits are stored at this side before timm's transforms resize them to `data.img_size`.
DIGITS_STORED_SIZE = 32
DIGITS_SPLITS = ("train", "val")


@dataclass
class Batch:
    """images (B, 3, H, W); labels (B,); sample_ids (B,); seeds (B,) augmentation seeds; skipped: the number of
    unreadable images dropped from this batch, skipped_images: which (path and reason)."""

    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    seeds: torch.Tensor
    skipped: int = 0
    skipped_images: tuple[SkippedImage, ...] = ()


def collate_skipping_corrupt(items: list[Union[tuple, SkippedImage]]) -> Batch:
    """Stack items, dropping the `SkippedImage`s a dataset returned for unreadable images (`on_corrupt: skip`)."""
    kept = [item for item in items if not isinstance(item, SkippedImage)]
    skipped = tuple(item for item in items if isinstance(item, SkippedImage))
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                     torch.empty(0, dtype=torch.long), len(skipped), skipped)
    images, labels, ids, seeds = zip(*kept)
    return Batch(torch.stack(images), torch.tensor(labels, dtype=torch.long), torch.tensor(ids, dtype=torch.long),
                 torch.tensor(seeds, dtype=torch.long), len(skipped), skipped)


def build_base_dataset(dataset: str, split: str, root: Optional[str] = None, on_corrupt: str = "fail",
                       classes: Optional[Sequence[str]] = None) -> Dataset:
    """PIL-image dataset by name: `digits` (bundled; splits train/val) or `folder` (root/<split>/<class>/*, labelled
    by `classes`, the class names in label order, or by the split's own class folders when None)."""
    if dataset == "digits":
        if split not in DIGITS_SPLITS:
            raise ConfigError(f"the digits dataset has no split {split!r}; its splits are {', '.join(DIGITS_SPLITS)}")
        return DigitsDataset(split, image_size=DIGITS_STORED_SIZE)
    if dataset == "folder":
        if not root:
            raise ConfigError("the 'folder' dataset needs its root folder: data.root in a recipe, --root on the "
                              "command line (root/<split>/<class>/<image>)")
        return ImageFolderDataset(root, split, on_corrupt=on_corrupt, classes=classes)
    raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; valid datasets: 'digits', 'folder'")


def num_classes_of(dataset: Dataset) -> int:
    base = getattr(dataset, "base", dataset)
    return int(base.num_classes)


def classes_of(dataset: Dataset) -> list[str]:
    """The class names in label order of a (wrapped) base dataset."""
    base = getattr(dataset, "base", dataset)
    return list(base.classes)


def build_train_dataset(cfg: DataConfig, seed: int) -> SeededAugmentDataset:
    base = build_base_dataset(cfg.dataset, cfg.train_split, cfg.root, cfg.on_corrupt)
    return SeededAugmentDataset(base, build_train_transform(cfg), base_seed=seed)


def build_val_dataset(cfg: DataConfig, classes: Optional[Sequence[str]] = None) -> TransformDataset:
    """The validation split, labelled by `classes` (pass the training dataset's: one mapping for every split)."""
    base = build_base_dataset(cfg.dataset, cfg.val_split, cfg.root, cfg.on_corrupt, classes)
    return TransformDataset(base, build_eval_transform(cfg.img_size, cfg.mean, cfg.std, cfg.crop_pct,
                                                       cfg.interpolation))


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` whose pass can start part-way: `start_at(k)` leaves out the first k indices of this
    rank's order for the epoch set by `set_epoch` (a run resumed inside an epoch); the order itself is unchanged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def start_at(self, index: int) -> None:
        if not 0 <= index <= self.num_samples:
            raise ValueError(f"cannot start an epoch at index {index}: this rank has {self.num_samples} samples")
        self.skip = index

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_train_sampler(dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1) -> ResumableSampler:
    """The training order: a permutation per epoch (`set_epoch`; torch.randperm seeded with seed + epoch), rank r
    taking every `world_size`-th index. The `len % world_size` samples left over at the end of each epoch's
    permutation are left out that epoch (different ones every epoch) rather than padded with repeats, so no sample
    appears twice in an epoch and every batch can be re-created exactly (`vitkd.data.replay`)."""
    drop_tail = world_size > 1 and len(dataset) >= world_size
    return ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_tail)


#: Seconds a loader worker keeps serving after a SIGTERM before it exits by itself.
WORKER_SIGTERM_GRACE_S = 10.0


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave stopping to the training process, which finishes its step, writes a checkpoint and then
    shuts its workers down; a worker that died of the signal first would turn that clean stop into a "DataLoader
    worker exited unexpectedly" error.

    SIGINT (Ctrl-C reaches the whole process group) and SIGUSR1 (a checkpoint request that SLURM sends to every
    process of a job step) are ignored. SIGTERM, which schedulers send to every process but which is also how
    Python's multiprocessing ends leftover workers, makes the worker exit cleanly `WORKER_SIGTERM_GRACE_S` seconds
    later unless it was shut down before. Workers also end with their parent (torch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_after_grace)


def _exit_after_grace(number: int, frame) -> None:
    timer = threading.Timer(WORKER_SIGTERM_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def build_train_loader(dataset: Dataset, cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled per epoch by `sampler.set_epoch` (seed + epoch), sharded over `world_size` ranks
    (`build_train_sampler`). The last incomplete batch is dropped when a rank has more than one batch."""
    sampler = build_train_sampler(dataset, seed, rank, world_size)
    drop_last = len(dataset) // world_size > cfg.batch_size
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=collate_skipping_corrupt, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      generator=loader_generator(seed), worker_init_fn=ignore_stop_signals)


def loader_generator(seed: int) -> torch.Generator:
    """The loader's own generator. Every new loader iterator draws its workers' base seed from it; without one it
    draws from the global torch RNG, so the student's dropout/drop-path stream would depend on how many iterators
    were started (a persistent evaluation loader starts one per run, a resumed run one more) and on whether workers
    are used at all. Augmentation never reads these seeds (it is seeded per sample, `vitkd.data.seeded`)."""
    return torch.Generator().manual_seed(seed)


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ... of range(length): every sample evaluated exactly once over the ranks.
    (torch's `DistributedSampler` pads the shards to equal length with repeated samples, which would count those
    samples twice in a reduced top-1.)"""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_val_loader(dataset: Dataset, batch_size: int, num_workers: int, rank: int = 0,
                     world_size: int = 1) -> DataLoader:
    """In order; with several ranks each evaluates a strided shard that no other rank sees (`ShardSampler`)."""
    sampler: Any = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None
    # Evaluation data has no per-epoch state, so its workers can live across epochs (training's cannot: the
    # training dataset's epoch is set in the main process before each epoch).
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skipping_corrupt, persistent_workers=num_workers > 0,
                      generator=loader_generator(0), worker_init_fn=ignore_stop_signals)


def build_eval_loader(dataset: str, root: Optional[str], img_size: int, batch_size: int,
                      mean: tuple = (0.485, 0.456, 0.406), std: tuple = (0.229, 0.224, 0.225),
                      split: str = "val", crop_pct: float = 0.875, num_workers: int = 0,
                      interpolation: str = "bicubic", classes: Optional[Sequence[str]] = None, rank: int = 0,
                      world_size: int = 1) -> DataLoader:
    """A loader over a validation split for `vitkd eval` and `vitkd bench`, labelled by `classes` (the model's
    class names when known), sharded over `world_size` ranks. Batches are `Batch` objects."""
    base = build_base_dataset(dataset, split, root, classes=classes)
    transformed = TransformDataset(base, build_eval_transform(img_size, mean, std, crop_pct, interpolation))
    return build_val_loader(transformed, batch_size, num_workers, rank, world_size)
