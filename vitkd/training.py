"""Entry points that tie a recipe to its task and to the engine: `build_trainer` and `train`.

    recipe = load_recipe("recipes/demo/vitkd.yaml")   # schema only
    summary = train(recipe)                            # resolves the recipe, builds its task, runs the engine
"""

from __future__ import annotations

from typing import Any, Optional

from vitkd.config import Recipe
from vitkd.engine.checkpoint import check_run_directory
from vitkd.engine.distributed import DistributedContext, init_distributed, set_cpu_threads
from vitkd.engine.rng import seed_everything
from vitkd.engine.trainer import Trainer
from vitkd.tasks.registry import build_task, resolve_recipe


def build_trainer(recipe: Recipe, resume: bool = False, context: Optional[DistributedContext] = None) -> Trainer:
    """Resolve the recipe, join the process group (torchrun) or run alone, refuse to overwrite a finished run (or
    to resume a run that has no checkpoint), seed every RNG, build the recipe's task and the engine around it."""
    recipe = resolve_recipe(recipe)
    context = context or init_distributed(recipe.train.device)
    set_cpu_threads(recipe.train.cpu_threads)
    check_run_directory(recipe.run_dir, resume)
    seed_everything(recipe.train.seed, recipe.train.deterministic)
    return Trainer(recipe, build_task(recipe, context), context, resume=resume)


def train(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train a recipe (or continue its run with `resume`) and return its summary."""
    return build_trainer(recipe, resume=resume).fit()
