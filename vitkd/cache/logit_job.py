"""`vitkd cache-logits`: run the frozen teacher once over the augmented training stream and store its top-K.

For each epoch the job re-creates the batches training will see (`vitkd.data.replay`: same sampler, batch size and
world size), augments every sample from its seed, applies the seeded Mixup/CutMix within the batch, runs the
teacher and writes the top-K probabilities with `SparseLogitWriter`. Every sample id is written exactly once per
epoch (the ids the sampler leaves out of an epoch go through the teacher as extra batches of rank 0). Under
torchrun each rank writes its own batches as a shard; the epoch file does not depend on how many processes wrote.
Interrupted runs continue at the first incomplete epoch; finished epochs are never rewritten.

Python use (what `vitkd demo` does)::

    from vitkd.cache.logit_job import build_logit_cache
    from vitkd.config import load_recipe
    from vitkd.shipped_recipes import find_recipe
    result = build_logit_cache(load_recipe(find_recipe("demo/cached_kd")), epochs=30, topk=10)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitkd.cache.format import DEFAULT_TOPK, default_topk
from vitkd.cache.run_identity import recipe_identity, recorded_with
from vitkd.cache.writer import SparseLogitWriter
from vitkd.config import Recipe
from vitkd.errors import ConfigError
from vitkd.data.loader import build_train_dataset, collate_skipping_corrupt, num_classes_of
from vitkd.data.mixup import build_mixup
from vitkd.data.replay import BatchReplay
from vitkd.engine.amp import autocast, resolve_amp_dtype
from vitkd.engine.distributed import DistributedContext, init_distributed, set_cpu_threads
from vitkd.engine.rng import seed_everything
from vitkd.models.teacher import FrozenTeacher, build_frozen_teacher


@dataclass
class LogitCacheResult:
    """What `build_logit_cache` did.

    path: the cache directory. epochs: epochs the cache should hold (0 .. epochs - 1). written: epochs written by
    this call (an empty list when the cache was already complete). topk, num_samples, record_size: the layout
    (record_size = bytes per sample per epoch). seconds: wall time of this call.
    """

    path: Path
    epochs: int
    written: list[int] = field(default_factory=list)
    topk: int = DEFAULT_TOPK
    num_samples: int = 0
    num_classes: int = 0
    record_size: int = 0
    seconds: float = 0.0


def resolve_cache_settings(recipe: Recipe, epochs: Optional[int], topk: Optional[int],
                           output: Optional[str | Path]) -> tuple[int, Optional[int], Path]:
    """(epochs, K, cache directory) of a caching run: the arguments, else the recipe (`train.epochs`,
    `teacher.cache_topk`, `teacher.cache`). K is None when neither sets it: the caller applies `default_topk` once the
    class count is known. Raises `ConfigError` naming what is missing."""
    teacher = recipe.teacher
    if teacher is None or not teacher.name:
        raise ConfigError("cache-logits needs a teacher: set teacher.name (and teacher.checkpoint) in the recipe")
    epochs = recipe.train.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ConfigError(f"cache-logits: epochs must be a positive integer, got {epochs}")
    topk = topk if topk is not None else teacher.cache_topk
    if topk is not None and int(topk) < 1:
        raise ConfigError(f"cache-logits: topk must be a positive integer, got {topk}")
    output = output if output is not None else teacher.cache
    if not output:
        raise ConfigError("cache-logits: no output directory; set teacher.cache=DIR in the recipe (training reads "
                          "the cache from there) or pass --output DIR")
    return epochs, topk, Path(output)


def build_logit_cache(recipe: Recipe, epochs: Optional[int] = None, topk: Optional[int] = None,
                      output: Optional[str | Path] = None, *, progress: bool = True,
                      context: Optional[DistributedContext] = None) -> LogitCacheResult:
    """Cache the recipe's teacher over `epochs` augmented epochs of its training data (resumable).

    Args:
        recipe: a training recipe with `teacher.name` (and usually `teacher.checkpoint`). Its data, augmentation,
            Mixup/CutMix, batch size and `train.seed` define the images, exactly as training with this recipe and
            `teacher.cache` will replay them.
        epochs: number of epochs to cache (default `train.epochs`).
        topk: K (default `teacher.cache_topk`, else 10, or the class count when the data has fewer classes).
        output: cache directory (default `teacher.cache`).
        progress: tqdm bars on rank 0.
        context: distributed context (default: from torchrun's environment, or a single process).
    Returns:
        a `LogitCacheResult`.
    Raises:
        ConfigError: no teacher, no output directory, bad epochs/K.
        CacheMismatchError: `output` holds a cache made for other settings (each differing setting is named, by
            `SparseLogitWriter`'s one identity check).
    """
    start = time.perf_counter()
    epochs, topk, output = resolve_cache_settings(recipe, epochs, topk, output)
    context = context or init_distributed(recipe.train.device)
    set_cpu_threads(recipe.train.cpu_threads)
    device = context.device
    seed_everything(recipe.train.seed, recipe.train.deterministic)
    data = recipe.data
    dataset = build_train_dataset(data, recipe.train.seed)
    num_classes = num_classes_of(dataset)
    topk = int(topk) if topk is not None else default_topk(num_classes)
    if topk > num_classes:
        raise ConfigError(f"cache-logits: topk={topk} exceeds the dataset's {num_classes} classes")
    mixup = build_mixup(data, num_classes)
    replay = BatchReplay(dataset, data.batch_size, context.world_size, recipe.train.seed, mixup)
    dataset.use_batch_replay(replay)
    teacher = build_frozen_teacher(recipe, num_classes).to(device)
    identity = recipe_identity(recipe, dataset, num_classes, mixup, context.world_size, topk=topk,
                               teacher_state_dict=teacher.model.state_dict())
    writer = SparseLogitWriter(  # resuming: refuses a cache of other settings, naming each one
        output, num_samples=len(dataset), topk=topk, num_classes=num_classes, teacher_id=identity["teacher"],
        dataset_fingerprint=identity["dataset"], augmentation=identity["augmentation"],
        augmentation_hash=identity["augmentation_hash"], rank=context.rank, world_size=context.world_size,
        extra_manifest={"recorded_with": recorded_with()})
    amp_dtype = resolve_amp_dtype(recipe.train.amp, device)
    missing = writer.missing_epochs(epochs)
    show = progress and context.is_main
    if show and len(missing) < epochs:
        tqdm.write(f"[cache-logits] {output}: epochs {writer.completed_epochs()} already cached; continuing at "
                   f"epoch {missing[0] if missing else epochs}")
    with writer:
        for epoch in missing:
            _write_epoch(writer, replay, teacher, epoch, device, amp_dtype, data.num_workers, show, epochs)
    return LogitCacheResult(path=output, epochs=epochs, written=missing, topk=topk, num_samples=len(dataset),
                            num_classes=num_classes, record_size=writer.record_dtype.itemsize,
                            seconds=time.perf_counter() - start)


def _write_epoch(writer: SparseLogitWriter, replay: BatchReplay, teacher: FrozenTeacher, epoch: int,
                 device: torch.device, amp_dtype: Optional[torch.dtype], num_workers: int, show: bool,
                 total_epochs: int) -> None:
    """Teacher top-K of every sample of this rank's batches at `epoch`, written as one epoch shard."""
    batches = replay.plan(epoch).writer_batches(writer.rank)
    dataset = replay.dataset
    dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_skipping_corrupt,
                        pin_memory=device.type == "cuda")
    writer.begin_epoch(epoch)
    bar = tqdm(total=sum(len(ids) for ids in batches), unit="img", desc=f"cache epoch {epoch + 1}/{total_epochs}",
               disable=not show, leave=False)
    for ids, batch in zip(batches, loader):
        if batch.skipped:  # unreadable images the loader dropped: no targets for them this epoch
            writer.mark_skipped(sorted(set(ids) - set(batch.sample_ids.tolist())))
        if batch.images.numel():
            images = batch.images.to(device, non_blocking=True)
            if replay.mixup is not None:  # same call, same batch as training: bitwise the same mixed images
                images, _ = replay.mixup(images, batch.labels, batch.seeds)
            with torch.no_grad(), autocast(device, amp_dtype):
                logits = teacher(images)  # (B, C)
            writer.write(batch.sample_ids, batch.seeds, logits.float().softmax(dim=-1))
        bar.update(len(ids))
    bar.close()
    writer.finish_epoch()
