"""Sparse teacher-logit cache: the teacher runs once, students read its top-K targets by (epoch, sample id).

Write with `SparseLogitWriter` (begin_epoch / write / finish_epoch, one or several ranks), read with
`open_cache(path)` (`check_compatible`, `require_epochs`, `epoch_for`, `read`), turn targets into dense soft labels
with `rebuild_soft_labels`. The on-disk layout is described in `vitkd.cache.format`.

Around the storage: `vitkd.cache.logit_job.build_logit_cache` (`vitkd cache-logits`) runs a recipe's teacher over
its augmented training stream; `vitkd.cache.run_identity` says what a cache must match to serve a run and holds the
one identity check (`identity_mismatches`, `mismatch_error`) that writers and readers run; training reads it
through `vitkd.tasks.classification.cached_teacher.CachedTeacher` (`teacher.cache` in a recipe); `vitkd cache-info
DIR [--verify]` describes a cache.

Per-sample embedding stores (`vitkd.cache.embedding_store`) reuse the same manifest and identity machinery: one
float16 row per training sample, written by `EmbeddingStoreWriter` (`vitkd embed-targets`, `vitkd import-embeddings`;
`vitkd.cache.embedding_job`) and read with `open_embedding_store(path).read(ids)`.
"""

from vitkd.errors import (
    CacheCorruptionError,
    CacheFormatError,
    CacheMismatchError,
    CacheWriteError,
    LogitCacheError,
    MissingEpochError,
    SkippedSampleError,
    UnwrittenRecordError,
)
from vitkd.cache.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    dataset_fingerprint,
    fingerprint_samples,
    hash_config,
    hash_state_dict,
    index_dtype_for,
    record_dtype,
    record_size,
)
from vitkd.cache.run_identity import (
    IDENTITY_FIELDS,
    expected_identity,
    identity_mismatches,
    mismatch_error,
    recipe_identity,
    teacher_identity,
)
from vitkd.cache.embedding_store import EmbeddingStore, EmbeddingStoreWriter, open_embedding_store
from vitkd.cache.reader import EpochIntegrity, IntegrityReport, SparseLogitReader, open_cache
from vitkd.cache.soft_labels import cached_argmax, rebuild_soft_labels
from vitkd.cache.writer import SparseLogitWriter

__all__ = [
    "FORMAT_VERSION",
    "IDENTITY_FIELDS",
    "MANIFEST_NAME",
    "CacheCorruptionError",
    "CacheFormatError",
    "CacheMismatchError",
    "CacheWriteError",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "EpochIntegrity",
    "IntegrityReport",
    "LogitCacheError",
    "MissingEpochError",
    "SparseLogitReader",
    "SkippedSampleError",
    "SparseLogitWriter",
    "UnwrittenRecordError",
    "cached_argmax",
    "dataset_fingerprint",
    "expected_identity",
    "fingerprint_samples",
    "hash_config",
    "hash_state_dict",
    "identity_mismatches",
    "index_dtype_for",
    "mismatch_error",
    "open_cache",
    "open_embedding_store",
    "rebuild_soft_labels",
    "recipe_identity",
    "record_dtype",
    "record_size",
    "teacher_identity",
]
