"""`vitkd embed-targets` and `vitkd import-embeddings`: a per-sample embedding store for a recipe's training data.

* `embed_targets`: a local model's pooled features, `model.forward_head(model.forward_features(x), pre_logits=True)`,
  of every training sample (the recipe's training split through its *evaluation* transform: resize, centre crop,
  normalise, no augmentation, since the targets belong to the sample, not to an epoch), in sample-id order, one
  durable chunk per batch. The model is `--model NAME` (timm name, kwargs, local checkpoint; `num_classes` defaults
  to the dataset's class count so a vitkd run directory loads) or the recipe's teacher (`--teacher`, built like
  training builds it). An interrupted run continues at the first missing row; a finished store is reused; a store of
  other data or another source (model, weights, input transform) is refused, naming the differing fields.
* `import_embeddings`: a user's matrix (one row per line of a file list of sample keys) reordered into sample-id
  order (`vitkd.cache.embedding_import` names missing, unknown and repeated keys, a row count that differs from the
  list, a non-2-D matrix and non-finite values).

Features are computed in float32 (no autocast) and stored as float16 (`vitkd.cache.embedding_store`).

Python use::

    from vitkd.cache.embedding_job import embed_targets
    from vitkd.config import load_recipe
    result = embed_targets(load_recipe("recipes/demo/embedding.yaml"), "runs/demo/embeddings_teacher_cnn",
                           model="vitkd_small_cnn", checkpoint="runs/demo/teacher_cnn")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vitkd.cache.embedding_import import check_rows, file_sha256, load_matrix, match_keys, read_key_list
from vitkd.cache.embedding_store import EmbeddingStoreWriter
from vitkd.cache.run_identity import dataset_record, recorded_with, teacher_identity
from vitkd.config import Recipe, TeacherConfig
from vitkd.data.loader import build_base_dataset, collate_skipping_corrupt
from vitkd.data.seeded import TransformDataset
from vitkd.data.transforms import build_eval_transform
from vitkd.engine.distributed import resolve_device, set_cpu_threads
from vitkd.engine.rng import seed_everything
from vitkd.errors import CacheWriteError, ConfigError
from vitkd.models.factory import build_model
from vitkd.models.teacher import FrozenTeacher, build_frozen_teacher, student_normalization

#: How `embed_targets` turns a model's output into a row (recorded in the store's source).
FEATURE_CALL = "forward_head(forward_features(x), pre_logits=True)"
IMPORT_CHUNK_ROWS = 1 << 14  # rows per durable chunk when importing


@dataclass
class EmbeddingStoreResult:
    """What a job did: the store, its size, rows this call wrote (0 when a finished store was reused), wall time."""

    path: Path
    num_samples: int
    dim: int
    written: int
    reused: bool
    seconds: float


def training_samples(recipe: Recipe) -> Dataset:
    """The recipe's training split as the dataset yields it (PIL images and labels, in sample-id order)."""
    data = recipe.data
    return build_base_dataset(data.dataset, data.train_split, data.root, data.on_corrupt)


def _single_process(command: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{command} writes one store from one process; run it without torchrun")


# ----------------------------------------------------------------------------------------------------------------
# embed-targets
# ----------------------------------------------------------------------------------------------------------------


def _source_model(recipe: Recipe, num_classes: int, model: Optional[str], model_kwargs: Optional[dict[str, Any]],
                  checkpoint: Optional[str], teacher: bool) -> tuple[FrozenTeacher, dict[str, Any]]:
    """The frozen model that computes the rows and its identity record (name, kwargs, weights hashes)."""
    if teacher == bool(model):
        raise ConfigError("embed-targets: give exactly one of --model NAME or --teacher")
    if teacher:
        if model_kwargs is not None or checkpoint:
            raise ConfigError("embed-targets: --model-kwargs and --checkpoint go with --model; --teacher uses the "
                              "recipe's teacher.kwargs and teacher.checkpoint")
        if recipe.teacher is None or not recipe.teacher.name:
            raise ConfigError("embed-targets --teacher: the recipe names no teacher (teacher.name); set it, or pass "
                              "--model NAME")
        frozen = build_frozen_teacher(recipe, num_classes)
        return frozen, teacher_identity(recipe.teacher, frozen.model.state_dict())
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("num_classes", num_classes)  # a vitkd run of this data loads as is; state others' heads
    network = build_model(model, kwargs, checkpoint)
    mean, std = student_normalization(recipe)
    config = TeacherConfig(name=model, kwargs=kwargs, checkpoint=checkpoint)
    return FrozenTeacher(network, mean, std), teacher_identity(config, network.state_dict())


@torch.no_grad()
def pooled_features(frozen: FrozenTeacher, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) data-normalised images -> (B, D) float32 pooled features (`FEATURE_CALL`), in eval mode."""
    network = frozen.model.eval()
    features = network.forward_head(network.forward_features(frozen.prepare_input(images)), pre_logits=True)
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ConfigError(f"embed-targets: {type(network).__name__}.{FEATURE_CALL} gave {shape}, not (B, D) pooled "
                          f"features; use a model whose pre-logits are a vector per image")
    return features.float()


def embed_targets(recipe: Recipe, output: str | os.PathLike, *, model: Optional[str] = None,
                  model_kwargs: Optional[dict[str, Any]] = None, checkpoint: Optional[str] = None,
                  teacher: bool = False, batch_size: Optional[int] = None, progress: bool = True
                  ) -> EmbeddingStoreResult:
    """Write (or continue, or reuse) the store of a model's pooled features over the recipe's training samples.

    Args:
        recipe: gives the training data (`data.*`: dataset, split, size, crop, interpolation, normalisation), the
            device (`train.device`), CPU threads and, with `teacher`, the teacher.
        output: store directory.
        model, model_kwargs, checkpoint: a timm model (`pretrained=False`) with local weights; or
        teacher: True to use the recipe's teacher (`vitkd.models.teacher.build_frozen_teacher`).
        batch_size: images per forward and per durable chunk (default `data.eval_batch_size`, else
            `data.batch_size`).
        progress: a tqdm bar.
    Raises:
        ConfigError: both or neither of model/teacher, no teacher in the recipe, torchrun.
        CacheMismatchError: `output` holds a store of other data, another width or another source.
        CacheWriteError: an unreadable training image (every sample needs a row), non-finite features.
    """
    start_time = time.perf_counter()
    _single_process("embed-targets")
    data = recipe.data
    set_cpu_threads(recipe.train.cpu_threads)
    seed_everything(recipe.train.seed, recipe.train.deterministic)  # a model without weights initialises the same
    device = resolve_device(recipe.train.device)
    base = training_samples(recipe)
    num_classes = int(base.num_classes)
    frozen, identity = _source_model(recipe, num_classes, model, model_kwargs, checkpoint, teacher)
    frozen = frozen.to(device)
    view = TransformDataset(base, build_eval_transform(data.img_size, data.mean, data.std, data.crop_pct,
                                                       data.interpolation))
    source = {"kind": "teacher" if teacher else "model", "model": identity, "feature": FEATURE_CALL,
              "input": {"img_size": data.img_size, "crop_pct": data.crop_pct, "interpolation": data.interpolation,
                        "mean": list(data.mean), "std": list(data.std)}}
    probe = torch.zeros(1, 3, data.img_size, data.img_size, device=device)
    dim = int(pooled_features(frozen, probe).shape[1])
    with EmbeddingStoreWriter(output, num_samples=len(view), dim=dim, dataset=dataset_record(base, data),
                              source=source, extra_manifest={"recorded_with": recorded_with()}) as writer:
        first = writer.rows_written
        if writer.complete:
            if progress:
                tqdm.write(f"[embed-targets] {output}: complete ({writer.num_samples} rows); reused")
            return EmbeddingStoreResult(Path(output), writer.num_samples, dim, 0, True,
                                        time.perf_counter() - start_time)
        if progress and first:
            tqdm.write(f"[embed-targets] {output}: {first} of {writer.num_samples} rows done; continuing")
        _write_rows(writer, frozen, view, batch_size or data.eval_batch_size or data.batch_size, data.num_workers,
                    device, progress)
        writer.finish()
        return EmbeddingStoreResult(Path(output), writer.num_samples, dim, writer.num_samples - first, False,
                                    time.perf_counter() - start_time)


def _write_rows(writer: EmbeddingStoreWriter, frozen: FrozenTeacher, view: Dataset, batch_size: int,
                num_workers: int, device: torch.device, progress: bool) -> None:
    """Features of sample ids `writer.rows_written` .. N - 1, in order, one durable `append` per batch."""
    remaining = Subset(view, range(writer.rows_written, writer.num_samples))
    loader = DataLoader(remaining, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping_corrupt, pin_memory=device.type == "cuda")
    bar = tqdm(total=writer.num_samples, initial=writer.rows_written, unit="img", desc="embed-targets",
               disable=not progress)
    try:
        for batch in loader:
            expected = torch.arange(writer.rows_written, writer.rows_written + batch.labels.shape[0] + batch.skipped)
            if batch.skipped:
                unreadable = sorted(set(expected.tolist()) - set(batch.sample_ids.tolist()))
                raise CacheWriteError(f"training sample ids {unreadable[:10]} are unreadable images (data.on_corrupt: "
                                      f"skip dropped them); a per-sample store needs a row for every sample: fix or "
                                      f"remove those files, then rerun to continue at row {writer.rows_written}")
            if not torch.equal(batch.sample_ids, expected):
                raise CacheWriteError(f"embed-targets: the loader yielded sample ids {batch.sample_ids[:5].tolist()}"
                                      f"..., expected {expected[:5].tolist()}...; rows must be written in order")
            writer.append(pooled_features(frozen, batch.images.to(device, non_blocking=True)))  # (B, D)
            bar.update(batch.labels.shape[0])
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------------
# import-embeddings
# ----------------------------------------------------------------------------------------------------------------


def import_embeddings(recipe: Recipe, matrix: str | os.PathLike, files: str | os.PathLike,
                      output: str | os.PathLike, *, progress: bool = True) -> EmbeddingStoreResult:
    """Build the store from a user's (rows, dim) matrix and a file list naming each row's training sample.

    Args:
        recipe: gives the training data (the dataset's sample keys and fingerprint).
        matrix: `.npy` or `.safetensors` (one tensor, or one named `embeddings`); row i belongs to line i.
        files: text file, one sample key per line (`vitkd.cache.embedding_import`).
        output: store directory (a finished store of the same files is reused; an unfinished one continued).
    Raises:
        EmbeddingImportError: see `vitkd.cache.embedding_import`.
        CacheMismatchError: `output` holds a store of other data or built from other files.
    """
    start_time = time.perf_counter()
    _single_process("import-embeddings")
    base = training_samples(recipe)
    keys = base.sample_keys() if hasattr(base, "sample_keys") else [str(i) for i in range(len(base))]
    record = dataset_record(base, recipe.data)
    rows = load_matrix(matrix)  # (R, D)
    lines = read_key_list(files)
    check_rows(rows, lines, matrix, files)
    order = match_keys(lines, keys, files, record["name"])  # (N,) matrix row of each sample id
    source = {"kind": "import",
              "matrix": {"file": Path(matrix).name, "sha256": file_sha256(matrix), "shape": list(rows.shape),
                         "dtype": str(rows.dtype)},
              "files": {"file": Path(files).name, "sha256": file_sha256(files)}}
    with EmbeddingStoreWriter(output, num_samples=len(keys), dim=int(rows.shape[1]), dataset=record,
                              source=source) as writer:
        first = writer.rows_written
        bar = tqdm(total=writer.num_samples, initial=first, unit="row", desc="import-embeddings",
                   disable=not progress or writer.complete)
        for start in range(first, writer.num_samples, IMPORT_CHUNK_ROWS):
            chosen = order[start:start + IMPORT_CHUNK_ROWS]
            writer.append(np.asarray(rows[chosen]))  # (chunk, D), sample-id order
            bar.update(chosen.shape[0])
        bar.close()
        reused = writer.complete
        writer.finish()
        return EmbeddingStoreResult(Path(output), writer.num_samples, writer.dim, writer.num_samples - first, reused,
                                    time.perf_counter() - start_time)
