"""What a logit cache must agree with to serve a run, and the one check that compares the two.

A cache's manifest records its identity: the sample count, K, the class count, the teacher, the dataset and the
augmentation the teacher's inputs came from. `identity_mismatches` compares a manifest with what a run expects,
field by field, and `mismatch_error` turns the differences into a `CacheMismatchError` that names each differing
setting (for example `augmentation.batch_replay.batch_size`) with both values. `SparseLogitWriter` runs it when it
reopens a cache, `SparseLogitReader.check_compatible` when a run reads one; `vitkd cache-logits` and training with
`teacher.cache` build their expectation from the recipe with `recipe_identity`.

The augmentation record holds everything that changes the teacher's input images:
- `transform`: the timm training transform settings (crop scale, flip, colour jitter, RandAugment, random erasing,
  interpolation, size, mean/std);
- `seed`: the train seed, from which every per-sample augmentation seed and the sampler order derive;
- `mixup`: the seeded Mixup/CutMix settings (`vitkd.data.mixup`), or None;
- `batch_replay`: with Mixup/CutMix only, the per-rank batch size and world size: images are mixed with partners
  from their own batch, so only the same batches replay the same mixed images.
The manifest stores the record and its hash (`augmentation_hash`, the identity field).

The per-sample embedding store (`vitkd.cache.embedding_store`) is identified by the same check on its own fields:
`num_samples`, `dim`, `dataset` (this module's `dataset_record`) and `source` (where its embeddings came from).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from vitkd.cache.format import (MANIFEST_NAME, canonical_json, dataset_fingerprint, hash_config, hash_state_dict,
                                inspect_command, normalise_json_value)
from vitkd.errors import CacheMismatchError

if TYPE_CHECKING:  # types only: the storage layer imports this module without the recipe machinery
    from vitkd.config import DataConfig, Recipe, TeacherConfig
    from vitkd.data.mixup import SeededMixup

#: Manifest fields that say which teacher targets a cache holds, in the order mismatches are reported.
#: `augmentation` is the record behind `augmentation_hash`; a cache written without it is checked by the hash alone.
#: `dim` and `source` identify an embedding store (its width and where its rows came from).
IDENTITY_FIELDS = ("num_samples", "topk", "num_classes", "dim", "teacher", "source", "dataset", "augmentation",
                   "augmentation_hash")
# Alternative spellings accepted in `expected` dicts: the writer's keyword names.
_IDENTITY_ALIASES = {"teacher_id": "teacher", "dataset_fingerprint": "dataset", "k": "topk"}

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
    "dim": "the embeddings have another width",
    "source": "the embeddings came from another model, checkpoint, input transform or matrix",
}


# ----------------------------------------------------------------------------------------------------------------
# the records a run is identified by
# ----------------------------------------------------------------------------------------------------------------


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
    import timm

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


def teacher_identity(teacher: str | TeacherConfig, state_dict: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Manifest `teacher` entry: the one builder of a teacher's identity, for writers and readers alike.

    Args:
        teacher: the recipe's `TeacherConfig` (name, timm kwargs, input normalisation and the content hash of
            `checkpoint`), or just a model name (then only `name`).
        state_dict: the built teacher's weights, hashed as `weights_hash` (what `SparseLogitWriter` requires).
            A run that builds no teacher leaves it out, and with it the check of the weights themselves.
    Returns:
        the JSON-normalised entry. A `checkpoint` that is set but not on this machine cannot be hashed: a warning
        says so and `checkpoint_hash` is left out, so only the other fields are checked against a cache.
    """
    if isinstance(teacher, str):
        identity: dict[str, Any] = {"name": teacher}
    else:
        identity = {"name": teacher.name, "kwargs": dict(teacher.kwargs),
                    "mean": list(teacher.mean) if teacher.mean is not None else None,
                    "std": list(teacher.std) if teacher.std is not None else None}
        if teacher.checkpoint and not Path(teacher.checkpoint).exists():
            warnings.warn(f"teacher.checkpoint {teacher.checkpoint} is not here, so the cache's teacher weights are "
                          f"not checked against it (name and kwargs are)", stacklevel=2)
        else:
            identity["checkpoint_hash"] = checkpoint_hash(teacher.checkpoint)
    if state_dict is not None:
        identity["weights_hash"] = hash_state_dict(state_dict)
    return normalise_json_value(identity)


def expected_identity(
    *,
    num_samples: int | None = None,
    topk: int | None = None,
    num_classes: int | None = None,
    teacher: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    augmentation: Mapping[str, Any] | None = None,
    augmentation_hash: str | None = None,
) -> dict[str, Any]:
    """An `expected` dict for `identity_mismatches` / `SparseLogitReader.check_compatible`, leaving out fields
    given as None; `augmentation_hash` defaults to the hash of `augmentation`."""
    if augmentation is not None and augmentation_hash is None:
        augmentation_hash = hash_config(augmentation)
    fields = {
        "num_samples": num_samples,
        "topk": topk,
        "num_classes": num_classes,
        "teacher": teacher,
        "dataset": dataset,
        "augmentation": augmentation,
        "augmentation_hash": augmentation_hash,
    }
    return {name: value for name, value in fields.items() if value is not None}


def recipe_identity(recipe: Recipe, dataset: Any, num_classes: int, mixup: Optional[SeededMixup], world_size: int,
                    *, topk: int, teacher_state_dict: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What a cache must hold to serve `recipe` on `dataset` (an `expected_identity` dict with every field).

    Args:
        recipe: the recipe (its data, augmentation, Mixup/CutMix, batch size, train seed and teacher).
        dataset: the seeded training dataset.
        num_classes: its class count.
        mixup: the run's seeded Mixup/CutMix, or None.
        world_size: number of processes (part of the identity with Mixup/CutMix).
        topk: K.
        teacher_state_dict: the built teacher's weights (`vitkd cache-logits`); None for a run that reads a cache.
    """
    data, teacher = recipe.data, recipe.teacher
    return expected_identity(
        num_samples=len(dataset), topk=int(topk), num_classes=int(num_classes),
        teacher=teacher_identity(teacher, teacher_state_dict) if teacher is not None and teacher.name else None,
        dataset=dataset_record(dataset, data),
        augmentation=augmentation_record(data, recipe.train.seed, mixup, data.batch_size, world_size))


# ----------------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------------


def _canonical_expected(expected: Mapping[str, Any]) -> dict[str, Any]:
    """`expected` with aliases resolved, values as the manifest stores them and the augmentation hash filled in.

    Raises:
        ValueError: a key that is not an identity field (catches typos that would skip a check).
    """
    canonical: dict[str, Any] = {}
    for key, value in expected.items():
        field = _IDENTITY_ALIASES.get(key, key)
        if field not in IDENTITY_FIELDS:
            raise ValueError(
                f"unknown cache identity field {key!r}; valid fields are {list(IDENTITY_FIELDS)} "
                f"(or the aliases {sorted(_IDENTITY_ALIASES)})"
            )
        canonical[field] = normalise_json_value(value)
    if "augmentation" in canonical and "augmentation_hash" not in canonical:
        canonical["augmentation_hash"] = hash_config(canonical["augmentation"])
    return canonical


def _differences(prefix: str, expected: Any, found: Any) -> list[tuple[str, Any, Any]]:
    """Leaf-level `(dotted field, expected, found)` differences between two JSON-like values."""
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        differences = []
        for key in list(expected) + [key for key in found if key not in expected]:
            differences.extend(_differences(f"{prefix}.{key}", expected.get(key), found.get(key)))
        return differences
    return [] if expected == found else [(prefix, expected, found)]


def identity_mismatches(manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every setting where a cache's manifest disagrees with `expected`, as `(dotted field, expected, cache's value)`.

    Args:
        manifest: the cache manifest.
        expected: any of `IDENTITY_FIELDS` (or the aliases `teacher_id`, `dataset_fingerprint`, `k`); fields left out
            are not checked. Records are compared leaf by leaf (`dataset.samples_hash`, `augmentation.seed`, ...),
            except `teacher`, of which only the keys given are compared, each as a whole (`teacher.kwargs`): a run
            that builds no teacher cannot vouch for its `weights_hash`. `augmentation` is compared with the record in
            the manifest when it holds one; `augmentation_hash` is reported only when no part of the record was.
    Raises:
        ValueError: `expected` holds a key that is not an identity field.
    """
    canonical = _canonical_expected(expected)
    mismatches: list[tuple[str, Any, Any]] = []
    for field in IDENTITY_FIELDS:
        if field not in canonical:
            continue
        wanted, found = canonical[field], manifest.get(field)
        if field == "teacher" and isinstance(wanted, Mapping):
            stored = found if isinstance(found, Mapping) else {}
            mismatches.extend((f"teacher.{key}", value, stored.get(key)) for key, value in wanted.items()
                              if stored.get(key) != value)
        elif field == "augmentation":
            if found is not None:
                mismatches.extend(_differences(field, wanted, found))
        elif field == "augmentation_hash":
            if wanted != found and not any(name.startswith("augmentation.") for name, _, _ in mismatches):
                mismatches.append((field, wanted, found))
        else:
            mismatches.extend(_differences(field, wanted, found))
    return mismatches


def _shorten(value: Any, limit: int = 160) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mismatch_error(mismatches: list[tuple[str, Any, Any]], cache_dir: str | os.PathLike, *, action: str,
                   kind: str = "logit cache", rebuild: Optional[str] = None) -> CacheMismatchError:
    """A `CacheMismatchError` listing each disagreeing field with both values and what the field means.

    `kind` names the store ("logit cache", "embedding store"); `rebuild` is the closing advice (default: rebuild a
    logit cache with `vitkd cache-logits`, and how to inspect it).
    """
    lines = [f"{kind} {cache_dir} was built for different settings (recorded in its {MANIFEST_NAME}); "
             f"cannot {action}:"]
    hints, noun = [], kind.split()[-1]  # "cache", "store"
    for field, wanted, found in mismatches:
        lines.append(f"  {field}: this run has {_shorten(wanted)}, the {noun} has {_shorten(found)}")
        hint = next((text for prefix, text in _HINTS.items() if field == prefix or field.startswith(prefix + ".")),
                    None)
        if hint and hint not in hints:
            hints.append(hint)
    lines.extend(f"  ({hint})" for hint in hints)
    lines.append(rebuild or f"rebuild the cache for this recipe with `vitkd cache-logits RECIPE` into a new "
                 f"directory, or change the recipe back; {inspect_command(cache_dir)} shows what the cache holds")
    return CacheMismatchError("\n".join(lines), mismatches)
