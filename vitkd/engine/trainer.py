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

from vitkd.config import Recipe, checkpoint_interval, dump_recipe, recipe_to_dict
from vitkd.engine.amp import autocast, build_grad_scaler, resolve_amp_dtype
from vitkd.engine.checkpoint import (best_checkpoint_path, check_output_space, estimate_checkpoint_bytes,
                                     last_checkpoint_path, load_checkpoint, save_checkpoint)
from vitkd.engine.compilation import compile_for_training
from vitkd.engine.distributed import (DistributedContext, all_processes_agree, barrier, gather_objects, reduce_flags,
                                      reduce_sums, wrap_for_training)
from vitkd.engine.loss_meter import LossMeter, NonFiniteStep
from vitkd.engine.metrics_log import MetricsLog
from vitkd.engine.resume_changes import check_resume_changes
from vitkd.engine.rng import capture_rng_state, restore_rng_state
from vitkd.engine.stop_signals import StopSignals
from vitkd.engine.task import TOTAL_LOSS, Task, updates_per_epoch
from vitkd.errors import ConfigError, TrainingError, TrainingStopped
from vitkd.files import atomic_write, remove_stale_temporaries
from vitkd.models.factory import count_parameters


def gather_rng_states(context: DistributedContext) -> list[dict[str, Any]]:
    """Every process's RNG states, rank order (each process's dropout/drop-path stream is its own)."""
    return gather_objects(capture_rng_state(), context)


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
        self.trained_module = compile_for_training(wrap_for_training(task.trainable, context), recipe.train)
        self._build_optimization()
        self.start_epoch = 0
        self.partial_epoch: Optional[dict[str, Any]] = None  # a mid-epoch checkpoint's epoch, step and sums
        self.best_metric: Optional[float] = None
        self.best_epoch = -1
        self.checkpoint_steps, self.checkpoint_seconds = checkpoint_interval(recipe.train.checkpoint_every)
        self.stop_signals: Optional[StopSignals] = None
        self.log = MetricsLog(self.run_dir, enabled=context.is_main, tensorboard=recipe.train.tensorboard)
        if resume:
            self._load_resume_state()

    def _build_optimization(self) -> None:
        optim = self.recipe.optim
        self.optimizer = create_optimizer_v2(self.task.trainable, opt=optim.opt, lr=optim.lr,
                                             weight_decay=optim.weight_decay, momentum=optim.momentum,
                                             layer_decay=self.task.layer_decay)
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

    def _training_state(self, epoch: int, rng_states: list[dict[str, Any]],
                        partial_epoch: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Everything a resume needs. `epoch`: the last finished epoch (-1: none); `rng_states`: every process's
        RNG states (`gather_rng_states`); `partial_epoch`: for a mid-epoch checkpoint, the epoch in progress, the
        steps done in it and its loss sums so far."""
        return {
            "epoch": epoch,
            "partial_epoch": partial_epoch,
            "model": self.task.model.state_dict(),
            **self.task.model_identity(),
            "task": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_states[0],
            "rng_per_rank": rng_states,
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
        for note in check_resume_changes(state.get("recipe", {}), recipe_to_dict(self.recipe), str(self.last_path)):
            if self.context.is_main:
                tqdm.write(f"[{self.recipe.name}] --resume with a changed {note}")
        self.task.model.load_state_dict(state["model"])
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.context.world_size:
            restore_rng_state(per_rank[self.context.rank])
        else:  # another process count: dropout streams cannot match anyway; every process takes rank 0's
            restore_rng_state(per_rank[0])
            if self.context.is_main:
                tqdm.write(f"[{self.recipe.name}] --resume with {self.context.world_size} process(es) from a run of "
                           f"{len(per_rank)}: the RNG streams (dropout, drop path) continue from rank 0's")
        self.start_epoch = state["epoch"] + 1
        self.partial_epoch = state.get("partial_epoch")
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        if self.context.is_main:
            self.log.truncate_after(state["epoch"])
            remove_stale_temporaries(self.run_dir)  # what a kill during an atomic write left behind

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.task.model

    def _improves(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.task.higher_is_better else value < self.best_metric

    # ----------------------------------------------------------------------------------------------------------------
    # the loop

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (or its remainder, when resuming from a mid-epoch checkpoint of this epoch)."""
        partial = self.partial_epoch if self.partial_epoch and self.partial_epoch["epoch"] == epoch else None
        self.partial_epoch = None
        first_step = partial["step"] if partial else 0
        self.task.set_epoch(epoch, first_step)
        self.trained_module.train()
        meter = LossMeter(self.device)
        skipped = nonfinite_skipped = 0
        elapsed_before = 0.0
        if partial:
            if self.context.is_main:  # the sums of every process so far (added up when the checkpoint was written)
                meter.load_state_dict(partial["meter"])
                skipped = partial["skipped"]
            nonfinite_skipped = partial["nonfinite_skipped"]  # agreed by every process, not a sum
            elapsed_before = partial["elapsed_s"]
        start = time.perf_counter() - elapsed_before
        last_checkpoint_time = time.monotonic()
        progress = tqdm(total=self.steps_per_epoch, initial=first_step,
                        desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}",
                        disable=not (self.recipe.train.progress and self.context.is_main), leave=False)
        clip = self.recipe.optim.clip_grad
        log_every = self.recipe.train.log_every
        skip_nonfinite = self.recipe.train.nonfinite == "skip"
        step = first_step - 1
        for step, batch in enumerate(self.task.train_loader, start=first_step):
            if step >= self.steps_per_epoch:
                break
            with autocast(self.device, self.amp_dtype):
                result = self.task.training_step(self.trained_module, batch, epoch)
            skipped += result.skipped
            if result.losses is None:
                pass
            elif skip_nonfinite and not all_processes_agree(torch.isfinite(result.losses[TOTAL_LOSS]),
                                                            self.context):
                nonfinite_skipped += 1
                if nonfinite_skipped > self.recipe.train.nonfinite_max_skips:
                    meter.update(result.losses, result.num_samples, step)  # names this step and its terms
                    self._read_meter(meter, epoch, None, start)
            else:
                self._update(result.losses[TOTAL_LOSS], clip, epoch * self.steps_per_epoch + step + 1)
                meter.update(result.losses, result.num_samples, step)
                progress.update(1)
                if (step + 1) % log_every == 0:
                    self._read_meter(meter, epoch, progress, start)
            stop, due = self._checkpoint_decision(step + 1, last_checkpoint_time)
            if (stop or due) and step + 1 < self.steps_per_epoch:
                totals, images_seen = self._read_meter(meter, epoch, None, start)  # never checkpoint a NaN step
                self._save_mid_epoch(epoch, step + 1, meter, totals, images_seen, skipped, nonfinite_skipped,
                                     time.perf_counter() - start)
                last_checkpoint_time = time.monotonic()
                if stop:
                    progress.close()
                    self._stop_on_signal(f"after step {step + 1} of epoch {epoch + 1}")
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

    def _update(self, loss: torch.Tensor, clip: Optional[float], num_updates: int) -> None:
        """Backward, (unscale and) clip, optimizer and scheduler step, EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._optimizer_parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step_update(num_updates)
        if self.ema is not None:
            self.ema.update(self.task.model, step=num_updates)

    def _checkpoint_decision(self, steps_done: int, last_checkpoint_time: float) -> tuple[bool, bool]:
        """(stop now?, mid-epoch checkpoint due?), the same on every process: a stop signal or SIGUSR1 received by
        any process, or `train.checkpoint_every` steps / minutes since the last checkpoint (the time as rank 0
        measures it)."""
        signals = self.stop_signals
        stop = signals is not None and signals.stop_signal is not None
        requested = signals is not None and signals.take_checkpoint_request()
        due = bool(self.checkpoint_steps and steps_done % self.checkpoint_steps == 0)
        if self.checkpoint_seconds and self.context.is_main:
            due = due or time.monotonic() - last_checkpoint_time >= self.checkpoint_seconds
        if self.context.enabled:
            flags = torch.tensor([stop, requested or due], dtype=torch.int32)
            flags = reduce_flags(flags, self.context)
            stop, due = bool(flags[0]), bool(flags[1])
        return stop, due or requested

    def _save_mid_epoch(self, epoch: int, steps_done: int, meter: LossMeter, totals: dict[str, float],
                        images_seen: int, skipped: int, nonfinite_skipped: int, elapsed: float) -> None:
        """Write `last.pt` at step `steps_done` of `epoch`: the loss sums of every process are added into the
        checkpoint (a resumed rank 0 carries them; the other ranks start from zero, so the epoch's sums agree)."""
        sums = reduce_sums({**totals, "__images": float(images_seen), "__skipped": float(skipped)}, self.context)
        images, skipped_all = int(sums.pop("__images")), int(sums.pop("__skipped"))
        rng_states = gather_rng_states(self.context)
        if not self.context.is_main:
            barrier(self.context)
            return
        partial = {"epoch": epoch, "step": steps_done, "meter": meter.state_dict(sums, images),
                   "skipped": skipped_all, "nonfinite_skipped": nonfinite_skipped, "elapsed_s": elapsed}
        save_checkpoint(self.last_path, self._training_state(epoch - 1, rng_states, partial))
        barrier(self.context)

    def _stop_on_signal(self, where: str) -> None:
        received = self.stop_signals.stop_signal if self.stop_signals else None
        name = received.name if received is not None else "a stop signal of another process"
        raise TrainingStopped(f"stopped by {name} {where}; {self.last_path} holds that point: continue with the "
                              f"same command and --resume", int(received or 15), str(self.last_path))

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
        """Train from `start_epoch` to `train.epochs`; returns the summary written to summary.json.

        An epoch's files are written in an order that a kill at any point leaves consistent: the metrics line,
        then `best.pt` and the export when the key metric improved, then `last.pt`, the commit point. A kill before
        `last.pt` is replaced leaves the previous epoch's checkpoint; the resume drops the metrics lines after it
        and re-runs the epoch, which gives the same results and so rewrites `best.pt` and the export alike."""
        recipe = self.recipe
        if self.context.is_main:
            moments = 2 if recipe.optim.opt.lower().endswith(("adam", "adamw", "lamb", "nadam", "radam")) else 1
            check_output_space(self.run_dir, estimate_checkpoint_bytes(self.task.model, self.task.trainable, moments,
                                                                       self.ema is not None))
            atomic_write(self.run_dir / "config.yaml", dump_recipe(recipe))
        wall_start = time.perf_counter()
        throughputs: list[float] = []
        evaluation: dict[str, float] = {}
        with StopSignals() as self.stop_signals:
            try:
                for epoch in range(self.start_epoch, recipe.train.epochs):
                    evaluation = self._run_epoch(epoch, throughputs)
            finally:
                self.stop_signals = None
        if not evaluation and self.resume:  # nothing was left to train: a kill came before summary.json
            evaluation = self.task.evaluate(self._eval_model(), self.amp_dtype)
        summary = self._summary(evaluation, throughputs, time.perf_counter() - wall_start)
        if self.context.is_main:
            atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        self.log.close()
        return summary

    def _run_epoch(self, epoch: int, throughputs: list[float]) -> dict[str, float]:
        """Train and evaluate one epoch and write its files; returns the evaluation."""
        key = self.task.key_metric
        metrics = self.train_one_epoch(epoch)
        throughputs.append(metrics["train/images_per_s"])
        evaluation = self.task.evaluate(self._eval_model(), self.amp_dtype)
        metrics.update({f"val/{name}": value for name, value in evaluation.items()})
        improved = self._improves(evaluation[key])
        if improved:
            self.best_metric, self.best_epoch = evaluation[key], epoch
        metrics["epoch"] = epoch
        metrics[f"best/{key}"] = self.best_metric
        rng_states = gather_rng_states(self.context)
        if self.context.is_main:
            self.log.write(metrics)
            state = self._training_state(epoch, rng_states)
            if improved:
                save_checkpoint(self.best_path, state)
                self.task.export(self._eval_model(), self.run_dir / "export")
            save_checkpoint(self.last_path, state)
        barrier(self.context)
        if self.context.is_main and self.recipe.train.progress:
            tqdm.write(f"[{self.recipe.name}] epoch {epoch + 1}/{self.recipe.train.epochs} loss "
                       f"{metrics['train/loss']:.4f} {self.task.describe_metrics(evaluation)} "
                       f"({metrics['train/images_per_s']:.0f} img/s)")
        if epoch + 1 < self.recipe.train.epochs:
            stop, _ = self._checkpoint_decision(0, time.monotonic())
            if stop:  # the signal came during the last step, the evaluation or the writes: the epoch is saved
                self._stop_on_signal(f"after epoch {epoch + 1}")
        return evaluation

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
