"""Every user-facing error type of vitkd, in one leaf module that any layer may import.

Bad input (a recipe key, a path, a checkpoint, a cache, a benchmark argument) raises one of these with a message
that names what was wrong and what would be valid. The `vitkd` command prints such errors as one line and exits
with status 2 (`is_user_error`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key path and the valid choices."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the requested architecture."""


class CorruptImageError(OSError):
    """An image file could not be decoded; the message names the file."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss...); finished epochs stay saved in the run directory."""


class TrainingStopped(Exception):
    """Training stopped on request (SIGTERM, SIGINT) after writing a checkpoint of its last step.

    Attributes: signal_number, checkpoint (the path written)."""

    def __init__(self, message: str, signal_number: int, checkpoint: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------------------------------
# the sparse teacher-logit cache (`vitkd.cache`): every error names the file (and where it applies the epoch and
# sample ids) and what was expected, so a failing run can be traced to the exact bytes on disk


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


class EmbeddingImportError(LogitCacheError, ValueError):
    """A matrix or file list given to `vitkd import-embeddings` cannot become an embedding store: not a 2-D matrix,
    non-finite values, or keys that are unknown, missing or repeated (the message names the file, line and key)."""


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks (`vitkd.bench`)


class BenchInputError(ValueError):
    """Input to a benchmark (a model spec, an input size, a dataset) that cannot be measured as given."""


class UnknownModelError(BenchInputError):
    """A model name that neither timm nor `vitkd.models` knows; the message suggests close names."""


class InputSizeError(BenchInputError):
    """An input size the model cannot run on (wrong size for a fixed-size ViT, not divisible by the patch, ...)."""


class ClassCountMismatchError(BenchInputError):
    """The evaluation dataset has a different number of classes than the model's classifier head."""


# ---------------------------------------------------------------------------------------------------------------------
# downstream datasets (`vitkd.downstream.data`)


class DatasetError(ValueError):
    """A detection or segmentation dataset that cannot be read as given: an annotation naming a missing image or an
    unknown category, a box outside its image, a mask of the wrong size or with values outside the classes, images
    without annotations; the message names the file and the item."""


#: Error families that are bad input rather than bugs: the CLI prints them as one line and exits with status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, OSError, LogitCacheError)


def is_user_error(error: BaseException) -> bool:
    """True for bad input (see `USER_ERRORS`), False for anything that should keep its traceback."""
    return isinstance(error, USER_ERRORS)


def one_line_message(error: BaseException) -> str:
    """The error's message on one line. An error re-raised from a data-loader worker carries the worker's whole
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last line, the original
    message, is kept without the class-name prefix."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last.partition(": ")[2] or last
    return " ".join(text.split())


class DeployError(ValueError):
    """A model cannot be exported or run where it is deployed: the optional `deploy` packages are missing, the
    exporter meets an op or opset it cannot produce, or the exported file's output differs from PyTorch's."""
