"""Exceptions raised by the sparse teacher-logit cache.

Every error names the file (and where it applies the epoch and sample ids) and says what was expected, so that a
failing training run can be traced to the exact bytes on disk. All of them derive from `LogitCacheError`, so callers
that only want "the cache is unusable" can catch that one class.
"""

from __future__ import annotations

from collections.abc import Sequence


class LogitCacheError(Exception):
    """Base class of every error raised by `vitkd.cache`."""


class CacheFormatError(LogitCacheError, ValueError):
    """The cache directory is not a readable cache: no manifest, unknown format version, missing or truncated file."""


class CacheMismatchError(LogitCacheError, ValueError):
    """A cache was built for a different teacher, dataset, augmentation recipe, top-K or class count.

    Attributes:
        mismatches: one `(field, expected, found)` tuple per disagreeing manifest field.
    """

    def __init__(self, message: str, mismatches: Sequence[tuple[str, object, object]]):
        super().__init__(message)
        self.mismatches = list(mismatches)


class CacheCorruptionError(LogitCacheError):
    """Stored records fail their CRC32 check.

    Attributes:
        file: the epoch file holding the records.
        epoch: the cached epoch.
        sample_ids: the failing sample ids (all of them, the message shows the first few).
    """

    def __init__(self, message: str, *, file: str, epoch: int, sample_ids: Sequence[int]):
        super().__init__(message)
        self.file = file
        self.epoch = epoch
        self.sample_ids = list(sample_ids)


class UnwrittenRecordError(CacheCorruptionError):
    """Records that were never written (all bytes zero: a hole in the file) were requested."""


class SkippedSampleError(LogitCacheError, LookupError):
    """Requested samples have no teacher targets: the caching run skipped them (e.g. unreadable images).

    Attributes:
        file: the epoch file.
        epoch: the cached epoch.
        sample_ids: the skipped sample ids that were requested.
    """

    def __init__(self, message: str, *, file: str, epoch: int, sample_ids: Sequence[int]):
        super().__init__(message)
        self.file = file
        self.epoch = epoch
        self.sample_ids = list(sample_ids)


class MissingEpochError(LogitCacheError, LookupError):
    """A training epoch has no cached teacher targets under the chosen policy."""


class CacheWriteError(LogitCacheError, RuntimeError):
    """Writing or finalising an epoch failed: bad call order, bad inputs, or shards that do not cover every sample."""
