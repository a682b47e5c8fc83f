"""Per-sample embedding store: one fixed-width float16 row per training sample, read by sample id.

Targets computed once, offline, by any model (GPT4Image's CLIP text embeddings of each image's caption, a
teacher's pooled features, ...) live in one directory::

    manifest.json     format name + version, num_samples, dim, dtype, the training dataset's fingerprint
                      (`vitkd.cache.run_identity.dataset_record`), where the rows came from (`source`),
                      rows_written and complete
    embeddings.f16    num_samples x dim little-endian float16, row-major, no header: row i (sample id i) lies at
                      byte offset i * 2 * dim, so reading a sample is one seek

Rows are written in sample-id order (`EmbeddingStoreWriter.append`): each chunk is flushed to disk (fsync) before
the manifest, rewritten durably and atomically (`vitkd.cache.format.write_manifest_atomic`), records how many rows
are done. A writer killed at any point leaves a store whose manifest counts only rows that are on disk; reopening
it with the same identity cuts off any bytes past them and continues there. A store for other data, another width
or another source refuses to be continued, naming each differing field (the logit cache's one identity check,
`identity_mismatches` / `mismatch_error`). Readers (`open_embedding_store`) accept complete stores only.

Rows are stored as they came (not normalised); values must be finite in float16 (|x| <= 65504).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vitkd.cache.format import (check_manifest_header, is_positive_int, manifest_path, normalise_json_value,
                                read_manifest, sample_id_array, shown_ids, utc_now, write_manifest_atomic)
from vitkd.cache.run_identity import identity_mismatches, mismatch_error
from vitkd.errors import CacheFormatError, CacheWriteError

STORE_FORMAT_NAME = "vitkd-embeddings"
STORE_FORMAT_VERSION = 1
SUPPORTED_STORE_VERSIONS = (1,)
DATA_FILE = "embeddings.f16"
ROW_DTYPE = np.dtype("<f2")
REQUIRED_STORE_FIELDS = ("format", "format_version", "num_samples", "dim", "dtype", "row_size", "data_file",
                         "dataset", "source", "rows_written", "complete")
BUILD_HINT = ("build one with `vitkd embed-targets RECIPE (--model NAME | --teacher) --output DIR` or `vitkd "
              "import-embeddings MATRIX --files LIST.txt RECIPE --output DIR`")


def rebuild_command(source: Any) -> str:
    """The command that builds a store from the same kind of source, quoted for messages."""
    kind = source.get("kind") if isinstance(source, Mapping) else None
    if kind == "teacher":
        return "`vitkd embed-targets RECIPE --teacher --output NEW_DIR`"
    if kind == "model":
        name = (source.get("model") or {}).get("name", "NAME")
        return f"`vitkd embed-targets RECIPE --model {name} [--checkpoint PATH] --output NEW_DIR`"
    if kind == "import":
        return "`vitkd import-embeddings MATRIX --files LIST.txt RECIPE --output NEW_DIR`"
    return BUILD_HINT.replace("build one with ", "")


def store_identity(num_samples: int, dim: int, dataset: Mapping[str, Any], source: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The identity fields of a store, as its manifest holds them (an `identity_mismatches` expectation)."""
    return normalise_json_value({"num_samples": int(num_samples), "dim": int(dim), "dataset": dict(dataset),
                                 "source": dict(source)})


# ----------------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------------


def build_store_manifest(*, num_samples: int, dim: int, dataset: Mapping[str, Any], source: Mapping[str, Any],
                         extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A fresh manifest (no rows written) of a store with this identity; `extra` adds descriptive fields."""
    from vitkd import __version__ as vitkd_version

    now = utc_now()
    manifest = {
        "format": STORE_FORMAT_NAME, "format_version": STORE_FORMAT_VERSION, "vitkd_version": vitkd_version,
        "created_time": now, "updated_time": now,
        **store_identity(num_samples, dim, dataset, source),
        "dtype": "float16", "byte_order": "little", "row_size": ROW_DTYPE.itemsize * int(dim), "data_file": DATA_FILE,
        "rows_written": 0, "complete": False,
    }
    clashing = sorted(set(extra or {}) & set(manifest))
    if clashing:
        raise ValueError(f"extra manifest fields {clashing} clash with built-in fields; choose other names")
    manifest.update(normalise_json_value(dict(extra or {})))
    return manifest


def load_store_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an embedding store's `manifest.json`.

    Raises:
        CacheFormatError: no directory, no manifest (not a store), not JSON, another format (e.g. a logit cache), an
            unknown version, missing fields or values that disagree (row size, rows written); names the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CacheFormatError(f"embedding store {path} does not exist (not a directory); {BUILD_HINT}")
    manifest = read_manifest(path, kind="embedding store", missing_hint=f"not an embedding store; {BUILD_HINT}")
    file = manifest_path(path)
    check_manifest_header(manifest, file, kind="embedding store", format_name=STORE_FORMAT_NAME,
                          versions=SUPPORTED_STORE_VERSIONS, required=REQUIRED_STORE_FIELDS,
                          hint=f": not an embedding store; {BUILD_HINT}")
    for field in ("num_samples", "dim"):
        if not is_positive_int(manifest[field]):
            raise CacheFormatError(f"{file}: {field!r} must be a positive integer, found {manifest[field]!r}")
    expected = {"dtype": "float16", "row_size": ROW_DTYPE.itemsize * manifest["dim"], "data_file": DATA_FILE}
    for field, value in expected.items():
        if manifest[field] != value:
            raise CacheFormatError(f"{file}: {field!r} is {manifest[field]!r}, expected {value!r} for dim "
                                   f"{manifest['dim']}")
    rows, complete = manifest["rows_written"], manifest["complete"]
    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= manifest["num_samples"]:
        raise CacheFormatError(f"{file}: 'rows_written' must be an integer in [0, {manifest['num_samples']}], found "
                               f"{rows!r}")
    if not isinstance(complete, bool) or (complete and rows != manifest["num_samples"]):
        raise CacheFormatError(f"{file}: 'complete' is {complete!r} with {rows} of {manifest['num_samples']} rows "
                               f"written")
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------


class EmbeddingStoreWriter:
    """Writes (or continues) a store, rows in sample-id order, durably after every `append`.

    Usage::

        with EmbeddingStoreWriter(path, num_samples=len(dataset), dim=D, dataset=dataset_record(dataset, data),
                                  source={"kind": "model", ...}) as writer:
            for rows in chunks_from(writer.rows_written):      # (B, D) rows of the next sample ids, in order
                writer.append(rows)
            writer.finish()

    Args:
        path: store directory (created if needed).
        num_samples: N; rows 0 .. N - 1 are sample ids.
        dim: D, the width of a row.
        dataset: the training dataset's fingerprint (`dataset_record`), checked against the data a store is used on.
        source: where the rows come from (a JSON-like record: model identity, input transform, or the imported
            files' hashes); part of the identity.
        extra_manifest: descriptive fields stored in a new store's manifest (not compared on reopening).

    Attributes:
        rows_written: rows on disk (where the next `append` goes). complete: every row is written.

    Raises:
        CacheMismatchError: `path` holds a store of another num_samples, dim, dataset or source (each named).
        CacheFormatError: `path` holds a data file but no manifest, or a data file shorter than its manifest says.
    """

    def __init__(self, path: str | os.PathLike, *, num_samples: int, dim: int, dataset: Mapping[str, Any],
                 source: Mapping[str, Any], extra_manifest: Optional[Mapping[str, Any]] = None) -> None:
        for name, value in (("num_samples", num_samples), ("dim", dim)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.path = Path(path)
        self.num_samples, self.dim = int(num_samples), int(dim)
        self.row_size = ROW_DTYPE.itemsize * self.dim
        self._identity = store_identity(num_samples, dim, dataset, source)
        self.path.mkdir(parents=True, exist_ok=True)
        self.data_path = self.path / DATA_FILE
        if manifest_path(self.path).is_file():
            self.manifest = load_store_manifest(self.path)
            mismatches = identity_mismatches(self.manifest, self._identity)
            if mismatches:
                raise mismatch_error(mismatches, self.path, action="continue it", kind="embedding store",
                                     rebuild=f"write into a new directory (or delete {self.path} to rebuild it); "
                                             f"it was built with {rebuild_command(self.manifest['source'])}")
        else:
            if self.data_path.exists():
                raise CacheFormatError(f"{self.path} holds {DATA_FILE} but no manifest.json; refusing to overwrite "
                                       f"it. Use an empty directory or restore the manifest.")
            self.manifest = build_store_manifest(num_samples=num_samples, dim=dim, dataset=self._identity["dataset"],
                                                 source=self._identity["source"], extra=extra_manifest)
            write_manifest_atomic(self.path, self.manifest)
        self._stream = self._open_data_file()

    @property
    def rows_written(self) -> int:
        return int(self.manifest["rows_written"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def _open_data_file(self):
        """The data file opened for writing at `rows_written`, bytes past it (an interrupted chunk) cut off."""
        done = self.rows_written * self.row_size
        if not self.data_path.exists():
            if done:
                raise CacheFormatError(f"{self.data_path} is missing, but the manifest records {self.rows_written} "
                                       f"rows; delete {self.path} and rebuild the store")
            self.data_path.touch()
        size = self.data_path.stat().st_size
        if size < done:
            raise CacheFormatError(f"{self.data_path} is truncated: {size} bytes, but the manifest records "
                                   f"{self.rows_written} rows of {self.row_size} bytes ({done}); delete {self.path} "
                                   f"and rebuild the store")
        stream = open(self.data_path, "r+b")
        stream.truncate(done)
        stream.seek(done)
        return stream

    def append(self, rows: torch.Tensor | np.ndarray) -> None:
        """Write the rows of the next sample ids (`rows_written` onwards) and record them, durably.

        Args:
            rows: (B, dim) numbers, stored as float16.
        Raises:
            CacheWriteError: wrong shape, more rows than samples left, a finished store, or rows that are not finite
                in float16 (the message names their sample ids).
        """
        if self.complete:
            raise CacheWriteError(f"embedding store {self.path} is complete; refusing to append to it")
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().to("cpu", torch.float32).numpy()
        rows = np.asarray(rows)
        start = self.rows_written
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise CacheWriteError(f"rows must have shape (B, dim={self.dim}), got {rows.shape}")
        if start + rows.shape[0] > self.num_samples:
            raise CacheWriteError(f"{rows.shape[0]} rows at row {start} overrun the store's {self.num_samples} "
                                  f"samples")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf, refused just below
            stored = rows.astype(ROW_DTYPE)  # (B, dim) little-endian float16
        bad = np.flatnonzero(~np.isfinite(stored).all(axis=1))
        if bad.size:
            raise CacheWriteError(f"rows of sample ids {shown_ids(bad + start)} are not finite in float16 (NaN, inf or "
                                  f"|x| > 65504); nothing of this chunk was recorded")
        self._stream.write(np.ascontiguousarray(stored).tobytes())
        self._stream.flush()
        os.fsync(self._stream.fileno())  # the rows are on disk before the manifest counts them
        self.manifest["rows_written"] = start + rows.shape[0]
        self.manifest["updated_time"] = utc_now()
        write_manifest_atomic(self.path, self.manifest)

    def finish(self) -> None:
        """Mark the store complete once every row is written (readers accept complete stores only)."""
        if self.rows_written != self.num_samples:
            raise CacheWriteError(f"embedding store {self.path} holds {self.rows_written} of {self.num_samples} "
                                  f"rows; append the rest before finish()")
        if not self.complete:
            self.manifest["complete"] = True
            self.manifest["updated_time"] = utc_now()
            write_manifest_atomic(self.path, self.manifest)

    def close(self) -> None:
        """Close the data file; every appended row stays recorded."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> EmbeddingStoreWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------


class EmbeddingStore:
    """A complete store, memory-mapped read-only (one seek per sample; DataLoader workers share the page cache).

    Attributes:
        path, manifest, num_samples (N), dim (D), dataset (the fingerprint it was built for), source.

    Raises:
        CacheFormatError: not a store (missing directory or manifest, another format), an incomplete store (its
            writer stopped: the message says how many rows are done and how to continue), or a data file that is
            missing or of the wrong size.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = load_store_manifest(self.path)
        self.num_samples: int = self.manifest["num_samples"]
        self.dim: int = self.manifest["dim"]
        self.dataset: dict[str, Any] = self.manifest["dataset"]
        self.source: dict[str, Any] = self.manifest["source"]
        if not self.manifest["complete"]:
            raise CacheFormatError(f"embedding store {self.path} is incomplete: {self.manifest['rows_written']} of "
                                   f"{self.num_samples} rows written (the run building it stopped); run "
                                   f"{rebuild_command(self.source).replace('NEW_DIR', str(self.path))} again to "
                                   f"continue it")
        self.data_path = self.path / DATA_FILE
        expected = self.num_samples * self.dim * ROW_DTYPE.itemsize
        size = self.data_path.stat().st_size if self.data_path.is_file() else None
        if size != expected:
            state = "missing" if size is None else f"{'truncated' if size < expected else 'too large'}: {size} bytes"
            raise CacheFormatError(f"embedding store data file {self.data_path} is {state}; expected {expected} "
                                   f"bytes = {self.num_samples} rows x {self.dim} float16; rebuild it with "
                                   f"{rebuild_command(self.source)}")
        self._rows: Optional[np.memmap] = None

    def _memmap(self) -> np.memmap:
        if self._rows is None:
            self._rows = np.memmap(self.data_path, dtype=ROW_DTYPE, mode="r", shape=(self.num_samples, self.dim))
        return self._rows

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # pickled into workers / deep-copied: re-map there instead of copying rows
        state["_rows"] = None
        return state

    def read(self, sample_ids: torch.Tensor | np.ndarray | Iterable[int]) -> torch.Tensor:
        """Rows of some samples.

        Args:
            sample_ids: (B,) integer sample ids in [0, N), any order, repeats allowed.
        Returns:
            (B, dim) float32 CPU tensor.
        Raises:
            ValueError: not a 1-D integer array; IndexError: ids out of range (named).
        """
        ids = sample_id_array(sample_ids, self.num_samples, f"embedding store {self.path}")  # (B,) int64
        return torch.from_numpy(self._memmap()[ids].astype(np.float32))  # (B, dim)

    def check_dataset(self, dataset_record: Mapping[str, Any]) -> None:
        """Refuse a store built for other training data.

        Args:
            dataset_record: the run's `vitkd.cache.run_identity.dataset_record(train_dataset, recipe.data)`.
        Raises:
            CacheMismatchError: naming each differing field (`dataset.samples_hash`, `dataset.num_samples`, ...)
                and the command that rebuilds the store for this data.
        """
        mismatches = identity_mismatches(self.manifest, {"dataset": dict(dataset_record)})
        if mismatches:
            raise mismatch_error(mismatches, self.path, action="use it for this run", kind="embedding store",
                                 rebuild=f"rebuild it for this recipe's training data into a new directory with "
                                         f"{rebuild_command(self.source)}, or point the loss's `store` at a store "
                                         f"built for this data")


def open_embedding_store(path: str | os.PathLike) -> EmbeddingStore:
    """Open a complete store for reading (see `EmbeddingStore`)."""
    return EmbeddingStore(path)
