"""What a logit cache must agree with to serve a run: dataset, classes, K, teacher and the augmentation it replays.

`vitkd cache-logits` stores these records in the manifest (the storage layer keeps hashes of them as identity
fields); training with `teacher.cache` rebuilds them from its recipe and compares field by field before the first
step, so a mismatch names the exact setting (for example `augmentation.batch_replay.batch_size`).

The augmentation record holds everything that changes the teacher's input images:
- `transform`: the timm training transform settings (crop scale, flip, colour jitter, RandAugment, random erasing,
  interpolation, size, mean/std);
- `seed`: the train seed, from which every per-sample augmentation seed and the sampler order derive;
- `mixup`: the seeded Mixup/CutMix settings (`vitkd.data.mixup`), or None;
- `batch_replay`: with Mixup/CutMix only, the per-rank batch size and world size: images are mixed with partners
  from their own batch, so only the same batches replay the same mixed images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

import timm
import torch
from torch import nn

from vitkd.errors import CacheMismatchError
from vitkd.cache.format import canonical_json, dataset_fingerprint, hash_config, hash_state_dict, normalise_json_value
from vitkd.config import DataConfig, TeacherConfig
from vitkd.data.mixup import SeededMixup

_HINTS = {
    "augmentation.batch_replay": "Mixup/CutMix mixes images within a batch, so a cache replays only with the batch "
                                 "size (data.batch_size) and number of processes it was built with",
    "augmentation.seed": "train.seed fixes every augmentation seed and the sample order",
    "augmentation.transform": "the training transform (data.*) changed, so the images differ from the teacher's",
    "augmentation.mixup": "the Mixup/CutMix settings (data.mixup, data.cutmix, ...) changed",
    "dataset": "the training samples (data.dataset, data.root, data.train_split) differ",
    "teacher": "the recipe's teacher differs from the one that wrote the cache",
    "topk": "teacher.cache_topk differs from the cache's K",
    "num_classes": "the dataset's class count differs from the cache's",
}


def augmentation_record(data: DataConfig, seed: int, mixup: Optional[SeededMixup], batch_size: int,
                        world_size: int) -> dict[str, Any]:
    """The augmentation record of a run (see the module docstring); its `hash_config` is the cache identity."""
    transform = {
        "img_size": data.img_size, "scale": list(data.scale), "hflip": data.hflip, "vflip": 0.0,
        "color_jitter": data.color_jitter, "auto_augment": data.auto_augment, "re_prob": data.re_prob,
        "re_mode": "pixel", "re_count": 1, "interpolation": data.interpolation, "mean": list(data.mean),
        "std": list(data.std),
    }
    return normalise_json_value({
        "transform": transform,
        "seed": int(seed),
        "mixup": mixup.describe() if mixup is not None else None,
        "batch_replay": {"batch_size": int(batch_size), "world_size": int(world_size)} if mixup is not None else None,
    })


def augmentation_hash(record: Mapping[str, Any]) -> str:
    """The manifest's `augmentation_hash` of an augmentation record."""
    return hash_config(record)


def recorded_with() -> dict[str, str]:
    """Library versions behind the replay (stored for information: a different version may round differently)."""
    return {"torch": torch.__version__, "timm": timm.__version__}


def dataset_record(dataset: Any, data: DataConfig) -> dict[str, Any]:
    """Manifest `dataset` entry of a training dataset: its name/split, sample count and the hash of its ordered
    sample keys (relative paths and labels, so moving the dataset keeps the fingerprint)."""
    base = getattr(dataset, "base", dataset)
    keys = base.sample_keys() if hasattr(base, "sample_keys") else [str(i) for i in range(len(base))]
    return {"name": f"{data.dataset}/{data.train_split}", **dataset_fingerprint(keys)}


def checkpoint_hash(checkpoint: Optional[str | os.PathLike]) -> Optional[str]:
    """`hash_state_dict` of a checkpoint's tensors as stored (read safely, no model built), or None without one."""
    if not checkpoint:
        return None
    from vitkd.models.factory import read_state_dict

    state_dict, _ = read_state_dict(checkpoint)
    return hash_state_dict(state_dict)


def teacher_record(teacher: TeacherConfig, model: Optional[nn.Module] = None) -> dict[str, Any]:
    """Manifest `teacher` entry: name, timm kwargs, checkpoint content hash, input normalisation and, when the built
    model is given, `weights_hash` of its state_dict (what `SparseLogitWriter` requires)."""
    record: dict[str, Any] = {
        "name": teacher.name,
        "kwargs": dict(teacher.kwargs),
        "checkpoint_hash": checkpoint_hash(teacher.checkpoint),
        "mean": list(teacher.mean) if teacher.mean is not None else None,
        "std": list(teacher.std) if teacher.std is not None else None,
    }
    if model is not None:
        record["weights_hash"] = hash_state_dict(model.state_dict())
    return normalise_json_value(record)


def _differences(prefix: str, expected: Any, found: Any) -> list[tuple[str, Any, Any]]:
    """Leaf-level `(dotted field, expected, found)` differences between two JSON-like values."""
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        differences = []
        for key in list(expected) + [key for key in found if key not in expected]:
            differences.extend(_differences(f"{prefix}.{key}", expected.get(key), found.get(key)))
        return differences
    return [] if expected == found else [(prefix, expected, found)]


def run_mismatches(manifest: Mapping[str, Any], *, num_samples: int, num_classes: int, dataset: Mapping[str, Any],
                   augmentation: Mapping[str, Any], topk: Optional[int] = None,
                   teacher: Optional[Mapping[str, Any]] = None) -> list[tuple[str, Any, Any]]:
    """Every field where a cache's manifest disagrees with a run, as `(dotted field, expected, cache's value)`.

    Args:
        manifest: the cache manifest.
        num_samples, num_classes: the run's dataset size and class count.
        dataset: `dataset_record` of the run.
        augmentation: `augmentation_record` of the run.
        topk: K the run expects (None: any).
        teacher: the fields of `teacher_record` the run can vouch for (None: the teacher is not checked). Only keys
            present here are compared, so a training run that builds no model leaves out `weights_hash`.
    """
    mismatches: list[tuple[str, Any, Any]] = []
    for field, wanted in (("num_samples", num_samples), ("num_classes", num_classes), ("topk", topk)):
        if wanted is not None and manifest.get(field) != wanted:
            mismatches.append((field, wanted, manifest.get(field)))
    mismatches.extend(_differences("dataset", normalise_json_value(dict(dataset)), manifest.get("dataset") or {}))
    augmentation = normalise_json_value(dict(augmentation))
    if "augmentation" in manifest:
        mismatches.extend(_differences("augmentation", augmentation, manifest["augmentation"]))
    if not any(field.startswith("augmentation") for field, _, _ in mismatches):
        wanted_hash = augmentation_hash(augmentation)
        if manifest.get("augmentation_hash") != wanted_hash:
            mismatches.append(("augmentation_hash", wanted_hash, manifest.get("augmentation_hash")))
    if teacher is not None:
        stored = manifest.get("teacher") or {}
        for key, wanted in normalise_json_value(dict(teacher)).items():
            if stored.get(key) != wanted:
                mismatches.append((f"teacher.{key}", wanted, stored.get(key)))
    return mismatches


def _shorten(value: Any, limit: int = 160) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_mismatch_error(mismatches: list[tuple[str, Any, Any]], cache_dir: str | os.PathLike, *, action: str
                       ) -> CacheMismatchError:
    """A `CacheMismatchError` listing each disagreeing field with both values and what the field means."""
    lines = [f"logit cache {cache_dir} was built for different settings; cannot {action}:"]
    hints = []
    for field, wanted, found in mismatches:
        lines.append(f"  {field}: this run has {_shorten(wanted)}, the cache has {_shorten(found)}")
        hint = next((text for prefix, text in _HINTS.items() if field == prefix or field.startswith(prefix + ".")),
                    None)
        if hint and hint not in hints:
            hints.append(hint)
    lines.extend(f"  ({hint})" for hint in hints)
    lines.append("rebuild the cache for this recipe with `vitkd cache-logits RECIPE` into a new directory, or "
                 "change the recipe back")
    return CacheMismatchError("\n".join(lines), mismatches)
