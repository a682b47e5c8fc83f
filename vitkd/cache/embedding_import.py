"""Reading a user's embedding matrix and its file list for `vitkd import-embeddings`, and matching them to a dataset.

The matrix (`.npy`, or `.safetensors` holding one tensor or one named `embeddings`) has one row per line of the
file list; each line names one training sample by its dataset sample key (`sample_keys()` of the dataset: for the
digits `digits/train/17:3`, for image folders the path relative to the split folder with the label,
`n01440764/x.JPEG:0`). The `:label` suffix may be left out (`n01440764/x.JPEG`) where that still names one sample.
Every training sample must appear exactly once; the rows are then reordered into sample-id order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitkd.errors import EmbeddingImportError

MATRIX_SUFFIXES = (".npy", ".safetensors")
SAFETENSORS_NAME = "embeddings"  # the tensor read from a .safetensors file that holds several
FLOAT16_MAX = 65504.0
CHECK_CHUNK_ROWS = 1 << 16
_SHOWN = 5


def _listed(items: Sequence[Any], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:_SHOWN])
    return shown + (f", ... ({total} in all)" if total > _SHOWN else "")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def load_matrix(path: str | os.PathLike) -> np.ndarray:
    """The (rows, dim) matrix of a `.npy` (memory-mapped) or `.safetensors` file.

    Raises:
        EmbeddingImportError: another suffix, an unreadable file, a safetensors file with several tensors none named
            `embeddings`, a non-numeric dtype, or not a 2-D matrix with at least one row and column.
    """
    path = Path(path)
    if path.suffix not in MATRIX_SUFFIXES:
        raise EmbeddingImportError(f"matrix {path}: expected a {' or '.join(MATRIX_SUFFIXES)} file")
    if not path.is_file():
        raise EmbeddingImportError(f"matrix {path} does not exist")
    try:
        matrix = _load_npy(path) if path.suffix == ".npy" else _load_safetensors(path)
    except EmbeddingImportError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file, reported with its name
        raise EmbeddingImportError(f"cannot read matrix {path}: {error}") from None
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise EmbeddingImportError(f"matrix {path} has dtype {matrix.dtype}; expected real numbers (float or int)")
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise EmbeddingImportError(f"matrix {path} has shape {tuple(matrix.shape)}; expected a 2-D matrix of rows x "
                                   f"dim with one row per line of the file list")
    return matrix


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _load_safetensors(path: Path) -> np.ndarray:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stream:
        names = list(stream.keys())
        if len(names) != 1 and SAFETENSORS_NAME not in names:
            raise EmbeddingImportError(f"matrix {path} holds tensors {_listed(names)}; keep one, or name the matrix "
                                       f"'{SAFETENSORS_NAME}'")
        tensor = stream.get_tensor(names[0] if len(names) == 1 else SAFETENSORS_NAME)
    if tensor.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def read_key_list(path: str | os.PathLike) -> list[str]:
    """The sample keys of a file list, one per line (surrounding whitespace and trailing empty lines dropped).

    Raises:
        EmbeddingImportError: the file is missing, not UTF-8 text, empty, or has an empty line before its last key.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingImportError(f"file list {path} does not exist")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as error:
        raise EmbeddingImportError(f"file list {path} is not UTF-8 text: {error}") from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise EmbeddingImportError(f"file list {path} is empty; expected one sample key per line")
    empty = [number for number, line in enumerate(lines, start=1) if not line]
    if empty:
        raise EmbeddingImportError(f"file list {path}: line(s) {_listed(empty)} are empty; every line names the "
                                   f"sample of the matrix row with the same number")
    return lines


def match_keys(lines: Sequence[str], keys: Sequence[str], list_path: str | os.PathLike, dataset_name: str
               ) -> np.ndarray:
    """For every sample id, the line (= matrix row) that names it.

    Args:
        lines: the file list's keys, line i for matrix row i.
        keys: the dataset's sample keys, key i for sample id i.
        list_path, dataset_name: named in messages.
    Returns:
        (N,) int64: entry i is the matrix row of sample id i.
    Raises:
        EmbeddingImportError: keys named twice, keys of no training sample, or training samples with no line
            (checked in that order; each message names lines and keys).
    """
    by_key = {key: index for index, key in enumerate(keys)}
    stripped: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if ":" in key:
            stripped.setdefault(key.rpartition(":")[0], []).append(index)
    by_path = {short: ids[0] for short, ids in stripped.items() if len(ids) == 1 and short not in by_key}
    row_of = np.full(len(keys), -1, dtype=np.int64)
    unknown, repeated = [], []
    for row, line in enumerate(lines):
        sample = by_key.get(line, by_path.get(line))
        if sample is None:
            unknown.append(f"line {row + 1} {line!r}")
        elif row_of[sample] >= 0:
            repeated.append(f"lines {row_of[sample] + 1} and {row + 1} ({keys[sample]!r})")
        else:
            row_of[sample] = row
    if repeated:
        raise EmbeddingImportError(f"file list {list_path}: {len(repeated)} sample(s) named more than once: "
                                   f"{_listed(repeated)}; each training sample needs exactly one row")
    if unknown:
        example = keys[0] if keys else "?"
        short = f" (or without the ':label' suffix, {example.rpartition(':')[0]!r})" if ":" in example else ""
        raise EmbeddingImportError(f"file list {list_path}: {len(unknown)} line(s) name no training sample of "
                                   f"{dataset_name}: {_listed(unknown)}; lines are the dataset's sample keys, e.g. "
                                   f"{example!r}{short}")
    missing = np.flatnonzero(row_of < 0)
    if missing.size:
        names = [repr(keys[int(index)]) for index in missing[:_SHOWN]]
        raise EmbeddingImportError(f"file list {list_path}: {missing.size} of the {len(keys)} training samples of "
                                   f"{dataset_name} have no line: {_listed(names, int(missing.size))}; a store needs "
                                   f"a row for every training sample")
    return row_of


def check_rows(matrix: np.ndarray, lines: Sequence[str], matrix_path: str | os.PathLike,
               list_path: str | os.PathLike) -> None:
    """Refuse a matrix whose row count differs from the file list, or with values not finite in float16.

    Raises:
        EmbeddingImportError: naming both counts, or the first bad rows with their keys.
    """
    if matrix.shape[0] != len(lines):
        raise EmbeddingImportError(f"matrix {matrix_path} has {matrix.shape[0]} rows but file list {list_path} has "
                                   f"{len(lines)} lines; row i is the embedding of the sample on line i")
    bad: list[int] = []
    for start in range(0, matrix.shape[0], CHECK_CHUNK_ROWS):
        chunk = np.asarray(matrix[start:start + CHECK_CHUNK_ROWS], dtype=np.float64)  # (R, dim)
        ok = np.isfinite(chunk).all(axis=1) & (np.abs(chunk) <= FLOAT16_MAX).all(axis=1)
        bad.extend(int(row) + start for row in np.flatnonzero(~ok))
    if bad:
        shown = [f"row {row} ({lines[row]!r})" for row in bad[:_SHOWN]]
        raise EmbeddingImportError(f"matrix {matrix_path}: {len(bad)} row(s) hold NaN, inf or values beyond "
                                   f"float16's +-{FLOAT16_MAX:g}: {_listed(shown, len(bad))}")
