"""The contract between the engine and a task: what is trained (a distilled student, a detector, a segmenter...).

The engine (`vitkd.engine.trainer.Trainer`) owns the optimizer, schedule, gradient clipping, AMP, EMA, the DDP
wrapper, progress, logs, checkpoints and resume. The task owns everything that depends on what is trained: its data,
its trainable module, the forward of one step into named losses, evaluation into metrics and its export. Adding a
task is one module with a `Task` subclass plus an entry in `vitkd.tasks.registry`; the engine never branches on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from vitkd.config import Recipe

#: The key of the total loss in the dict a training step returns; it is what the engine back-propagates.
TOTAL_LOSS = "loss"


def updates_per_epoch(train_loader: Iterable, max_steps_per_epoch: Optional[int]) -> int:
    """Optimizer updates in one epoch: the loader's batches, capped by `train.max_steps_per_epoch` when set."""
    return min(len(train_loader), max_steps_per_epoch) if max_steps_per_epoch else len(train_loader)


@dataclass
class StepResult:
    """One training step's forward.

    losses: name -> scalar tensor; the total under `TOTAL_LOSS` (back-propagated), every other entry is logged
    (detached). None when the batch held nothing to train on (every image skipped): the engine makes no update.
    num_samples: samples in the batch that trained (weights the logged averages; counts `images` per second).
    skipped: samples of the batch the loader dropped (unreadable images), counted in the logs.
    """

    losses: Optional[dict[str, torch.Tensor]]
    num_samples: int
    skipped: int = 0


class Task:
    """One kind of training. Subclasses take `(recipe, context)` in `__init__` (the engine has seeded every RNG by
    then), set the attributes below and implement the methods.

    Attributes:
        model: the model being trained that evaluation, EMA and the export see (the student, the detector...).
        trainable: the one module that DistributedDataParallel wraps and the optimizer trains: `model` plus every
            trainable part of the loss (projections, mask tokens). Frozen parts (a teacher) stay outside it.
        train_loader: yields the batches `training_step` takes; its sampler has `set_epoch`.
        key_metric: the metric of `evaluate` that decides the `best` checkpoint and export.
        higher_is_better: the direction of `key_metric`.
        layer_decay: layer-wise lr decay of the optimizer over `trainable` (timm's `layer_decay`, from the module's
            `group_matcher`); None: every parameter at the schedule's lr.
    """

    model: nn.Module
    trainable: nn.Module
    train_loader: Iterable
    key_metric: str
    higher_is_better: bool = True
    layer_decay: Optional[float] = None

    @staticmethod
    def resolve_recipe(recipe: Recipe) -> Recipe:
        """Check what the recipe's names mean for this task (models, loss terms...) before anything is built and
        return it with defaults resolved (idempotent). Raises `ConfigError` naming the key."""
        return recipe

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Prepare the data of training epoch `epoch` (sampler order, augmentation seeds). The loader's next pass
        starts at batch `first_step` of the epoch, the batches before it left out (a run resumed from a mid-epoch
        checkpoint continues there); they must be the same batches a full pass would give from that point."""
        raise NotImplementedError

    def training_step(self, trainable: nn.Module, batch: Any, epoch: int) -> StepResult:
        """Forward one batch through `trainable` (the module itself or its DDP wrapper; call it, do not reach
        around it) into named losses. Runs inside the engine's autocast."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
        """Metrics of `model` (the trained model or its EMA) on the validation data, reduced over processes;
        must contain `key_metric`. `amp_dtype`: the run's autocast dtype (None: full precision)."""
        raise NotImplementedError

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        """A short human line of evaluation metrics for the end-of-epoch log (e.g. `val top-1 93.10%`)."""
        return f"val {self.key_metric} {metrics[self.key_metric]:.4g}"

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write what users deploy or fine-tune from `model` into `out_dir` (called on every new best)."""
        raise NotImplementedError

    def model_identity(self) -> dict[str, Any]:
        """What a checkpoint records about `model` so a resume can refuse another architecture:
        {"model_name": ..., "model_kwargs": {...}}."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State of the task's trainable parts besides `model` (the objective's projections...) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume)."""

    def summary(self, metrics: dict[str, float], previous: dict[str, Any]) -> dict[str, Any]:
        """Task fields of summary.json from the last evaluation (`previous`: the summary a resumed run had)."""
        return {}
