"""`SparseLogitReader`: cached teacher targets by (epoch, sample id), checked record by record.

Epoch files are memory-mapped read-only, so a batch read touches one record-sized region per sample (one seek)
and the operating system's page cache is shared by every DataLoader worker. Each returned record's CRC32 is checked;
a corrupted or never-written record raises instead of reaching the loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vitkd.errors import (
    CacheCorruptionError,
    CacheFormatError,
    MissingEpochError,
    SkippedSampleError,
    UnwrittenRecordError,
)
from vitkd.cache.format import (
    MANIFEST_NAME,
    epoch_file_name,
    inspect_command,
    load_manifest,
    record_checksums,
    record_dtype,
    sample_id_array,
    skipped_mask,
    unwritten_mask,
    utc_now,
)
from vitkd.cache.run_identity import identity_mismatches, mismatch_error

EPOCH_POLICIES = ("cycle", "fail")
VERIFY_CHUNK_RECORDS = 1 << 16  # records checked per step in verify() (bounded memory, smooth progress bar)
_SHOWN_IDS = 10  # sample ids listed in a message


def _shown(ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:_SHOWN_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


@dataclass
class EpochIntegrity:
    """Integrity of one cached epoch file.

    Attributes:
        epoch: the cached epoch.
        file: its record file.
        problem: why the file could not be scanned (missing, wrong size), or None.
        num_records: records scanned.
        corrupted_ids: sample ids whose CRC32 fails.
        unwritten_ids: sample ids whose record is all zero (never written).
        skipped_ids: sample ids the caching run skipped on purpose (not a failure; reading them raises).
    """

    epoch: int
    file: Path
    problem: str | None = None
    num_records: int = 0
    corrupted_ids: list[int] = field(default_factory=list)
    unwritten_ids: list[int] = field(default_factory=list)
    skipped_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.corrupted_ids and not self.unwritten_ids

    def to_text(self) -> str:
        if self.problem is not None:
            return f"epoch {self.epoch}: FAILED - {self.problem}"
        skipped = f", {len(self.skipped_ids)} skipped samples ({_shown(self.skipped_ids)})" if self.skipped_ids else ""
        if self.ok:
            return f"epoch {self.epoch}: ok ({self.num_records} records{skipped}, {self.file.name})"
        parts = []
        if self.corrupted_ids:
            parts.append(f"{len(self.corrupted_ids)} records fail CRC32 (sample ids {_shown(self.corrupted_ids)})")
        if self.unwritten_ids:
            parts.append(f"{len(self.unwritten_ids)} records never written (sample ids {_shown(self.unwritten_ids)})")
        return f"epoch {self.epoch}: FAILED - {self.file.name}: " + "; ".join(parts) + skipped


@dataclass
class IntegrityReport:
    """Result of `SparseLogitReader.verify`: one `EpochIntegrity` per checked epoch."""

    cache_dir: Path
    epochs: list[EpochIntegrity]
    checked_time: str = field(default_factory=utc_now)

    @property
    def ok(self) -> bool:
        return all(epoch.ok for epoch in self.epochs)

    @property
    def num_records(self) -> int:
        return sum(epoch.num_records for epoch in self.epochs)

    def to_text(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        lines = [f"integrity of {self.cache_dir}: {verdict} ({self.num_records} records in {len(self.epochs)} epochs "
                 f"checked {self.checked_time})"]
        lines.extend("  " + epoch.to_text() for epoch in self.epochs)
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise `CacheCorruptionError` (or `CacheFormatError` for a missing/truncated file) when not ok."""
        for epoch in self.epochs:
            if epoch.problem is not None:
                raise CacheFormatError(f"{self.cache_dir}: {epoch.problem}")
        failed = [epoch for epoch in self.epochs if not epoch.ok]
        if failed:
            first = failed[0]
            raise CacheCorruptionError(self.to_text(), file=str(first.file), epoch=first.epoch,
                                       sample_ids=first.corrupted_ids + first.unwritten_ids)


class SparseLogitReader:
    """Reads a sparse teacher-logit cache written by `SparseLogitWriter`.

    Args:
        path: cache directory.
        check_files: check at open that every completed epoch's file exists and has exactly
            `num_samples * record_size` bytes (turn off only to inspect a damaged cache, as `vitkd cache-info`
            does).

    Attributes:
        manifest: the manifest dict (see `vitkd.cache.format.build_manifest`).
        completed_epochs: sorted cached epochs.

    Raises:
        CacheFormatError: missing manifest, unknown format version, missing or truncated epoch file; the message names
            the file and the expected value.
    """

    def __init__(self, path: str | os.PathLike, *, check_files: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CacheFormatError(f"logit cache directory {self.path} does not exist")
        self.manifest: dict[str, Any] = load_manifest(self.path)
        self.num_samples: int = self.manifest["num_samples"]
        self.topk: int = self.manifest["topk"]
        self.num_classes: int = self.manifest["num_classes"]
        self.record_size: int = self.manifest["record_size"]
        self.record_dtype = record_dtype(self.topk, self.manifest["index_dtype"])
        self.completed_epochs: list[int] = sorted(self.manifest["completed_epochs"])
        self.epoch_policy = "fail"
        self._memmaps: dict[int, np.memmap] = {}
        if check_files:
            for epoch in self.completed_epochs:
                self._check_epoch_file(epoch)

    # ------------------------------------------------------------------------------------------------------------
    # files
    # ------------------------------------------------------------------------------------------------------------

    def epoch_file(self, epoch: int) -> Path:
        """Record file of a cached epoch."""
        return self.path / epoch_file_name(epoch)

    def epoch_file_problem(self, epoch: int) -> str | None:
        """Why `epoch`'s file cannot be read (missing, wrong size), or None when its size is right."""
        file = self.epoch_file(epoch)
        expected = self.num_samples * self.record_size
        if not file.is_file():
            return (f"epoch file {file} is missing, but {MANIFEST_NAME} lists epoch {epoch} as complete "
                    f"(expected {expected} bytes = {self.num_samples} samples x {self.record_size} bytes)")
        actual = file.stat().st_size
        if actual != expected:
            state = "truncated" if actual < expected else "too large"
            return (f"epoch file {file} is {state}: {actual} bytes, expected {expected} "
                    f"(= {self.num_samples} samples x {self.record_size}-byte records)")
        return None

    def _check_epoch_file(self, epoch: int) -> None:
        """Raise `CacheFormatError` when `epoch`'s file is missing or has the wrong size."""
        problem = self.epoch_file_problem(epoch)
        if problem is not None:
            raise CacheFormatError(f"logit cache {self.path}: {problem}; {inspect_command(self.path)} lists the "
                                   "epochs and files it has")

    def _records(self, epoch: int) -> np.memmap:
        """[num_samples] structured memmap of an epoch file (opened lazily, once per process)."""
        records = self._memmaps.get(epoch)
        if records is None:
            if epoch not in self.completed_epochs:
                raise MissingEpochError(
                    f"epoch {epoch} is not in logit cache {self.path} (cached epochs: {self.completed_epochs}); "
                    f"map training epochs with epoch_for(), see {inspect_command(self.path)}"
                )
            self._check_epoch_file(epoch)
            records = np.memmap(self.epoch_file(epoch), dtype=self.record_dtype, mode="r", shape=(self.num_samples,))
            self._memmaps[epoch] = records
        return records

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn/forkserver pickle the reader; re-map there instead of copying files.
        state = self.__dict__.copy()
        state["_memmaps"] = {}
        return state

    # ------------------------------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------------------------------

    def read(self, epoch: int, sample_ids: torch.Tensor | np.ndarray | Iterable[int]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher targets of some samples in one cached epoch, CRC-checked.

        Args:
            epoch: a cached epoch (use `epoch_for(train_epoch)` to map a training epoch).
            sample_ids: [B] integer sample ids in any order (repeats allowed).
        Returns:
            seeds: [B] int64 augmentation seeds the teacher saw.
            values: [B, K] float16 top-K probabilities (largest first when written with `write`).
            indices: [B, K] int64 class indices (widened from the stored int16/int32, ready for gather/scatter).
        Raises:
            MissingEpochError: `epoch` is not cached.
            CacheCorruptionError: a record fails its CRC32 (message names file, epoch and sample ids).
            UnwrittenRecordError: a record was never written (all zero).
            SkippedSampleError: the caching run skipped a requested sample (`mark_skipped`), so it has no targets.
        """
        ids = sample_id_array(sample_ids, self.num_samples, f"cache {self.path}")  # (B,) int64
        records = np.asarray(self._records(int(epoch))[ids])  # (B,) one record-sized read per sample
        self._check_records(int(epoch), ids, records)
        seeds = torch.from_numpy(records["seed"].astype(np.int64))
        values = torch.from_numpy(np.ascontiguousarray(records["values"]))
        indices = torch.from_numpy(records["indices"].astype(np.int64))
        return seeds, values, indices

    def _check_records(self, epoch: int, ids: np.ndarray, records: np.ndarray) -> None:
        if records.shape[0] == 0:
            return
        file = str(self.epoch_file(epoch))
        failing = record_checksums(records, epoch, ids) != records["crc"]
        if not failing.any():
            skipped = skipped_mask(records)
            if skipped.any():
                bad_ids = np.unique(ids[skipped])
                raise SkippedSampleError(
                    f"epoch file {file} (epoch {epoch}): sample ids {_shown(bad_ids)} were skipped when the cache was "
                    "built (e.g. unreadable images), so they have no teacher targets; skip them in training too "
                    f"({inspect_command(self.path, verify=True)} lists every skipped sample).",
                    file=file, epoch=epoch, sample_ids=bad_ids.tolist(),
                )
            return
        repair = (f"Run {inspect_command(self.path, verify=True)} to find every damaged record and rebuild the damaged "
                  "epoch with `vitkd cache-logits`.")
        unwritten = failing & unwritten_mask(records)
        if unwritten.any():
            bad_ids = np.unique(ids[unwritten])
            raise UnwrittenRecordError(
                f"epoch file {file} (epoch {epoch}): records of sample ids {_shown(bad_ids)} were never written "
                f"(all zero bytes); the file has holes. {repair}",
                file=file, epoch=epoch, sample_ids=bad_ids.tolist(),
            )
        bad_ids = np.unique(ids[failing])
        raise CacheCorruptionError(
            f"epoch file {file} (epoch {epoch}): CRC32 mismatch for sample ids {_shown(bad_ids)}; the cache is "
            f"corrupted. {repair}",
            file=file, epoch=epoch, sample_ids=bad_ids.tolist(),
        )

    # ------------------------------------------------------------------------------------------------------------
    # compatibility and epoch mapping
    # ------------------------------------------------------------------------------------------------------------

    def check_compatible(self, expected: Mapping[str, Any]) -> None:
        """Check that the cache was built for this run.

        Args:
            expected: any of `num_samples`, `topk`, `num_classes`, `teacher` (alias `teacher_id`), `dataset` (alias
                `dataset_fingerprint`), `augmentation` (the record), `augmentation_hash`; fields left out are not
                checked (see `vitkd.cache.run_identity.identity_mismatches`, `expected_identity`,
                `recipe_identity`).
        Raises:
            CacheMismatchError: listing every differing setting with this run's and the cache's value.
            ValueError: `expected` has a key that is not one of the fields above.
        """
        mismatches = identity_mismatches(self.manifest, expected)
        if mismatches:
            raise mismatch_error(mismatches, self.path, action="use it for this run")

    def require_epochs(self, num_train_epochs: int, policy: str = "fail") -> list[int]:
        """Declare how many training epochs will read the cache and how to serve epochs it lacks.

        Args:
            num_train_epochs: training epochs 0 .. num_train_epochs - 1 will call `epoch_for`.
            policy: "fail": every training epoch must be cached; "cycle": training epoch e reads cached epoch
                `completed_epochs[e % num_cached]` (= e % num_cached when epochs 0 .. num_cached - 1 are cached).
        Returns:
            the cached epoch used by each training epoch, for logging.
        Raises:
            MissingEpochError: the cache holds no epochs, or (policy "fail") a training epoch is not cached.
        """
        if policy not in EPOCH_POLICIES:
            raise ValueError(f"epoch policy must be one of {EPOCH_POLICIES}, got {policy!r}")
        if not self.completed_epochs:
            raise MissingEpochError(f"logit cache {self.path} holds no completed epochs; run `vitkd cache-logits` "
                                    f"(see {inspect_command(self.path)})")
        if policy == "fail":
            missing = [epoch for epoch in range(num_train_epochs) if epoch not in self.completed_epochs]
            if missing:
                raise MissingEpochError(
                    f"training for {num_train_epochs} epochs needs cached epochs 0..{num_train_epochs - 1}, but "
                    f"logit cache {self.path} lacks epochs {_shown(missing)} (cached: {self.completed_epochs}). "
                    f"Cache more epochs or use policy='cycle'; {inspect_command(self.path)} shows what it holds."
                )
        self.epoch_policy = policy
        return [self.epoch_for(epoch) for epoch in range(num_train_epochs)]

    def epoch_for(self, train_epoch: int) -> int:
        """Cached epoch holding the targets of training epoch `train_epoch` under the policy of `require_epochs`.

        Raises:
            MissingEpochError: policy "fail" (the default) and `train_epoch` is not cached.
        """
        if train_epoch < 0:
            raise ValueError(f"train_epoch must be non-negative, got {train_epoch}")
        if self.epoch_policy == "cycle" and self.completed_epochs:
            return self.completed_epochs[train_epoch % len(self.completed_epochs)]
        if train_epoch in self.completed_epochs:
            return train_epoch
        raise MissingEpochError(
            f"training epoch {train_epoch} is not in logit cache {self.path} (cached epochs: "
            f"{self.completed_epochs}); cache it, or call require_epochs(n, policy='cycle') to reuse cached epochs "
            f"(see {inspect_command(self.path)})"
        )

    # ------------------------------------------------------------------------------------------------------------
    # integrity
    # ------------------------------------------------------------------------------------------------------------

    def verify(self, epochs: Iterable[int] | None = None, progress: bool = True,
               raise_on_error: bool = False) -> IntegrityReport:
        """Check every record's CRC32 in the given epochs (default: all cached epochs).

        Args:
            epochs: cached epochs to check; None for all.
            progress: show a tqdm bar over records.
            raise_on_error: raise instead of returning a failed report.
        Returns:
            the report (`.ok`, `.to_text()`).
        """
        epochs = self.completed_epochs if epochs is None else [int(epoch) for epoch in epochs]
        unknown = [epoch for epoch in epochs if epoch not in self.completed_epochs]
        if unknown:
            raise MissingEpochError(f"cannot verify epochs {unknown}: not in logit cache {self.path} "
                                    f"(cached epochs: {self.completed_epochs}; see {inspect_command(self.path)})")
        results = [EpochIntegrity(epoch=epoch, file=self.epoch_file(epoch), problem=self.epoch_file_problem(epoch))
                   for epoch in epochs]
        readable = [result for result in results if result.problem is None]
        with tqdm(total=len(readable) * self.num_samples, unit="rec", unit_scale=True, desc="verify cache",
                  disable=not progress) as bar:
            for result in readable:
                records = self._records(result.epoch)
                for start in range(0, self.num_samples, VERIFY_CHUNK_RECORDS):
                    chunk = np.asarray(records[start : start + VERIFY_CHUNK_RECORDS])
                    ids = np.arange(start, start + chunk.shape[0])
                    failing = record_checksums(chunk, result.epoch, ids) != chunk["crc"]
                    if failing.any():
                        unwritten = failing & unwritten_mask(chunk)
                        result.unwritten_ids.extend(ids[unwritten].tolist())
                        result.corrupted_ids.extend(ids[failing & ~unwritten].tolist())
                    result.skipped_ids.extend(ids[~failing & skipped_mask(chunk)].tolist())
                    result.num_records += chunk.shape[0]
                    bar.update(chunk.shape[0])
        report = IntegrityReport(cache_dir=self.path, epochs=results)
        if raise_on_error:
            report.raise_if_failed()
        return report


def open_cache(path: str | os.PathLike, *, check_files: bool = True) -> SparseLogitReader:
    """Open a sparse teacher-logit cache for reading (see `SparseLogitReader`)."""
    return SparseLogitReader(path, check_files=check_files)
