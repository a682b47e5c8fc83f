"""The `vitkd finetune` command: fine-tune a student as a detection or segmentation backbone, or evaluate such a run.

    vitkd finetune det  RECIPE [key=value ...] [--resume]   # Faster R-CNN        (task: detection)
    vitkd finetune inst RECIPE [key=value ...] [--resume]   # Mask R-CNN          (task: instance_segmentation)
    vitkd finetune seg  RECIPE [key=value ...] [--resume]   # Semantic FPN/linear (task: semantic_segmentation)
    vitkd finetune eval RUN_DIR [key=value ...] [--checkpoint best|last] [--device cpu]

Fine-tuning is the engine's training (`vitkd.training.train`) with the task the first word names, so
`vitkd train RECIPE` with `task:` in the recipe does the same. `eval` rebuilds the model from the run's
`config.yaml` (overrides such as `downstream.data.root=...` point it at other data) and prints its metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The command's short task words and the tasks they run.
TASK_WORDS = {"det": "detection", "inst": "instance_segmentation", "seg": "semantic_segmentation"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `vitkd finetune` (positional `overrides` so that the CLI's override handling applies)."""
    parser.add_argument("action", choices=[*TASK_WORDS, "eval"],
                        help="det (Faster R-CNN), inst (Mask R-CNN), seg (semantic segmentation) or eval (a run)")
    parser.add_argument("recipe", help="a YAML recipe or shipped recipe name (e.g. downstream/digit_scenes_seg); "
                                       "for eval, a fine-tuning run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides of the recipe")
    parser.add_argument("--resume", action="store_true", help="continue the run where its last checkpoint stopped")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="eval: the run's checkpoint to evaluate (default: best)")
    parser.add_argument("--device", default="auto", help="eval: device (auto, cpu, cuda, cuda:N)")


def run(args: argparse.Namespace) -> int:
    """Run `vitkd finetune`; prints the training summary or the evaluation metrics as JSON."""
    result = evaluate_run(Path(args.recipe), args.overrides, args.checkpoint, args.device) if args.action == "eval" \
        else fine_tune(args.action, args.recipe, args.overrides, args.resume)
    print(json.dumps(result, indent=2))
    return 0


def fine_tune(action: str, recipe_argument: str, overrides: list[str], resume: bool = False) -> dict[str, Any]:
    """Train the recipe as the task `action` names (a recipe that names another task is refused)."""
    from vitkd.config import load_raw_recipe, load_recipe
    from vitkd.errors import ConfigError
    from vitkd.shipped_recipes import find_recipe
    from vitkd.training import train

    task = TASK_WORDS[action]
    path = find_recipe(recipe_argument)
    stated = load_raw_recipe(path).get("task")
    if stated not in (None, "classification", task):
        words = {name: word for word, name in TASK_WORDS.items()}
        hint = f"vitkd finetune {words[stated]}" if stated in words else "vitkd train"
        raise ConfigError(f"{path}: task is {stated!r}, not {task!r}; run it with `{hint} {recipe_argument}`")
    return train(load_recipe(path, [*overrides, f"task={task}"]), resume=resume)


def evaluate_run(run_dir: Path, overrides: list[str], checkpoint: str = "best", device: str = "auto"
                 ) -> dict[str, Any]:
    """Metrics of a fine-tuning run's `checkpoint` on the validation data of its recipe (after `overrides`)."""
    from vitkd.config import load_recipe
    from vitkd.engine.checkpoint import best_checkpoint_path, last_checkpoint_path, load_checkpoint
    from vitkd.engine.distributed import DistributedContext, resolve_device
    from vitkd.errors import CheckpointError, ConfigError
    from vitkd.tasks.registry import build_task, resolve_recipe

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a vitkd run directory (it has no config.yaml)")
    recipe = resolve_recipe(load_recipe(config, overrides))
    if recipe.task not in TASK_WORDS.values():
        raise ConfigError(f"{run_dir} is a {recipe.task!r} run; evaluate it with `vitkd eval {run_dir}`")
    task = build_task(recipe, DistributedContext(device=resolve_device(device, option="--device")))
    path = best_checkpoint_path(run_dir) if checkpoint == "best" else last_checkpoint_path(run_dir)
    state = load_checkpoint(path)
    wanted = task.model_identity()["model_name"]
    if state.get("model_name") != wanted:
        raise CheckpointError(f"{path} holds a '{state.get('model_name')}' model, but {config} builds '{wanted}'")
    task.model.load_state_dict(state["model"])
    metrics = task.evaluate(task.model, None)
    return {"run": str(run_dir), "checkpoint": str(path), "epoch": state.get("epoch"), "task": recipe.task,
            **metrics}
