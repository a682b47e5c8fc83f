"""Re-create the batches of an epoch, and the exact (mixed) images a teacher saw in them.

Per-sample augmentation replays from a seed alone (`vitkd.data.seeded`). Mixup/CutMix pairs a sample with
another image of its batch, so replaying a mixed image needs the batch too. Batches are fixed by the train sampler
(`vitkd.data.loader.build_train_sampler`): for a given train seed, epoch, dataset size, batch size and world size,
rank r's batches are consecutive runs of `batch_size` ids of its shard. `EpochBatchPlan` lists them for every rank,
plus the few ids the sampler leaves out of the epoch (`len % world_size`); `vitkd cache-logits` runs the teacher on
all of them (the left-out ids as extra batches of rank 0) so every sample gets targets, and training, which uses the
same sampler, meets exactly the same batches. Change the batch size or the world size and the pairs change: that
is why a cache records both (see `vitkd.cache.run_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vitkd.data.loader import Batch, build_train_sampler, collate_skipping_corrupt
from vitkd.data.mixup import SeededMixup
from vitkd.data.seeded import SeededAugmentDataset


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


@dataclass
class EpochBatchPlan:
    """Every batch of one data epoch.

    rank_batches: rank -> its batches in loader order (each a list of sample ids, the last one possibly shorter;
        training drops that one when the rank has more than one batch).
    left_out: sample ids no rank sees this epoch (at most world_size - 1), in id order.
    batch_size: the batch size the plan was made for.
    """

    rank_batches: list[list[list[int]]]
    left_out: list[int]
    batch_size: int

    def writer_batches(self, rank: int) -> list[list[int]]:
        """Batches `vitkd cache-logits` feeds the teacher on `rank`: its own, plus on rank 0 the left-out ids (as
        batches of their own), so that over all ranks every sample id appears exactly once."""
        extra = _chunks(self.left_out, self.batch_size) if rank == 0 else []
        return self.rank_batches[rank] + extra

    def all_batches(self) -> list[list[int]]:
        """Every teacher batch of the epoch over all ranks."""
        return [batch for rank in range(len(self.rank_batches)) for batch in self.writer_batches(rank)]


def plan_epoch_batches(dataset_size: int, batch_size: int, seed: int, epoch: int, world_size: int = 1
                       ) -> EpochBatchPlan:
    """The batches of data epoch `epoch`, built from the very sampler training uses (one per rank).

    Args:
        dataset_size: number of samples N.
        batch_size: per-rank batch size B.
        seed: the train seed (`train.seed`), which seeds the sampler's per-epoch permutation.
        epoch: the data epoch (`sampler.set_epoch`).
        world_size: number of training processes.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size and world_size must be positive, got {batch_size} and {world_size}")
    indexable = range(dataset_size)  # the sampler only needs len()
    rank_batches, seen = [], set()
    for rank in range(world_size):
        sampler = build_train_sampler(indexable, seed, rank, world_size)
        sampler.set_epoch(epoch)
        ids = [int(i) for i in sampler]
        seen.update(ids)
        rank_batches.append(_chunks(ids, batch_size))
    left_out = [i for i in range(dataset_size) if i not in seen]
    return EpochBatchPlan(rank_batches=rank_batches, left_out=left_out, batch_size=batch_size)


class BatchReplay:
    """Replays teacher batches: the seeded per-sample augmentation, collated as the loader does, then Mixup/CutMix.

    Args:
        dataset: the seeded training dataset.
        batch_size: per-rank batch size the batches were formed with.
        world_size: number of processes the batches were formed for.
        seed: the train seed (sampler permutation).
        mixup: the run's `SeededMixup`, or None when images are not mixed.
    """

    def __init__(self, dataset: SeededAugmentDataset, batch_size: int, world_size: int, seed: int,
                 mixup: Optional[SeededMixup]) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.mixup = mixup
        self._cached_epoch: Optional[tuple[int, EpochBatchPlan, list[list[int]], dict[int, int]]] = None

    def plan(self, epoch: int) -> EpochBatchPlan:
        """The `EpochBatchPlan` of data epoch `epoch` (the latest epoch's plan is kept)."""
        return self._epoch_index(epoch)[1]

    def _epoch_index(self, epoch: int) -> tuple[int, EpochBatchPlan, list[list[int]], dict[int, int]]:
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            plan = plan_epoch_batches(len(self.dataset), self.batch_size, self.seed, epoch, self.world_size)
            batches = plan.all_batches()
            batch_of = {sample_id: number for number, batch in enumerate(batches) for sample_id in batch}
            self._cached_epoch = (epoch, plan, batches, batch_of)  # one epoch only: plans of large datasets are big
        return self._cached_epoch

    def batch_ids(self, epoch: int, sample_id: int) -> list[int]:
        """Sample ids of the teacher batch that held `sample_id` at `epoch`, in batch order."""
        if not 0 <= sample_id < len(self.dataset):
            raise IndexError(f"sample id {sample_id} out of range [0, {len(self.dataset)})")
        _, _, batches, batch_of = self._epoch_index(epoch)
        return batches[batch_of[sample_id]]

    def replay_batch(self, epoch: int, sample_ids: list[int]) -> tuple[Batch, torch.Tensor]:
        """Re-create one batch as the teacher saw it.

        Args:
            epoch: data epoch.
            sample_ids: the batch's ids in batch order (from `batch_ids` or an `EpochBatchPlan`).
        Returns:
            the collated `Batch` (unmixed images, corrupt images dropped as the loader drops them) and the teacher's
            input images (B, 3, H, W): mixed when Mixup/CutMix is on, else the batch's images.
        """
        batch = collate_skipping_corrupt([self.dataset.item_at(epoch, sample_id) for sample_id in sample_ids])
        images = batch.images
        if self.mixup is not None and images.numel():
            images, _ = self.mixup(images, batch.labels, batch.seeds)
        return batch, images

    def teacher_input(self, epoch: int, sample_id: int) -> torch.Tensor:
        """The exact (3, H, W) image the teacher saw for `sample_id` at data epoch `epoch`."""
        if self.mixup is None:
            return self.dataset.replay(epoch, sample_id)
        batch, images = self.replay_batch(epoch, self.batch_ids(epoch, sample_id))
        rows = torch.nonzero(batch.sample_ids == sample_id).flatten()
        if rows.numel() == 0:
            raise ValueError(f"sample {sample_id} is a corrupt image and was skipped")
        return images[int(rows[0])]
