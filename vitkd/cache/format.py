"""On-disk format of the sparse teacher-logit cache: record layout, checksums, file names, manifest and hashes.

A cache is one directory::

    manifest.json        what was cached, by which teacher, on which data, and which epochs are complete
    epoch_0000.bin       num_samples fixed-size records, record i belongs to sample id i
    epoch_0001.bin       ...

Record layout (little-endian, packed, no padding; K = top-K)::

    offset      size   field     dtype
    0           4      seed      uint32          augmentation seed the teacher saw for this sample in this epoch
    4           2K     values    float16[K]      teacher top-K probabilities, largest first
    4 + 2K      sK     indices   int16/int32[K]  their class indices (s = 2 when num_classes <= 32767, else 4)
    4 + 2K + sK 4      crc       uint32          CRC32 (zlib/IEEE) of the bytes described below

so a record is `4K + 8` bytes with int16 indices (`6K + 8` with int32) and record i of an epoch lies at byte
offset `i * record_size`: reading any sample is one seek.

The CRC32 covers `epoch (uint32 LE) || sample_id (uint64 LE) || record bytes 0 .. record_size - 4`. Binding the
epoch and sample id into the checksum means a record copied to the wrong offset or the wrong epoch file fails its
check just like a flipped bit. A record that was never written is all zero bytes; its stored CRC (0) cannot match
because no valid record is all zero (its top-1 probability is positive), and it is reported as "never written"
rather than "corrupted". A record with a valid CRC whose K values are all zero marks a sample the teacher never
saw in that epoch (the caching run skipped it, e.g. an unreadable image); reading it raises `SkippedSampleError`.

The manifest machinery here (`read_manifest`, `check_manifest_header`, `write_manifest_atomic`, the dataset
fingerprints and hashes) is shared with the per-sample embedding store (`vitkd.cache.embedding_store`).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkd.errors import CacheFormatError
from vitkd.files import atomic_write

FORMAT_NAME = "vitkd-sparse-logits"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
EPOCH_FILE_PATTERN = "epoch_{epoch:04d}.bin"
#: K when a recipe leaves `teacher.cache_topk` unset: TinyViT's ImageNet-1k setting (use 100 for 21k-class data).
DEFAULT_TOPK = 10
MAX_CLASSES_FOR_INT16 = 32767  # largest class index an int16 holds
SEED_DTYPE = np.dtype("<u4")
VALUE_DTYPE = np.dtype("<f2")
CHECKSUM_DESCRIPTION = "crc32(epoch uint32 LE || sample_id uint64 LE || record[0:record_size-4])"

REQUIRED_MANIFEST_FIELDS = (
    "format",
    "format_version",
    "num_samples",
    "topk",
    "num_classes",
    "index_dtype",
    "record_size",
    "teacher",
    "dataset",
    "augmentation_hash",
    "completed_epochs",
)


# ----------------------------------------------------------------------------------------------------------------
# record layout
# ----------------------------------------------------------------------------------------------------------------


def default_topk(num_classes: int) -> int:
    """K when the recipe leaves `teacher.cache_topk` unset: 10, or the class count when the data has fewer classes."""
    return min(DEFAULT_TOPK, num_classes)


def index_dtype_for(num_classes: int) -> np.dtype:
    """Smallest little-endian signed integer dtype that holds every class index of `num_classes` classes."""
    return np.dtype("<i2") if num_classes <= MAX_CLASSES_FOR_INT16 else np.dtype("<i4")


def record_dtype(topk: int, index_dtype: np.dtype | str) -> np.dtype:
    """Packed numpy structured dtype of one record (fields: seed, values, indices, crc)."""
    return np.dtype(
        [
            ("seed", SEED_DTYPE),
            ("values", VALUE_DTYPE, (topk,)),
            ("indices", np.dtype(index_dtype).newbyteorder("<"), (topk,)),
            ("crc", np.dtype("<u4")),
        ]
    )


def record_size(topk: int, num_classes: int) -> int:
    """Bytes per sample per epoch: `4K + 8` with int16 indices, `6K + 8` with int32 indices."""
    return record_dtype(topk, index_dtype_for(num_classes)).itemsize


def record_layout(dtype: np.dtype) -> list[dict[str, Any]]:
    """Human-readable description of a record dtype for the manifest: name, dtype, count and byte offset per field."""
    layout = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base, shape = (field_dtype.base, field_dtype.shape) if field_dtype.subdtype else (field_dtype, ())
        layout.append({"name": name, "dtype": base.name, "count": int(np.prod(shape)), "offset": int(offset)})
    return layout


def shard_entry_dtype(dtype: np.dtype) -> np.dtype:
    """Layout of a per-rank shard file entry: the sample id followed by its record (shards are append-only)."""
    return np.dtype([("sample_id", "<i8"), ("record", dtype)])


def epoch_file_name(epoch: int) -> str:
    """Final name of an epoch's record file, relative to the cache directory."""
    return EPOCH_FILE_PATTERN.format(epoch=epoch)


def epoch_temp_pattern(epoch: int) -> str:
    """Glob pattern of the merged epoch file while it is being assembled (`vitkd.files.atomic_write`'s temporary
    file beside the epoch file; never read)."""
    return f".{epoch_file_name(epoch)}.*.tmp"


def shard_file_name(epoch: int, rank: int, world_size: int) -> str:
    """Name of the append-only file one rank writes during an epoch (never read once the epoch is finalised)."""
    return f"epoch_{epoch:04d}.rank{rank:03d}-of-{world_size:03d}.partial"


# ----------------------------------------------------------------------------------------------------------------
# checksums
# ----------------------------------------------------------------------------------------------------------------


def record_checksums(records: np.ndarray, epoch: int, sample_ids: np.ndarray) -> np.ndarray:
    """CRC32 of each record, bound to its epoch and sample id (see the module docstring).

    Args:
        records: [B] structured array of `record_dtype`.
        epoch: cached epoch the records belong to.
        sample_ids: [B] integer sample ids of the records.
    Returns:
        [B] uint32 checksums; equal to `records["crc"]` for intact records.
    """
    records = np.ascontiguousarray(records)
    count, size = records.shape[0], records.dtype.itemsize
    covered = size - 4  # everything except the trailing crc field
    rows = np.empty((count, 12 + covered), dtype=np.uint8)  # (B, 12 + record_size - 4)
    rows[:, 0:4] = np.frombuffer(np.uint32(epoch).astype("<u4").tobytes(), dtype=np.uint8)
    rows[:, 4:12] = np.asarray(sample_ids).astype("<u8").view(np.uint8).reshape(count, 8)
    rows[:, 12:] = records.view(np.uint8).reshape(count, size)[:, :covered]
    # zlib does the per-record work in C; one Python-level call per record costs ~0.3 us, far below a teacher forward,
    # and is faster than a byte-column vectorised CRC in numpy for the short records we store.
    width = rows.shape[1]
    buffer = memoryview(rows.reshape(-1))
    return np.fromiter(
        (zlib.crc32(buffer[start : start + width]) for start in range(0, count * width, width)),
        dtype=np.uint32,
        count=count,
    )


def skipped_mask(records: np.ndarray) -> np.ndarray:
    """[B] bool: True where a (CRC-valid) record marks a skipped sample, i.e. all its K values are zero."""
    return ~records["values"].any(axis=1)


def unwritten_mask(records: np.ndarray) -> np.ndarray:
    """[B] bool: True where a record is all zero bytes, i.e. was never written."""
    records = np.ascontiguousarray(records)
    return ~records.view(np.uint8).reshape(records.shape[0], records.dtype.itemsize).any(axis=1)


def shown_ids(ids: Iterable[int], limit: int = 10) -> str:
    """The first `limit` ids for a message, with the total when there are more: `3, 7, ... (12 in all)`."""
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def sample_id_array(sample_ids: torch.Tensor | np.ndarray | Iterable[int], num_samples: int, where: str
                    ) -> np.ndarray:
    """(B,) int64 numpy ids from a tensor, array or sequence, each checked to lie in [0, num_samples).

    Raises:
        ValueError: not a 1-D integer array. IndexError: ids out of range (named, with `where`: the store read).
    """
    if isinstance(sample_ids, torch.Tensor):
        sample_ids = sample_ids.detach().to("cpu").numpy()
    ids = np.asarray(sample_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"sample_ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    bad = np.flatnonzero((ids < 0) | (ids >= num_samples))
    if bad.size:
        raise IndexError(f"sample ids out of range [0, {num_samples}) for {where}: {shown_ids(ids[bad])}")
    return ids


# ----------------------------------------------------------------------------------------------------------------
# hashes and fingerprints (stable across processes, machines and Python versions)
# ----------------------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Turn the non-JSON values that show up in configs into stable JSON values; refuse anything else."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(
        f"cannot hash a value of type {type(value).__name__} ({value!r:.80}); use JSON-like values "
        "(dict, list, str, int, float, bool, None, paths, enums, numpy/torch numbers, dataclasses)"
    )


def canonical_json(value: Any) -> str:
    """Deterministic JSON text of `value`: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default, ensure_ascii=True)


def hash_config(config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a config dict, independent of key order (e.g. an augmentation recipe)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"hash_config expects a dict, got {type(config).__name__}")
    return hashlib.sha256(canonical_json(dict(config)).encode("utf-8")).hexdigest()


def hash_state_dict(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a model's weights: keys in sorted order, each with its dtype, shape and raw bytes.

    Two state_dicts hash equal exactly when they hold the same names, dtypes, shapes and bit-identical values, no
    matter the device or the insertion order. Plain Python numbers/strings (rare extra state) are hashed by value.
    """
    hasher = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        hasher.update(f"{key}\0".encode("utf-8"))
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous().reshape(-1)
            hasher.update(f"{tensor.dtype}{tuple(value.shape)}\0".encode("utf-8"))
            hasher.update(tensor.view(torch.uint8).numpy())  # raw bytes, no copy beyond the device transfer
        elif value is None or isinstance(value, (bool, int, float, str)):
            hasher.update(f"{type(value).__name__}:{value!r}\0".encode("utf-8"))
        else:
            raise TypeError(
                f"hash_state_dict: entry {key!r} is a {type(value).__name__}; expected tensors, numpy arrays or plain "
                "numbers/strings (drop or convert other extra state before hashing)"
            )
    return hasher.hexdigest()


def fingerprint_samples(items: Iterable[Any]) -> str:
    """SHA-256 hex digest of an ordered list of samples, e.g. `(relative_path, label)` pairs or plain strings.

    Order matters on purpose: sample id i is the i-th item, so reordering the dataset invalidates the cache. Pass
    paths relative to the dataset root so that moving the dataset keeps the fingerprint.
    """
    hasher = hashlib.sha256()
    count = 0
    for item in items:
        if isinstance(item, tuple):
            item = list(item)
        hasher.update(canonical_json(item).encode("utf-8"))
        hasher.update(b"\n")
        count += 1
    hasher.update(f"count={count}".encode("utf-8"))
    return hasher.hexdigest()


def dataset_fingerprint(items: Iterable[Any]) -> dict[str, Any]:
    """Manifest `dataset` entry for an ordered sample list: `{"num_samples": n, "samples_hash": fingerprint}`."""
    items = list(items)
    return {"num_samples": len(items), "samples_hash": fingerprint_samples(items)}


# ----------------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------------


def normalise_json_value(value: Any) -> Any:
    """The value as it reads back from the manifest (tuples become lists, paths strings, ...), for comparisons."""
    return json.loads(canonical_json(value))


def utc_now() -> str:
    """Current UTC time as ISO-8601 text, as stored in the manifest."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build_manifest(
    *,
    num_samples: int,
    topk: int,
    num_classes: int,
    teacher: Mapping[str, Any],
    dataset: Mapping[str, Any],
    augmentation_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh manifest (no completed epochs) for a cache with the given identity.

    `extra` adds descriptive fields (e.g. the full augmentation recipe behind `augmentation_hash`); they may not
    reuse a name of the fields built here.
    """
    from vitkd import __version__ as vitkd_version

    index_dtype = index_dtype_for(num_classes)
    dtype = record_dtype(topk, index_dtype)
    now = utc_now()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "vitkd_version": vitkd_version,
        "created_time": now,
        "updated_time": now,
        "num_samples": int(num_samples),
        "topk": int(topk),
        "num_classes": int(num_classes),
        "seed_dtype": SEED_DTYPE.name,
        "value_dtype": VALUE_DTYPE.name,
        "index_dtype": index_dtype.name,
        "byte_order": "little",
        "record_size": dtype.itemsize,
        "record_layout": record_layout(dtype),
        "checksum": CHECKSUM_DESCRIPTION,
        "epoch_file_pattern": EPOCH_FILE_PATTERN,
        "teacher": normalise_json_value(dict(teacher)),
        "dataset": normalise_json_value(dict(dataset)),
        "augmentation_hash": str(augmentation_hash),
        "completed_epochs": [],
        "skipped_samples": {},  # epoch (as text) -> number of samples the caching run skipped in it
    }
    clashing = sorted(set(extra or {}) & set(manifest))
    if clashing:
        raise ValueError(f"extra manifest fields {clashing} clash with built-in fields; choose other names")
    manifest.update(normalise_json_value(dict(extra or {})))
    return manifest


def manifest_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / MANIFEST_NAME


def read_manifest(directory: str | os.PathLike, *, kind: str, missing_hint: str) -> Any:
    """The parsed `manifest.json` of a store directory (a logit cache, an embedding store), not yet validated.

    Args:
        directory: the store directory.
        kind: what the directory should be, for messages ("cache", "embedding store").
        missing_hint: the end of the message when there is no manifest (what the directory is not, how to make one).
    Raises:
        CacheFormatError: the manifest is missing or not JSON; the message names the file.
    """
    path = manifest_path(directory)
    if not path.is_file():
        raise CacheFormatError(f"no {MANIFEST_NAME} in {Path(directory)}: {missing_hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheFormatError(f"cannot read {kind} manifest {path}: {error}") from error


def check_manifest_header(manifest: Any, path: str | os.PathLike, *, kind: str, format_name: str,
                          versions: Sequence[int], required: Sequence[str], hint: str = "") -> None:
    """Raise `CacheFormatError` naming `path` unless `manifest` is a JSON object of format `format_name`, of one of
    `versions`, holding every `required` field. `hint` (e.g. which command builds the right kind) ends the message
    of a manifest of another format."""
    if not isinstance(manifest, dict):
        raise CacheFormatError(f"{kind} manifest {path} must hold a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != format_name:
        raise CacheFormatError(f"{path}: 'format' is {manifest.get('format')!r}, expected {format_name!r}{hint}")
    version = manifest.get("format_version")
    if version not in versions:
        raise CacheFormatError(
            f"{path}: unknown {kind} format_version {version!r}; this vitkd reads versions "
            f"{list(versions)} (upgrade vitkd or rebuild the {kind})"
        )
    missing = [field for field in required if field not in manifest]
    if missing:
        raise CacheFormatError(f"{path}: manifest lacks required fields {missing}")


def load_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate `manifest.json` of a cache directory.

    Raises:
        CacheFormatError: the manifest is missing, not JSON, of an unknown format version, lacks required fields, or
            its record size disagrees with its top-K / class count.
    """
    manifest = read_manifest(cache_dir, kind="cache", missing_hint="not a vitkd logit cache, or its first epoch "
                             "never finished (create one with `vitkd cache-logits`)")
    validate_manifest(manifest, manifest_path(cache_dir))
    return manifest


def validate_manifest(manifest: Any, path: str | os.PathLike) -> None:
    """Raise `CacheFormatError` naming `path` when `manifest` is not a usable manifest of a supported version."""
    check_manifest_header(manifest, path, kind="cache", format_name=FORMAT_NAME, versions=SUPPORTED_FORMAT_VERSIONS,
                          required=REQUIRED_MANIFEST_FIELDS)
    for field in ("num_samples", "topk", "num_classes", "record_size"):
        value = manifest[field]
        if not is_positive_int(value):
            raise CacheFormatError(f"{path}: {field!r} must be a positive integer, found {value!r}")
    topk, num_classes = manifest["topk"], manifest["num_classes"]
    expected_index_dtype = index_dtype_for(num_classes).name
    if manifest["index_dtype"] != expected_index_dtype:
        raise CacheFormatError(
            f"{path}: index_dtype {manifest['index_dtype']!r} does not fit num_classes={num_classes} "
            f"(expected {expected_index_dtype!r})"
        )
    expected_size = record_size(topk, num_classes)
    if manifest["record_size"] != expected_size:
        raise CacheFormatError(
            f"{path}: record_size {manifest['record_size']} disagrees with topk={topk}, num_classes={num_classes} "
            f"(expected {expected_size} bytes)"
        )
    epochs = manifest["completed_epochs"]
    if not isinstance(epochs, list) or not all(_is_epoch_number(epoch) for epoch in epochs):
        raise CacheFormatError(f"{path}: 'completed_epochs' must be a list of non-negative integers, found {epochs!r}")


def is_positive_int(value: Any) -> bool:
    """True for an int (not a bool) above zero, as manifest counts must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_epoch_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def inspect_command(cache_dir: str | os.PathLike, *, verify: bool = False) -> str:
    """The command that shows what a cache holds (manifest, epochs, sizes; `--verify`: every record's CRC32), quoted
    for error messages."""
    return f"`vitkd cache-info {cache_dir}{' --verify' if verify else ''}`"


def write_manifest_atomic(cache_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Write `manifest.json` durably, so that readers see either the old or the new file, never a partial one."""
    atomic_write(Path(cache_dir) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=False) + "\n", durable=True)
