"""Replayable augmentation: every random choice of a sample's transform derives from a per-(epoch, sample) seed.

The seed is a hash of (base seed, epoch, sample id), so the augmented image does not depend on worker count,
loader order or global RNG state, and anyone can re-create the exact image a teacher saw from the stored seed.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from vitkd.data.folder import SkippedImage


def augmentation_seed(base_seed: int, epoch: int, sample_id: int) -> int:
    """A 31-bit seed unique to (base_seed, epoch, sample_id)."""
    sequence = np.random.SeedSequence([base_seed & 0xFFFFFFFF, epoch, sample_id])
    return int(sequence.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU RNGs for the block, then restore their previous states.

    Only the CPU generator is seeded (not `torch.manual_seed`, which also reseeds every CUDA device and would tie the
    student's dropout/drop-path masks on the GPU to the last sample's augmentation seed).
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)


class SeededAugmentDataset(Dataset):
    """Applies `transform` to `base[i]` under the seed of (base_seed, epoch, i).

    Items: (image (3, H, W) float tensor, label int, sample id int, seed int), or the base dataset's `SkippedImage`
    for an unreadable image. Call `set_epoch(epoch)` before each epoch.

    `teacher_input(epoch, sample_id)` returns the exact image a teacher saw for a sample (what `vitkd cache-logits`
    fed it and what training with `teacher.cache` trains on), Mixup/CutMix included once `use_batch_replay` has
    attached the batch replay (training and the caching job do).
    """

    def __init__(self, base: Dataset, transform: Callable, base_seed: int) -> None:
        self.base = base
        self.transform = transform
        self.base_seed = base_seed
        self.epoch = 0
        self.batch_replay = None  # a vitkd.data.replay.BatchReplay, set by use_batch_replay()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def seed_for(self, epoch: int, sample_id: int) -> int:
        return augmentation_seed(self.base_seed, epoch, sample_id)

    def replay(self, epoch: int, sample_id: int, seed: Optional[int] = None) -> torch.Tensor:
        """The exact augmented image (3, H, W) of `sample_id` at `epoch` (or under an explicit stored seed)."""
        item = self.base[sample_id]
        if isinstance(item, SkippedImage):
            raise ValueError(f"sample {sample_id} ({item.path}) is unreadable and was skipped: {item.reason}")
        with seeded_rng(self.seed_for(epoch, sample_id) if seed is None else seed):
            return self.transform(item[0])

    def __getitem__(self, index: int):
        return self.item_at(self.epoch, index)

    def item_at(self, epoch: int, index: int):
        """The item of sample `index` at `epoch`, whatever `self.epoch` is: (image (3, H, W), label, index, seed) or
        the base dataset's `SkippedImage` for an unreadable one."""
        item = self.base[index]
        if isinstance(item, SkippedImage):
            return item
        image, label = item
        seed = self.seed_for(epoch, index)
        with seeded_rng(seed):
            tensor = self.transform(image)
        return tensor, label, index, seed

    def use_batch_replay(self, batch_replay) -> None:
        """Attach a `vitkd.data.replay.BatchReplay` so `teacher_input` can re-create batch-level Mixup/CutMix."""
        self.batch_replay = batch_replay

    def teacher_input(self, epoch: int, sample_id: int) -> torch.Tensor:
        """The exact (3, H, W) tensor the teacher saw for `sample_id` at data epoch `epoch`.

        Without Mixup/CutMix that is `replay(epoch, sample_id)`. With them, the sample's whole batch (as the train
        sampler formed it for this batch size and world size) is replayed and mixed, and the sample's row returned;
        that needs the batch replay attached by `use_batch_replay` (without it the unmixed image is returned).
        Bitwise equal to what `vitkd cache-logits` fed the teacher, so anyone can re-run the teacher on it and
        compare with the cached top-K.

        Raises:
            ValueError: the sample is a skipped corrupt image.
        """
        if self.batch_replay is not None:
            return self.batch_replay.teacher_input(epoch, sample_id)
        return self.replay(epoch, sample_id)


class TransformDataset(Dataset):
    """Deterministic (eval) transform. Items: (image tensor, label, sample id, 0) or a `SkippedImage`."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        item = self.base[index]
        if isinstance(item, SkippedImage):
            return item
        image, label = item
        return self.transform(image), label, index, 0
