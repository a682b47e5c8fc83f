"""What the engine trains: a registry of tasks (`vitkd.tasks.registry`); classification with distillation first."""

from vitkd.tasks.registry import TASKS, build_task, resolve_recipe, task_class

__all__ = ["TASKS", "build_task", "resolve_recipe", "task_class"]
