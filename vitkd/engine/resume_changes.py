"""What a resumed run may change in its recipe, and the refusal of everything else.

A checkpoint stores the recipe it was trained with. `--resume` with a recipe that differs would otherwise quietly
mix two runs (a new learning rate over an old optimizer state, another loss on half-trained weights), so every
differing key is named and the resume refused, except the keys below, which change how a run is watched or how
fast it goes, not what it computes, plus `train.epochs`:

- `train.epochs`: more (or fewer) epochs. The learning-rate schedule is re-planned over the new total, so the
  remaining epochs follow a schedule that an uninterrupted run with that total would have followed from its start;
  the log says so.
- loader workers, evaluation batch size, CPU threads, device, progress bar, logging interval, TensorBoard,
  checkpoint interval and the non-finite policy: the results do not depend on them (runs are bitwise identical for
  any worker count, see the README), or they only change what is written and when.

Keys a newer vitkd added (absent from an older checkpoint) are not compared.
"""

from __future__ import annotations

from typing import Any

from vitkd.errors import ConfigError

#: Dotted recipe keys a resume may change, with what the change means.
RESUMABLE_KEYS: dict[str, str] = {
    "train.epochs": "the learning-rate schedule is re-planned over the new number of epochs",
    "data.num_workers": "loader workers do not change results",
    "data.eval_batch_size": "evaluation batching",
    "train.cpu_threads": "CPU threads",
    "train.device": "the device",
    "train.progress": "the progress bar",
    "train.log_every": "how often losses are read",
    "train.tensorboard": "TensorBoard logging",
    "train.checkpoint_every": "how often mid-epoch checkpoints are written",
    "train.nonfinite": "the non-finite-loss policy",
    "train.nonfinite_max_skips": "the non-finite-loss policy",
    "train.compile": "torch.compile of the same computation (inductor may round differently)",
    "train.compile_backend": "torch.compile of the same computation (inductor may round differently)",
    "teacher.channels_last": "the teacher's memory format",
}


def flatten(recipe: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a plain recipe dict: {"optim": {"lr": 1}} -> {"optim.lr": 1}; list items by index."""
    if isinstance(recipe, dict):
        items = recipe.items()
    elif isinstance(recipe, list):
        items = ((str(index), value) for index, value in enumerate(recipe))
    else:
        return {prefix: recipe}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not flat and prefix:
        flat[prefix] = recipe  # an empty section or list is a value of its own
    return flat


def recipe_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, current value)} for every key that differs; keys only the current recipe has
    (added by a newer vitkd) are left out, keys only the saved one has show as (value, "<absent>")."""
    old, new = flatten(saved), flatten(current)
    changes = {key: (value, new.get(key, "<absent>")) for key, value in old.items() if new.get(key, "<absent>") != value}
    for key in new.keys() - old.keys():
        if _is_free_form(key):  # a loss term, a loss parameter or a model kwarg the saved recipe did not have
            changes[key] = ("<absent>", new[key])
    return dict(sorted(changes.items()))


def _is_free_form(key: str) -> bool:
    """Keys the user writes freely (loss terms and their params, model kwargs), unlike the schema's own keys, which
    a newer vitkd may add with a default."""
    return key.startswith("losses.") or ".params." in key or ".kwargs." in key


def check_resume_changes(saved: dict, current: dict, checkpoint: str) -> list[str]:
    """The notes to log for allowed changes; raises `ConfigError` naming every other differing key."""
    changes = recipe_changes(saved, current)
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(refused.items())[:8])
        more = f" and {len(refused) - 8} more" if len(refused) > 8 else ""
        raise ConfigError(f"--resume: the recipe differs from the one {checkpoint} was trained with: {listed}{more}. "
                          f"Restore those values to continue the run, or train a new run (name=...); a resume may "
                          f"change only {', '.join(RESUMABLE_KEYS)}")
    return [f"{key}: {old!r} -> {new!r} ({RESUMABLE_KEYS[key]})" for key, (old, new) in changes.items()]
