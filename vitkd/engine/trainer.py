"""The engine: one task-agnostic loop for every task and every distillation method.

One step: batch -> `task.training_step` (inside autocast; returns named losses) -> backward through one
`GradScaler(enabled=...)` path -> clip -> optimizer/scheduler/EMA. Loss values stay on the device and are read every
`train.log_every` steps (progress bar, non-finite check). Per epoch: `task.evaluate`, metrics.jsonl, atomic `last`
checkpoint, `best` checkpoint and `task.export` when the task's key metric improves.

The engine knows nothing of what is trained: no classes, no teachers, no loss terms (see `vitkd.engine.task`).
Build it through `vitkd.training.build_trainer(recipe)`, which resolves the recipe and builds its task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from vitkd.config import Recipe, dump_recipe, recipe_to_dict
from vitkd.engine.amp import autocast, build_grad_scaler, resolve_amp_dtype
from vitkd.engine.checkpoint import best_checkpoint_path, last_checkpoint_path, load_checkpoint, save_checkpoint
from vitkd.engine.distributed import (DistributedContext, all_processes_agree, barrier, reduce_sums,
                                      wrap_for_training)
from vitkd.engine.loss_meter import LossMeter, NonFiniteStep
from vitkd.engine.metrics_log import MetricsLog
from vitkd.engine.rng import capture_rng_state, restore_rng_state
from vitkd.engine.task import TOTAL_LOSS, Task, updates_per_epoch
from vitkd.errors import ConfigError, TrainingError
from vitkd.files import atomic_write
from vitkd.models.factory import count_parameters


class Trainer:
    """Runs (or resumes) a built task: `fit()` trains from `start_epoch` to `train.epochs`.

    Run directory `<train.output_dir>/<name>/`: config.yaml, metrics.jsonl, summary.json, checkpoints/last.pt,
    checkpoints/best.pt, export/ (what the task exports).
    """

    def __init__(self, recipe: Recipe, task: Task, context: DistributedContext, resume: bool = False) -> None:
        self.recipe = recipe
        self.task = task
        self.context = context
        self.device = context.device
        self.run_dir = recipe.run_dir
        self.last_path = last_checkpoint_path(self.run_dir)
        self.best_path = best_checkpoint_path(self.run_dir)
        self.resume = resume
        self.trained_module = wrap_for_training(task.trainable, context)
        self._build_optimization()
        self.start_epoch = 0
        self.best_metric: Optional[float] = None
        self.best_epoch = -1
        self.log = MetricsLog(self.run_dir, enabled=context.is_main, tensorboard=recipe.train.tensorboard)
        if resume:
            self._load_resume_state()

    def _build_optimization(self) -> None:
        optim = self.recipe.optim
        self.optimizer = create_optimizer_v2(self.task.trainable, opt=optim.opt, lr=optim.lr,
                                             weight_decay=optim.weight_decay, momentum=optim.momentum)
        self.steps_per_epoch = updates_per_epoch(self.task.train_loader, self.recipe.train.max_steps_per_epoch)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=optim.sched, num_epochs=self.recipe.train.epochs, warmup_epochs=optim.warmup_epochs,
            warmup_lr=optim.warmup_lr, min_lr=optim.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.amp_dtype = resolve_amp_dtype(self.recipe.train.amp, self.device)
        self.scaler = build_grad_scaler(self.device, self.amp_dtype)
        self.ema = ModelEmaV3(self.task.model, decay=self.recipe.train.ema_decay) if self.recipe.train.ema else None

    # ----------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _training_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.task.model.state_dict(),
            **self.task.model_identity(),
            "task": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "key_metric": self.task.key_metric,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "recipe": recipe_to_dict(self.recipe),
        }

    def _load_resume_state(self) -> None:
        state = load_checkpoint(self.last_path)
        wanted = self.task.model_identity()["model_name"]
        if state.get("model_name") != wanted:
            raise ConfigError(f"--resume: {self.last_path} was trained with model '{state.get('model_name')}', "
                              f"the recipe names '{wanted}'")
        self.task.model.load_state_dict(state["model"])
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.log.truncate_after(state["epoch"])

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.task.model

    def _improves(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.task.higher_is_better else value < self.best_metric

    # ----------------------------------------------------------------------------------------------------------------
    # the loop

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.task.set_epoch(epoch)
        self.trained_module.train()
        meter = LossMeter(self.device)
        skipped = 0
        start = time.perf_counter()
        progress = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}",
                        disable=not (self.recipe.train.progress and self.context.is_main), leave=False)
        clip = self.recipe.optim.clip_grad
        log_every = self.recipe.train.log_every
        skip_nonfinite = self.recipe.train.nonfinite == "skip"
        nonfinite_skipped = 0
        for step, batch in enumerate(self.task.train_loader):
            if step >= self.steps_per_epoch:
                break
            with autocast(self.device, self.amp_dtype):
                result = self.task.training_step(self.trained_module, batch, epoch)
            skipped += result.skipped
            if result.losses is None:
                continue
            if skip_nonfinite and not all_processes_agree(torch.isfinite(result.losses[TOTAL_LOSS]), self.context):
                nonfinite_skipped += 1
                if nonfinite_skipped > self.recipe.train.nonfinite_max_skips:
                    meter.update(result.losses, result.num_samples, step)  # names this step and its terms
                    self._read_meter(meter, epoch, None, start)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(result.losses[TOTAL_LOSS]).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self._optimizer_parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            num_updates = epoch * self.steps_per_epoch + step + 1
            self.scheduler.step_update(num_updates)
            if self.ema is not None:
                self.ema.update(self.task.model, step=num_updates)
            meter.update(result.losses, result.num_samples, step)
            progress.update(1)
            if (step + 1) % log_every == 0:
                self._read_meter(meter, epoch, progress, start)
        progress.close()
        totals, images_seen = self._read_meter(meter, epoch, None, start)
        self.scheduler.step(epoch + 1)
        elapsed = time.perf_counter() - start
        totals.update({"images": float(images_seen), "skipped": float(skipped)})
        totals = reduce_sums(totals, self.context)
        count = max(totals.pop("images"), 1.0)
        metrics = {f"train/{k}": v / count for k, v in totals.items() if k != "skipped"}
        metrics["train/skipped_images"] = int(totals["skipped"])
        if skip_nonfinite:
            metrics["train/nonfinite_skipped"] = nonfinite_skipped
        metrics["train/images_per_s"] = count / elapsed if elapsed > 0 else 0.0
        metrics["train/epoch_time_s"] = elapsed
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def _read_meter(self, meter: LossMeter, epoch: int, progress: Optional[tqdm],
                    start: float) -> tuple[dict[str, float], int]:
        """The one host sync of the loss sums: stop on a non-finite loss, else refresh the progress bar."""
        totals, images_seen, nonfinite = meter.read()
        if nonfinite is not None:
            self._stop_on_nonfinite(nonfinite, epoch)
        if progress is not None and images_seen:
            progress.set_postfix(loss=f"{totals[TOTAL_LOSS] / images_seen:.4f}",
                                 img_s=f"{images_seen / (time.perf_counter() - start):.0f}")
        return totals, images_seen

    def _stop_on_nonfinite(self, nonfinite: NonFiniteStep, epoch: int) -> None:
        if self.last_path.is_file():
            saved = f"The last finished epoch is saved in {self.last_path}; lower optim.lr or set optim.clip_grad, " \
                    f"then --resume"
        else:
            saved = "No checkpoint exists yet (no epoch finished); lower optim.lr or set optim.clip_grad and start again"
        terms = {name: value for name, value in nonfinite.losses.items() if name != TOTAL_LOSS}
        skips = ""
        if self.recipe.train.nonfinite == "skip":
            skips = f" (after skipping train.nonfinite_max_skips={self.recipe.train.nonfinite_max_skips} such steps " \
                    f"this epoch)"
        raise TrainingError(f"loss is {nonfinite.losses[TOTAL_LOSS]} at epoch {epoch + 1}, step {nonfinite.step}"
                            f"{skips}; terms: {terms}. {saved}")

    def _optimizer_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def fit(self) -> dict[str, Any]:
        """Train from `start_epoch` to `train.epochs`; returns the summary written to summary.json."""
        recipe = self.recipe
        key = self.task.key_metric
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.yaml", dump_recipe(recipe))
        wall_start = time.perf_counter()
        throughputs = []
        evaluation: dict[str, float] = {}
        for epoch in range(self.start_epoch, recipe.train.epochs):
            metrics = self.train_one_epoch(epoch)
            throughputs.append(metrics["train/images_per_s"])
            evaluation = self.task.evaluate(self._eval_model(), self.amp_dtype)
            metrics.update({f"val/{name}": value for name, value in evaluation.items()})
            improved = self._improves(evaluation[key])
            if improved:
                self.best_metric, self.best_epoch = evaluation[key], epoch
            metrics["epoch"] = epoch
            metrics[f"best/{key}"] = self.best_metric
            if self.context.is_main:
                state = self._training_state(epoch)
                save_checkpoint(self.last_path, state)
                if improved:
                    save_checkpoint(self.best_path, state)
                    self.task.export(self._eval_model(), self.run_dir / "export")
                self.log.write(metrics)
            barrier(self.context)
            if self.context.is_main and recipe.train.progress:
                tqdm.write(f"[{recipe.name}] epoch {epoch + 1}/{recipe.train.epochs} loss "
                           f"{metrics['train/loss']:.4f} {self.task.describe_metrics(evaluation)} "
                           f"({metrics['train/images_per_s']:.0f} img/s)")
        summary = self._summary(evaluation, throughputs, time.perf_counter() - wall_start)
        if self.context.is_main:
            atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        self.log.close()
        return summary

    def _summary(self, evaluation: dict[str, float], throughputs: list[float], wall_time: float) -> dict[str, Any]:
        previous = {}
        summary_path = self.run_dir / "summary.json"
        if self.resume and summary_path.is_file():
            previous = json.loads(summary_path.read_text())
        return {
            "name": self.recipe.name,
            "task": self.recipe.task,
            "params": count_parameters(self.task.model),
            "epochs": self.recipe.train.epochs,
            **self.task.summary(evaluation, previous),
            "key_metric": self.task.key_metric,
            f"best_{self.task.key_metric}": self.best_metric,
            "best_epoch": self.best_epoch,
            "images_per_s": sum(throughputs) / len(throughputs) if throughputs else previous.get("images_per_s"),
            "wall_time_s": wall_time + (previous.get("wall_time_s", 0.0) if self.resume else 0.0),
            "world_size": self.context.world_size,
            "device": str(self.device),
        }
