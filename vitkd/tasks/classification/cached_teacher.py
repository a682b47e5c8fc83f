"""Teacher outputs read from a sparse-logit cache: the teacher model is never built.

Before the first step `open_cached_teacher` opens the cache and compares it with the run (dataset, class count,
K, augmentation incl. Mixup/CutMix and the batch size / world size its pairs depend on, the teacher the recipe
names) and checks that every training epoch has cached targets under `teacher.cache_epochs_policy`. Each step
then reads the batch's records by (cached epoch, sample id), checks that the stored augmentation seeds are the
batch's, rebuilds the dense soft labels and hands them to the loss terms as log-probabilities, so `kd` and `deit`
(soft and hard) work unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

from vitkd.errors import CacheMismatchError
from vitkd.cache.format import default_topk
from vitkd.cache.reader import SparseLogitReader, open_cache
from vitkd.cache.run_identity import recipe_identity, recorded_with
from vitkd.cache.soft_labels import cached_argmax, rebuild_soft_labels
from vitkd.config import Recipe
from vitkd.data.loader import Batch
from vitkd.data.mixup import SeededMixup
from vitkd.losses.inputs import TeacherOutputs

_SHOWN = 5  # mismatching samples listed in a message


class CachedTeacher:
    """A teacher source that serves cached top-K targets.

    Args:
        reader: an open cache whose epochs were checked with `require_epochs`.
        num_classes: C.
        device: where the rebuilt targets go.

    Call: `(images, batch, epoch) -> TeacherOutputs` with `logits` (B, C) float32 = log of the rebuilt soft label
    (softmax(logits) gives it back) and `from_cache=True`. The cached top-1 class is nudged one ulp up so that
    `logits.argmax(-1)` is exactly the cached argmax even when float16 rounding ties two stored probabilities.
    """

    def __init__(self, reader: SparseLogitReader, num_classes: int, device: torch.device) -> None:
        self.reader = reader
        self.num_classes = int(num_classes)
        self.device = device

    def data_epoch(self, epoch: int) -> int:
        """The data epoch to replay at training epoch `epoch`: the cached epoch that serves it (policy `cycle`
        maps later epochs onto cached ones, whose images must then be replayed)."""
        return self.reader.epoch_for(epoch)

    def __call__(self, images: torch.Tensor, batch: Batch, epoch: int) -> TeacherOutputs:
        cached_epoch = self.reader.epoch_for(epoch)
        seeds, values, indices = self.reader.read(cached_epoch, batch.sample_ids)  # (B,), (B, K), (B, K)
        batch_seeds = batch.seeds.detach().to("cpu", torch.int64)
        if not torch.equal(seeds, batch_seeds):
            raise self._seed_mismatch(cached_epoch, batch.sample_ids, seeds, batch_seeds)
        values = values.to(self.device, non_blocking=True)
        indices = indices.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, enabled=False):
            probs = rebuild_soft_labels(values, indices, self.num_classes)  # (B, C) float32
            logits = probs.clamp_min(torch.finfo(torch.float32).tiny).log()  # (B, C)
            rows = torch.arange(logits.shape[0], device=logits.device)
            top = cached_argmax(values, indices)  # (B,)
            logits[rows, top] = torch.nextafter(logits[rows, top], torch.tensor(float("inf"), device=logits.device))
        return TeacherOutputs(logits=logits, from_cache=True)

    def _seed_mismatch(self, cached_epoch: int, sample_ids: torch.Tensor, cached: torch.Tensor,
                       current: torch.Tensor) -> CacheMismatchError:
        bad = torch.nonzero(cached != current).flatten()[:_SHOWN].tolist()
        details = ", ".join(f"sample {int(sample_ids[i])}: cache {int(cached[i])}, batch {int(current[i])}"
                            for i in bad)
        return CacheMismatchError(
            f"logit cache {self.reader.path} (cached epoch {cached_epoch}): the stored augmentation seeds differ "
            f"from this batch's ({details}); the images are not the ones the teacher saw. The cache was built with "
            "another train.seed or augmentation; rebuild it with `vitkd cache-logits`.",
            [("seed", int(current[i]), int(cached[i])) for i in bad])


def open_cached_teacher(recipe: Recipe, dataset: Any, num_classes: int, mixup: Optional[SeededMixup],
                        world_size: int, device: torch.device) -> CachedTeacher:
    """Open `teacher.cache` for a training run and check it against the recipe before the first step.

    Args:
        recipe: the training recipe (`teacher.cache`, `teacher.cache_epochs_policy`, `teacher.cache_topk`, ...).
        dataset: the seeded training dataset.
        num_classes: the dataset's class count.
        mixup: the run's Mixup/CutMix (None when off).
        world_size: number of training processes.
        device: where targets go.
    Raises:
        CacheFormatError: not a cache, unknown version, a missing or truncated epoch file.
        CacheMismatchError: another dataset, K, class count, transform, Mixup/CutMix, seed, batch size or world size
            (with Mixup/CutMix), or teacher; the message names each field with both values.
        MissingEpochError: policy `fail` and a training epoch is not cached.
    """
    teacher = recipe.teacher
    reader = open_cache(teacher.cache)
    topk = teacher.cache_topk if teacher.cache_topk is not None else default_topk(num_classes)
    # the teacher is checked by name, kwargs, normalisation and checkpoint hash: no model is built to hash
    reader.check_compatible(recipe_identity(recipe, dataset, num_classes, mixup, world_size, topk=topk))
    reader.require_epochs(recipe.train.epochs, teacher.cache_epochs_policy)
    _warn_on_other_library_versions(reader)
    return CachedTeacher(reader, num_classes, device)


def _warn_on_other_library_versions(reader: SparseLogitReader) -> None:
    """A cache written under other torch/timm versions may replay transforms that round differently: say so by name.

    Not an error: the per-step seed check and the transform hash still hold, and most upgrades change nothing.
    """
    recorded = reader.manifest.get("recorded_with") or {}
    current = recorded_with()
    differing = [f"{library} {recorded[library]}" for library in sorted(current)
                 if library in recorded and recorded[library] != current[library]]
    if differing:
        now = ", ".join(f"{library} {current[library]}" for library in sorted(current))
        warnings.warn(f"the cache {reader.path} was written with {', '.join(differing)}; this run has {now}. Replayed "
                      f"augmentations may differ slightly from the images the teacher saw; rebuild the cache with "
                      f"`vitkd cache-logits` to be exact", stacklevel=3)
