"""Tasks by recipe name (`task:` in a recipe). Adding a task = one module with a `Task` subclass + one entry here.

A task class provides `resolve_recipe(recipe) -> Recipe` (what the recipe's names mean, checked before anything is
built) and `__init__(recipe, context)`; see `vitkd.engine.task.Task` for the rest of the contract.
"""

from __future__ import annotations

import difflib

from vitkd.config import Recipe
from vitkd.engine.distributed import DistributedContext
from vitkd.engine.task import Task
from vitkd.errors import ConfigError
from vitkd.tasks.classification.task import ClassificationTask
from vitkd.tasks.downstream import DetectionTask, InstanceSegmentationTask, SemanticSegmentationTask

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "detection": DetectionTask,
    "instance_segmentation": InstanceSegmentationTask,
    "semantic_segmentation": SemanticSegmentationTask,
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"task: unknown task '{name}'{hint}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def resolve_recipe(recipe: Recipe) -> Recipe:
    """The recipe checked by its task (model names, loss terms...) with defaults resolved; idempotent."""
    return task_class(recipe.task).resolve_recipe(recipe)


def build_task(recipe: Recipe, context: DistributedContext) -> Task:
    """The recipe's task, built (data, models, trainable module) for this process."""
    return task_class(recipe.task)(recipe, context)
