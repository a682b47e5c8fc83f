"""Run one pipeline stage: reuse it when finished with the same recipe and the same starting weights, resume it when
interrupted, train it otherwise."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from vitkd.config import Recipe, load_recipe, load_yaml, recipe_to_dict
from vitkd.errors import ConfigError
from vitkd.files import atomic_write
from vitkd.models.factory import resolve_checkpoint

#: Beside a stage's run: the fingerprints of the weights it started from (student and teacher checkpoints).
INPUTS_FILE = "pipeline_inputs.json"


def _file_digest(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    file = resolve_checkpoint(path)
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return f"{file.name}:{digest.hexdigest()}"


def stage_inputs(recipe: Recipe) -> dict[str, Optional[str]]:
    """SHA-256 of the student's and the teacher's starting weights (None where the recipe names none)."""
    teacher = recipe.teacher.checkpoint if recipe.teacher is not None else None
    return {"student": _file_digest(recipe.student.checkpoint), "teacher": _file_digest(teacher)}


def _same_recipe(config_path: Path, recipe: Recipe) -> bool:
    """Whether the run's saved recipe is `recipe`, read through today's schema: keys added to vitkd since the run
    was trained take their defaults on both sides, so a newer vitkd still reuses the run."""
    from vitkd.tasks import resolve_recipe

    try:
        saved = resolve_recipe(load_recipe(raw=load_yaml(config_path.read_text())))
    except ConfigError:  # a key this vitkd no longer knows, or a value it refuses: not the same recipe
        return False
    return recipe_to_dict(saved) == recipe_to_dict(recipe)


def stage_state(recipe: Recipe) -> str:
    """`finished` (same recipe, summary of all epochs), `interrupted` (a checkpoint, no final summary), `new`.
    Raises ConfigError when the run directory holds another recipe's run or one trained from other weights."""
    run_dir = recipe.run_dir
    config_path = run_dir / "config.yaml"
    has_checkpoint = (run_dir / "checkpoints" / "last.pt").is_file()
    if not config_path.is_file() and not has_checkpoint:
        return "new"
    if not config_path.is_file() or not _same_recipe(config_path, recipe):
        raise ConfigError(f"{run_dir} holds a run of a different recipe than stage {recipe.name}; rerun with --fresh "
                          f"to retrain the pipeline, or set another output directory")
    inputs_path = run_dir / INPUTS_FILE
    if inputs_path.is_file() and json.loads(inputs_path.read_text()) != stage_inputs(recipe):
        raise ConfigError(f"{run_dir} was trained from other starting weights than the previous stage holds now; "
                          f"rerun with --fresh to retrain the pipeline")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("epochs") == recipe.train.epochs and summary.get("top1") is not None:
            return "finished"
    return "interrupted" if has_checkpoint else "new"


def run_stage(recipe: Recipe) -> tuple[dict[str, Any], str]:
    """(summary, what happened: reused / resumed / trained). `recipe` is resolved by its task here."""
    from vitkd.tasks import resolve_recipe
    from vitkd.training import train

    recipe = resolve_recipe(recipe)
    state = stage_state(recipe)
    if state == "finished":
        return json.loads((recipe.run_dir / "summary.json").read_text()), "reused"
    if state == "interrupted":
        return train(recipe, resume=True), "resumed"
    inputs = stage_inputs(recipe)
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(recipe.run_dir / INPUTS_FILE, json.dumps(inputs, indent=2))
    return train(recipe), "trained"
