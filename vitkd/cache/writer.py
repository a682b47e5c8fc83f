"""`SparseLogitWriter`: stores the teacher's top-K probabilities per (epoch, sample id), one atomic file per epoch.

Every rank (one process, or each torchrun rank) appends `(sample_id, record)` entries for the samples it sees to
its own shard file. `finish_epoch` waits for all ranks, then rank 0 scatters the shards into one file indexed by
sample id, checks that every sample id appears exactly once and that every CRC holds, renames the file into place
(`vitkd.files.atomic_write`, durably) and only then records the epoch as complete in the manifest. A crash at any
point leaves only `*.partial` / `*.tmp` files, which readers never look at and the next run removes, so finished
epochs are never lost and a half-written epoch is never visible. Single-process writing takes the same path with
one shard, which is why the epoch file never depends on how many processes wrote it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkd.errors import CacheFormatError, CacheWriteError
from vitkd.files import atomic_write
from vitkd.cache.format import (
    build_manifest,
    epoch_file_name,
    epoch_temp_pattern,
    hash_config,
    index_dtype_for,
    load_manifest,
    manifest_path,
    record_checksums,
    record_dtype,
    shard_entry_dtype,
    skipped_mask,
    shard_file_name,
    utc_now,
    write_manifest_atomic,
)
from vitkd.cache.run_identity import expected_identity, identity_mismatches, mismatch_error

MERGE_CHUNK_RECORDS = 1 << 20  # records handled per step while merging / verifying (bounded memory)
PROBABILITY_TOLERANCE = 0.01  # slack for low-precision (bf16/fp16) softmax outputs
MAX_SEED = 2**32 - 1
_SHOWN_IDS = 10  # sample ids listed in an error message


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A CPU numpy view/copy of a tensor, array or sequence (tensors are detached first)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu")
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - reported with the argument name
        raise TypeError(f"{name}: cannot convert {type(value).__name__} to an array") from error


def _shown(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:_SHOWN_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


class SparseLogitWriter:
    """Writes a sparse teacher-logit cache, one epoch at a time, from one or several processes.

    Usage (every rank runs the same code; see `vitkd cache-logits`)::

        writer = SparseLogitWriter(cache_dir, num_samples=len(dataset), topk=10, num_classes=1000,
                                   teacher_id=teacher_identity(teacher_config, teacher.state_dict()),
                                   dataset_fingerprint=dataset_fingerprint(samples),
                                   augmentation=augmentation_record,
                                   augmentation_hash=hash_config(augmentation_record),
                                   rank=rank, world_size=world_size)
        for epoch in writer.missing_epochs(total_epochs):
            writer.begin_epoch(epoch)
            for images, sample_ids, seeds in loader:          # this rank's samples, each exactly once
                writer.write(sample_ids, seeds, teacher(images).softmax(-1))
            writer.finish_epoch()                              # collective: every rank must call it

    Samples the loader drops (unreadable images) are recorded with `mark_skipped(ids)`, or by passing their count as
    `finish_epoch(allow_missing=n)`; reading them later raises `SkippedSampleError`.

    Args:
        path: cache directory (created if needed).
        num_samples: dataset size; sample ids are 0 .. num_samples - 1.
        topk: K, the number of probabilities kept per sample.
        num_classes: C, the teacher's class count (indices are int16 when C <= 32767, else int32).
        teacher_id: identity of the teacher, at least `{"name": ..., "weights_hash": ...}` (see
            `vitkd.cache.run_identity.teacher_identity`).
        dataset_fingerprint: identity of the ordered sample list (see `dataset_fingerprint`); if it has a
            `num_samples` entry it must equal `num_samples`.
        augmentation_hash: `hash_config` of the augmentation recipe whose seeded replay produced the inputs.
        augmentation: that recipe itself (optional): stored in a new cache's manifest and, when the cache is
            reopened, compared setting by setting, so a mismatch names e.g. `augmentation.seed`.
        rank, world_size: this process's place among the writers (0 and 1 for a single process).
        barrier: called to wait for all ranks; defaults to `torch.distributed.barrier` when world_size > 1 and
            torch.distributed is initialised. Constructing the writer and `finish_epoch` are collective calls.
        extra_manifest: descriptive fields stored in a new cache's manifest (e.g. library versions); not compared
            when an existing cache is reopened (the identity fields are).

    Raises:
        CacheMismatchError: `path` holds a cache built with different K, classes, samples, teacher, dataset or
            augmentation; the message names each differing setting with both values (see
            `vitkd.cache.run_identity.identity_mismatches`). Nothing is overwritten.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_samples: int,
        topk: int,
        num_classes: int,
        teacher_id: Mapping[str, Any],
        dataset_fingerprint: Mapping[str, Any],
        augmentation_hash: str,
        augmentation: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        extra_manifest: Mapping[str, Any] | None = None,
    ):
        self._check_arguments(num_samples, topk, num_classes, teacher_id, dataset_fingerprint, augmentation_hash,
                              augmentation, rank, world_size)
        self.path = Path(path)
        self.num_samples = int(num_samples)
        self.topk = int(topk)
        self.num_classes = int(num_classes)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.index_dtype = index_dtype_for(self.num_classes)
        self.record_dtype = record_dtype(self.topk, self.index_dtype)
        self._entry_dtype = shard_entry_dtype(self.record_dtype)
        self._barrier = self._resolve_barrier(barrier)
        self._epoch: int | None = None
        self._shard_stream = None
        self.records_written = 0  # by this rank in the current epoch
        self._extra_manifest = dict(extra_manifest or {})
        self._identity = expected_identity(
            num_samples=self.num_samples, topk=self.topk, num_classes=self.num_classes, teacher=dict(teacher_id),
            dataset=dict(dataset_fingerprint), augmentation=augmentation, augmentation_hash=str(augmentation_hash))
        self.path.mkdir(parents=True, exist_ok=True)
        existed = manifest_path(self.path).is_file()
        if existed:
            self._check_existing_manifest()  # every rank checks, so a mismatch fails everywhere without a hang
        elif self.rank == 0:
            self._create_manifest()
        self._wait_for_all_ranks()
        if not existed and self.rank != 0:
            self._check_existing_manifest()

    # ------------------------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_arguments(num_samples, topk, num_classes, teacher_id, dataset_fingerprint, augmentation_hash,
                         augmentation, rank, world_size) -> None:
        for name, value in (("num_samples", num_samples), ("topk", topk), ("num_classes", num_classes),
                            ("world_size", world_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if topk > num_classes:
            raise ValueError(f"topk={topk} exceeds num_classes={num_classes}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        if not isinstance(teacher_id, Mapping) or not {"name", "weights_hash"} <= set(teacher_id):
            raise ValueError(
                f"teacher_id must be a dict with at least 'name' and 'weights_hash' (see teacher_identity), "
                f"got {teacher_id!r}"
            )
        if not isinstance(dataset_fingerprint, Mapping) or not dataset_fingerprint:
            raise ValueError(f"dataset_fingerprint must be a non-empty dict (see dataset_fingerprint), got "
                             f"{dataset_fingerprint!r}")
        fingerprint_count = dataset_fingerprint.get("num_samples")
        if fingerprint_count is not None and fingerprint_count != num_samples:
            raise ValueError(
                f"dataset_fingerprint['num_samples']={fingerprint_count} disagrees with num_samples={num_samples}"
            )
        if not isinstance(augmentation_hash, str) or not augmentation_hash:
            raise ValueError(f"augmentation_hash must be a non-empty string (see hash_config), got "
                             f"{augmentation_hash!r}")
        if augmentation is not None and hash_config(augmentation) != augmentation_hash:
            raise ValueError(f"augmentation_hash {augmentation_hash!r} is not the hash of augmentation "
                             f"({hash_config(augmentation)!r})")

    def _resolve_barrier(self, barrier: Callable[[], None] | None) -> Callable[[], None] | None:
        if self.world_size == 1:
            return None
        if barrier is not None:
            return barrier
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            if distributed.get_world_size() != self.world_size or distributed.get_rank() != self.rank:
                raise ValueError(
                    f"rank={self.rank}, world_size={self.world_size} disagree with torch.distributed "
                    f"(rank {distributed.get_rank()} of {distributed.get_world_size()})"
                )
            return distributed.barrier
        raise ValueError(
            f"world_size={self.world_size} needs a barrier: initialise torch.distributed first or pass barrier=..."
        )

    def _wait_for_all_ranks(self) -> None:
        if self._barrier is not None:
            self._barrier()

    def _check_existing_manifest(self) -> None:
        manifest = load_manifest(self.path)
        mismatches = identity_mismatches(manifest, self._identity)
        if mismatches:
            raise mismatch_error(mismatches, self.path, action="write to it")

    def _create_manifest(self) -> None:
        stray = sorted(self.path.glob("epoch_*.bin"))
        if stray:
            raise CacheFormatError(
                f"{self.path} holds epoch files ({stray[0].name}, ...) but no manifest.json; refusing to overwrite "
                "them. Use an empty directory or restore the manifest."
            )
        record = {"augmentation": self._identity["augmentation"]} if "augmentation" in self._identity else {}
        extra = {**self._extra_manifest, **record}  # the record compared on reopening is the one stored
        manifest = build_manifest(
            num_samples=self.num_samples,
            topk=self.topk,
            num_classes=self.num_classes,
            teacher=self._identity["teacher"],
            dataset=self._identity["dataset"],
            augmentation_hash=self._identity["augmentation_hash"],
            extra=extra,
        )
        write_manifest_atomic(self.path, manifest)

    # ------------------------------------------------------------------------------------------------------------
    # progress queries (read the manifest from disk, so every rank sees what rank 0 published)
    # ------------------------------------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as it is on disk now."""
        return load_manifest(self.path)

    def completed_epochs(self) -> list[int]:
        """Sorted epochs whose files are finalised and recorded in the manifest."""
        return sorted(self.manifest["completed_epochs"])

    def missing_epochs(self, total_epochs: int) -> list[int]:
        """Epochs in `range(total_epochs)` that still need writing, in order (what a resumed run should do)."""
        done = set(self.completed_epochs())
        return [epoch for epoch in range(total_epochs) if epoch not in done]

    def first_incomplete_epoch(self, total_epochs: int) -> int:
        """Smallest epoch in `range(total_epochs)` not yet complete, or `total_epochs` when all of them are."""
        missing = self.missing_epochs(total_epochs)
        return missing[0] if missing else total_epochs

    # ------------------------------------------------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """Start writing `epoch` (0-based). Refuses an epoch that is already complete.

        Raises:
            CacheWriteError: another epoch is in progress, or `epoch` is complete (finished epochs are never
                overwritten; delete the cache directory to rebuild it).
        """
        if self._epoch is not None:
            raise CacheWriteError(f"epoch {self._epoch} is still in progress; call finish_epoch() or abort_epoch()")
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        epoch = int(epoch)
        if epoch in self.completed_epochs():
            raise CacheWriteError(
                f"epoch {epoch} of {self.path} is already complete; refusing to overwrite it "
                f"(resume with missing_epochs(), or delete {self.path / epoch_file_name(epoch)} to rebuild it)"
            )
        if self.rank == 0:
            self._remove_stale_files(epoch)
        self._shard_stream = open(self._shard_path(epoch, self.rank), "wb")  # truncates leftovers of a crashed run
        self._epoch = epoch
        self.records_written = 0

    def write(self, sample_ids: torch.Tensor | np.ndarray, seeds: torch.Tensor | np.ndarray,
              probs: torch.Tensor) -> None:
        """Store the top-K of full teacher probabilities for a batch.

        Args:
            sample_ids: [B] integer sample ids in [0, num_samples).
            seeds: [B] integer augmentation seeds in [0, 2**32).
            probs: [B, C] teacher probabilities (softmax output, any float dtype, any device).
        """
        if not isinstance(probs, torch.Tensor):
            probs = torch.as_tensor(probs)
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must have shape [B, num_classes={self.num_classes}], got {tuple(probs.shape)}")
        values, indices = torch.topk(probs.detach(), self.topk, dim=1)  # (B, K), sorted largest first
        self.write_topk(sample_ids, seeds, values, indices)

    def write_topk(self, sample_ids: torch.Tensor | np.ndarray, seeds: torch.Tensor | np.ndarray,
                   values: torch.Tensor | np.ndarray, indices: torch.Tensor | np.ndarray) -> None:
        """Store already-selected top-K probabilities for a batch.

        Args:
            sample_ids: [B] integer sample ids in [0, num_samples); each id exactly once per epoch over all ranks.
            seeds: [B] integer augmentation seeds in [0, 2**32).
            values: [B, K] probabilities in [0, 1] (stored as float16), preferably largest first.
            indices: [B, K] distinct class indices in [0, num_classes) per row.
        """
        if self._epoch is None:
            raise CacheWriteError("write() called outside an epoch; call begin_epoch(epoch) first")
        ids = _to_numpy(sample_ids, "sample_ids")
        seed_array = _to_numpy(seeds, "seeds")
        value_array = _to_numpy(values, "values")
        index_array = _to_numpy(indices, "indices")
        batch = self._check_batch(ids, seed_array, value_array, index_array)
        if batch == 0:
            return
        records = np.empty(batch, dtype=self.record_dtype)
        records["seed"] = seed_array
        records["values"] = value_array
        records["indices"] = index_array
        self._append(ids, records)

    def mark_skipped(self, sample_ids: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        """Record that the teacher did not see these samples this epoch (e.g. the loader skipped unreadable images).

        They count as written for the exactly-once check; reading them later raises `SkippedSampleError` instead of
        returning made-up targets. See also `finish_epoch(allow_missing=...)` when the skipped ids are not known.

        Args:
            sample_ids: [B] integer sample ids in [0, num_samples).
        """
        if self._epoch is None:
            raise CacheWriteError("mark_skipped() called outside an epoch; call begin_epoch(epoch) first")
        ids = _to_numpy(sample_ids, "sample_ids")
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"sample_ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.num_samples))
        if bad.size:
            raise ValueError(f"sample ids out of range [0, {self.num_samples}): {_shown(ids[bad])}")
        self._append(ids.astype(np.int64), np.zeros(ids.shape[0], dtype=self.record_dtype))

    def _append(self, ids: np.ndarray, records: np.ndarray) -> None:
        """Checksum `records` [B] for `ids` [B] and append them to this rank's shard."""
        if ids.shape[0] == 0:
            return
        records["crc"] = record_checksums(records, self._epoch, ids)
        entries = np.empty(ids.shape[0], dtype=self._entry_dtype)
        entries["sample_id"] = ids
        entries["record"] = records
        self._shard_stream.write(entries.tobytes())
        self.records_written += ids.shape[0]

    def _check_batch(self, ids: np.ndarray, seeds: np.ndarray, values: np.ndarray, indices: np.ndarray) -> int:
        """Validate one batch; returns B."""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"sample_ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        batch = ids.shape[0]
        if seeds.shape != (batch,) or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds must be [B={batch}] integers, got shape {seeds.shape} dtype {seeds.dtype}")
        for name, array in (("values", values), ("indices", indices)):
            if array.shape != (batch, self.topk):
                raise ValueError(f"{name} must have shape [B={batch}, K={self.topk}], got {array.shape}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        if batch == 0:
            return 0
        bad = np.flatnonzero((ids < 0) | (ids >= self.num_samples))
        if bad.size:
            raise ValueError(f"sample ids out of range [0, {self.num_samples}): {_shown(ids[bad])}")
        bad = np.flatnonzero((seeds < 0) | (seeds > MAX_SEED))
        if bad.size:
            raise ValueError(f"seeds must fit uint32 [0, 2**32); sample ids {_shown(ids[bad])} have "
                             f"{_shown(seeds[bad])}")
        as_float = values.astype(np.float16).astype(np.float32)  # judged as stored
        row_ok = (np.isfinite(as_float).all(axis=1) & (as_float >= 0).all(axis=1)
                  & (as_float <= 1 + PROBABILITY_TOLERANCE).all(axis=1)
                  & (as_float.sum(axis=1) <= 1 + PROBABILITY_TOLERANCE))
        if not row_ok.all():
            bad = np.flatnonzero(~row_ok)
            raise ValueError(
                f"values must be probabilities (each in [0, 1], top-K summing to <= 1); sample ids {_shown(ids[bad])} "
                "are not. Pass teacher_logits.softmax(-1), not logits."
            )
        bad = np.flatnonzero(as_float.max(axis=1) <= 0)
        if bad.size:  # all-zero values are the skipped-sample marker; a real top-1 probability is >= 1 / C
            raise ValueError(f"all K values are zero for sample ids {_shown(ids[bad])}; use mark_skipped() for samples "
                             "the teacher did not see")
        bad = np.flatnonzero(((indices < 0) | (indices >= self.num_classes)).any(axis=1))
        if bad.size:
            raise ValueError(f"class indices out of range [0, {self.num_classes}) for sample ids {_shown(ids[bad])}")
        if self.topk > 1:
            ordered = np.sort(indices, axis=1)
            bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
            if bad.size:
                raise ValueError(f"repeated class indices within a row for sample ids {_shown(ids[bad])}")
        return batch

    def finish_epoch(self, allow_missing: int = 0) -> Path:
        """Finalise the current epoch (collective: every rank must call it once its samples are written).

        Waits for all ranks; rank 0 merges the shards into the epoch file, checks coverage and checksums, renames it
        into place and records the epoch in the manifest; all ranks wait for that before returning.

        Args:
            allow_missing: at most this many never-written sample ids are stored as skipped (as by `mark_skipped`,
                e.g. for corrupt images the loader dropped) instead of failing; the manifest's `skipped_samples`
                counts them per epoch. Only rank 0's value is used. Repeated ids always fail.

        Returns:
            path of the finished epoch file.
        Raises:
            CacheWriteError: some sample ids are missing or written more than once, a shard is truncated or
                corrupted, or (on ranks > 0) rank 0 failed to finalise. The epoch then stays incomplete.
        """
        if self._epoch is None:
            raise CacheWriteError("finish_epoch() called without begin_epoch()")
        epoch = self._epoch
        self._close_shard()
        self._wait_for_all_ranks()
        failure: BaseException | None = None
        if self.rank == 0:
            try:
                self._merge_and_publish(epoch, allow_missing)
            except BaseException as error:  # noqa: BLE001 - re-raised after the other ranks are released
                failure = error
        self._wait_for_all_ranks()
        self._epoch = None
        if failure is not None:
            raise failure
        if epoch not in self.completed_epochs():
            raise CacheWriteError(f"rank 0 failed to finalise epoch {epoch} of {self.path}; see rank 0's error")
        return self.path / epoch_file_name(epoch)

    def abort_epoch(self) -> None:
        """Drop the epoch in progress on this rank (its temporary files are deleted; finished epochs are untouched)."""
        if self._epoch is None:
            return
        epoch = self._epoch
        self._close_shard()
        self._shard_path(epoch, self.rank).unlink(missing_ok=True)
        self._epoch = None

    def close(self) -> None:
        """Abort any unfinished epoch. Finished epochs stay."""
        self.abort_epoch()

    def __enter__(self) -> SparseLogitWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------------
    # finalisation (rank 0)
    # ------------------------------------------------------------------------------------------------------------

    def _shard_path(self, epoch: int, rank: int) -> Path:
        return self.path / shard_file_name(epoch, rank, self.world_size)

    def _close_shard(self) -> None:
        stream, self._shard_stream = self._shard_stream, None
        if stream is not None:
            stream.flush()
            os.fsync(stream.fileno())  # rank 0 may read it from another host over a shared filesystem
            stream.close()

    def _remove_stale_files(self, epoch: int) -> None:
        """Delete leftovers of an interrupted run of `epoch` that this run will not overwrite itself."""
        for stale in self.path.glob(epoch_temp_pattern(epoch)):  # a merge killed before its rename
            stale.unlink(missing_ok=True)
        current = {shard_file_name(epoch, rank, self.world_size) for rank in range(self.world_size)}
        for stale in self.path.glob(f"epoch_{epoch:04d}.rank*-of-*.partial"):
            if stale.name not in current:  # shards of another world size; ours are truncated by their owners
                stale.unlink(missing_ok=True)

    def _merge_and_publish(self, epoch: int, allow_missing: int) -> None:
        shard_paths = [self._shard_path(epoch, rank) for rank in range(self.world_size)]
        skipped = 0

        def merge(temp_path: str) -> None:
            nonlocal skipped
            skipped = self._merge_shards(epoch, shard_paths, Path(temp_path), allow_missing)

        try:
            # merged into a temporary file, flushed to disk, renamed into place and the rename made durable
            atomic_write(self.path / epoch_file_name(epoch), merge, durable=True)
            manifest = load_manifest(self.path)
            manifest["completed_epochs"] = sorted(set(manifest["completed_epochs"]) | {epoch})
            skipped_counts = {key: value for key, value in manifest.get("skipped_samples", {}).items()
                              if key != str(epoch)}
            if skipped:
                skipped_counts[str(epoch)] = skipped
            manifest["skipped_samples"] = dict(sorted(skipped_counts.items(), key=lambda item: int(item[0])))
            manifest["updated_time"] = utc_now()
            write_manifest_atomic(self.path, manifest)
        finally:
            for shard_path in shard_paths:
                shard_path.unlink(missing_ok=True)

    def _merge_shards(self, epoch: int, shard_paths: Sequence[Path], temp_path: Path, allow_missing: int) -> int:
        """Scatter all shard entries into `temp_path` by sample id; check exactly-once coverage and every CRC.

        Returns:
            the number of skipped samples in the epoch (marked, or missing and allowed).
        """
        entry_size, size = self._entry_dtype.itemsize, self.record_dtype.itemsize
        for shard_path in shard_paths:
            if not shard_path.is_file():
                raise CacheWriteError(f"epoch {epoch}: shard {shard_path} is missing; did every rank call "
                                      "begin_epoch/finish_epoch?")
            if shard_path.stat().st_size % entry_size:
                raise CacheWriteError(f"epoch {epoch}: shard {shard_path} is truncated ({shard_path.stat().st_size} "
                                      f"bytes is not a multiple of the {entry_size}-byte entry)")
        with open(temp_path, "wb") as stream:
            stream.truncate(self.num_samples * size)  # sparse file of zero (= unwritten) records
        merged = np.memmap(temp_path, dtype=self.record_dtype, mode="r+", shape=(self.num_samples,))
        counts = np.zeros(self.num_samples, dtype=np.int64)
        for shard_path in shard_paths:
            entry_count = shard_path.stat().st_size // entry_size
            if entry_count == 0:
                continue
            entries = np.memmap(shard_path, dtype=self._entry_dtype, mode="r", shape=(entry_count,))
            for start in range(0, entry_count, MERGE_CHUNK_RECORDS):
                chunk = np.asarray(entries[start : start + MERGE_CHUNK_RECORDS])
                ids = chunk["sample_id"]
                bad = np.flatnonzero((ids < 0) | (ids >= self.num_samples))
                if bad.size:
                    raise CacheWriteError(f"epoch {epoch}: shard {shard_path} holds out-of-range sample ids "
                                          f"{_shown(ids[bad])}")
                counts += np.bincount(ids, minlength=self.num_samples)
                merged[ids] = chunk["record"]
            del entries
        missing, repeated = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
        if missing.size and missing.size <= allow_missing and not repeated.size:
            filler = np.zeros(missing.size, dtype=self.record_dtype)  # skipped-sample records
            filler["crc"] = record_checksums(filler, epoch, missing)
            merged[missing] = filler
            missing = missing[:0]
        if missing.size or repeated.size:
            problems = []
            if missing.size:
                allowance = f", allow_missing={allow_missing}" if allow_missing else ""
                problems.append(f"{missing.size} sample ids never written ({_shown(missing)}{allowance})")
            if repeated.size:
                problems.append(f"{repeated.size} sample ids written more than once ({_shown(repeated)})")
            raise CacheWriteError(
                f"epoch {epoch} of {self.path}: every sample id in [0, {self.num_samples}) must be written exactly "
                f"once over all {self.world_size} rank(s); " + "; ".join(problems) + ". The epoch was not saved. "
                "Split the ids over ranks without padding or dropping; record samples the loader skips with "
                "mark_skipped() or finish_epoch(allow_missing=...)."
            )
        skipped = 0
        for start in range(0, self.num_samples, MERGE_CHUNK_RECORDS):
            chunk = np.asarray(merged[start : start + MERGE_CHUNK_RECORDS])
            ids = np.arange(start, start + chunk.shape[0])
            bad = np.flatnonzero(record_checksums(chunk, epoch, ids) != chunk["crc"])
            if bad.size:
                raise CacheWriteError(f"epoch {epoch}: records of sample ids {_shown(ids[bad])} fail their CRC32 "
                                      "after merging; a shard file was corrupted on disk")
            skipped += int(skipped_mask(chunk).sum())
        merged.flush()  # atomic_write fsyncs the file before renaming it
        del merged
        return skipped
