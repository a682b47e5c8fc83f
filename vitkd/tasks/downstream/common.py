"""What the detection and segmentation tasks share: the student turned backbone, the loaders, the epoch's data
order, the checkpoint identity and the export.

A recipe's `student` names the model and its weights (`student.checkpoint`: a vitkd run directory, export or weights
file); `downstream.backbone` says how it becomes a backbone; `downstream.data` names the data. Loader settings come
from the recipe's `data` (`batch_size`, `eval_batch_size`, `num_workers`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitkd.config import DownstreamConfig, Recipe, recipe_to_dict
from vitkd.data.loader import ShardSampler, build_train_sampler, ignore_stop_signals, loader_generator
from vitkd.downstream.backbones import DownstreamBackbone, LoadedStudent, build_configured_backbone, load_student
from vitkd.engine.distributed import DistributedContext
from vitkd.engine.task import Task
from vitkd.files import atomic_write
from vitkd.models.factory import check_model_name
from vitkd.tasks.downstream.seeded_pairs import SeededPairDataset

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_INFO = "model.json"


class DownstreamTask(Task):
    """Base class of the fine-tuning tasks. Subclasses build `train_dataset` (a `SeededPairDataset`), `val_dataset`,
    the collate functions, `model` and `num_classes` / `class_names`; this class provides the rest of the contract.

    Attributes: student (`LoadedStudent`: name, kwargs, normalisation of the student), backbone, config (the
    recipe's `downstream` section).
    """

    @staticmethod
    def resolve_recipe(recipe: Recipe) -> Recipe:
        check_model_name(recipe.student.name, "student.name")
        if recipe.downstream is None:
            recipe = dataclasses.replace(recipe, downstream=DownstreamConfig())
        return recipe

    def __init__(self, recipe: Recipe, context: DistributedContext) -> None:
        self.recipe = recipe
        self.context = context
        self.device = context.device
        self.config: DownstreamConfig = recipe.downstream or DownstreamConfig()
        self.layer_decay = self.config.backbone.layer_decay

    # ----------------------------------------------------------------------------------------------------------------
    # set-up helpers

    def build_backbone(self) -> DownstreamBackbone:
        """The recipe's student, loaded and wrapped as `downstream.backbone` says (sets `self.student`)."""
        student, options = self.recipe.student, self.config.backbone
        self.student: LoadedStudent = load_student(student.name, student.kwargs, student.checkpoint,
                                                   options.drop_path_rate)
        if student.mean is not None and student.std is not None:  # the recipe states the student's normalisation
            self.student = dataclasses.replace(self.student, mean=tuple(student.mean), std=tuple(student.std))
        return build_configured_backbone(self.student.model, options, self.config.data.size)

    def build_loaders(self, train_collate: Callable, val_collate: Callable) -> None:
        """`train_loader` (seeded order per epoch, sharded over processes, resumable mid-epoch) and `val_loader`
        (in order, each process a strided shard) over `train_dataset` / `val_dataset`."""
        data, seed, context = self.recipe.data, self.recipe.train.seed, self.context
        sampler = build_train_sampler(self.train_dataset, seed, context.rank, context.world_size)
        self.train_loader = DataLoader(
            self.train_dataset, batch_size=data.batch_size, sampler=sampler, num_workers=data.num_workers,
            collate_fn=train_collate, drop_last=len(self.train_dataset) // context.world_size > data.batch_size,
            pin_memory=torch.cuda.is_available(), generator=loader_generator(seed), worker_init_fn=ignore_stop_signals)
        shard = ShardSampler(len(self.val_dataset), context.rank, context.world_size) if context.enabled else None
        self.val_loader = DataLoader(
            self.val_dataset, batch_size=data.eval_batch_size or data.batch_size, sampler=shard, shuffle=False,
            num_workers=data.num_workers, collate_fn=val_collate, persistent_workers=data.num_workers > 0,
            generator=loader_generator(0), worker_init_fn=ignore_stop_signals)

    # ----------------------------------------------------------------------------------------------------------------
    # the Task contract

    train_dataset: SeededPairDataset
    val_dataset: Dataset
    num_classes: int
    class_names: list[str]

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        self.train_dataset.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.sampler.start_at(first_step * self.train_loader.batch_size)

    def model_identity(self) -> dict[str, Any]:
        """The task and the student: a resume refuses a run of another task or another student."""
        return {"model_name": f"{self.recipe.task}:{self.student.name}", "model_kwargs": self.student.kwargs}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """`model.safetensors` (the whole fine-tuned model's weights) and `model.json` (task, student, classes,
        normalisation, and the recipe that rebuilds the model)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        state_dict = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        atomic_write(out_dir / EXPORT_WEIGHTS, lambda temporary: save_file(state_dict, temporary))
        info = {"task": self.recipe.task, "student": self.student.name, "student_kwargs": self.student.kwargs,
                "num_classes": self.num_classes, "classes": self.class_names, "mean": list(self.student.mean),
                "std": list(self.student.std), "recipe": recipe_to_dict(self.recipe)}
        atomic_write(out_dir / EXPORT_INFO, json.dumps(info, indent=2))

    def summary(self, metrics: dict[str, float], previous: dict[str, Any]) -> dict[str, Any]:
        return {"student": self.student.name, "student_weights": self.student.weights,
                **{name: metrics.get(name, previous.get(name)) for name in self.summary_metrics()}}

    def summary_metrics(self) -> list[str]:
        """The evaluation metrics summary.json records."""
        return [self.key_metric]


def to_device(value: Any, device: torch.device) -> Any:
    """A tensor (tv_tensors unwrapped to plain tensors) moved to `device`; other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor).to(device, non_blocking=True)
    return value


def optional_path(root: Optional[str], relative: str) -> Path:
    """`relative` under `root` (an absolute `relative` stands alone)."""
    path = Path(relative)
    return path if path.is_absolute() or root is None else Path(root) / path
