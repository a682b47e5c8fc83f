"""The one trainer: every distillation method runs through this loop; methods differ only in their loss terms.

One step: batch -> (Mixup/CutMix) -> student forward once -> teacher outputs (live or cached) -> loss terms ->
weighted sum -> backward -> clip -> optimizer/scheduler/EMA. Per epoch: evaluation, metrics.jsonl, atomic `last`
checkpoint, `best` checkpoint and student export on improvement.
"""

from __future__ import annotations

import json
import math
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
from vitkd.errors import ConfigError
from vitkd.data.loader import (build_train_dataset, build_train_loader, build_val_dataset, build_val_loader,
                               num_classes_of)
from vitkd.data.mixup import build_mixup
from vitkd.data.replay import BatchReplay
from vitkd.engine.amp import autocast, build_grad_scaler, resolve_amp_dtype
from vitkd.tasks.classification.cached_teacher import open_cached_teacher
from vitkd.files import atomic_write
from vitkd.engine.checkpoint import export_student, load_checkpoint, save_checkpoint
from vitkd.engine.distributed import (DistributedContext, average_gradients, barrier, broadcast_parameters,
                                      init_distributed, reduce_sums, set_cpu_threads, wrap_for_training)
from vitkd.tasks.classification.evaluate import evaluate
from vitkd.engine.metrics_log import MetricsLog
from vitkd.tasks.classification.objective import DistillationObjective
from vitkd.losses.inputs import Targets
from vitkd.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from vitkd.tasks.classification.teacher_source import NoTeacher, OnlineTeacher, TeacherSource
from vitkd.losses.base import TermContext
from vitkd.losses.registry import build_loss_terms
from vitkd.models.factory import build_model, count_parameters, describe_model
from vitkd.tasks.classification.runners import TappedStudent
from vitkd.models.teacher import FrozenTeacher


class Trainer:
    """Builds everything a recipe names, then `fit()` runs (or resumes) training.

    Run directory `<train.output_dir>/<name>/`: config.yaml, metrics.jsonl, summary.json,
    checkpoints/last.pt, checkpoints/best.pt, export/student.safetensors + student.json.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, context: Optional[DistributedContext] = None) -> None:
        self.recipe = recipe
        self.context = context or init_distributed(recipe.train.device)
        set_cpu_threads(recipe.train.cpu_threads)
        self.device = self.context.device
        self.run_dir = recipe.run_dir
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self.resume = resume
        if not resume and self.last_path.exists():
            raise ConfigError(f"run directory {self.run_dir} already holds a checkpoint; pass --resume to continue it, "
                              f"or choose another name (name=...) so finished work is not overwritten")
        if resume and not self.last_path.exists():
            raise ConfigError(f"--resume: no checkpoint at {self.last_path} to resume from")
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self._build_data()
        self._build_models()
        self._build_objective()
        self._build_optimization()
        self.start_epoch = 0
        self.best_top1 = -1.0
        self.best_epoch = -1
        self.log = MetricsLog(self.run_dir, enabled=self.context.is_main, tensorboard=recipe.train.tensorboard)
        if resume:
            self._load_resume_state()

    # ----------------------------------------------------------------------------------------------------------------
    # set-up

    def _build_data(self) -> None:
        cfg = self.recipe.data
        self.train_dataset = build_train_dataset(cfg, self.recipe.train.seed)
        self.val_dataset = build_val_dataset(cfg)
        self.num_classes = num_classes_of(self.train_dataset)
        self.train_loader = build_train_loader(self.train_dataset, cfg, self.recipe.train.seed, self.context.rank,
                                               self.context.world_size)
        self.val_loader = build_val_loader(self.val_dataset, cfg.eval_batch_size or cfg.batch_size, cfg.num_workers,
                                           self.context.rank, self.context.world_size)
        self.mixup = build_mixup(cfg, self.num_classes)
        # lets `train_dataset.teacher_input(epoch, id)` re-create any (mixed) image of this run's batches
        self.train_dataset.use_batch_replay(BatchReplay(self.train_dataset, cfg.batch_size, self.context.world_size,
                                                        self.recipe.train.seed, self.mixup))

    def _model_kwargs(self, kwargs: dict, who: str) -> dict:
        kwargs = dict(kwargs)
        if "num_classes" in kwargs and kwargs["num_classes"] != self.num_classes:
            raise ConfigError(f"{who}.kwargs.num_classes={kwargs['num_classes']} but the dataset has "
                              f"{self.num_classes} classes")
        kwargs["num_classes"] = self.num_classes
        return kwargs

    def _build_models(self) -> None:
        recipe = self.recipe
        self.student_kwargs = self._model_kwargs(recipe.student.kwargs, "student")
        self.student = build_model(recipe.student.name, self.student_kwargs, recipe.student.checkpoint)
        self.student_mean = tuple(recipe.student.mean or recipe.data.mean)
        self.student_std = tuple(recipe.student.std or recipe.data.std)
        self.teacher: Optional[FrozenTeacher] = None
        teacher_cfg = recipe.teacher
        if teacher_cfg is not None and teacher_cfg.name and not teacher_cfg.cache:
            teacher_kwargs = self._model_kwargs(teacher_cfg.kwargs, "teacher")
            teacher_model = build_model(teacher_cfg.name, teacher_kwargs, teacher_cfg.checkpoint)
            self.teacher = FrozenTeacher(teacher_model, self.student_mean, self.student_std,
                                         teacher_cfg.mean, teacher_cfg.std).to(self.device)

    def _build_objective(self) -> None:
        context = TermContext(
            student=self.student, teacher=self.teacher.model if self.teacher else None, num_classes=self.num_classes,
            student_info=describe_model(self.student),
            teacher_info=describe_model(self.teacher.model) if self.teacher else {},
            uses_cache=bool(self.recipe.teacher and self.recipe.teacher.cache), mixup_active=self.mixup is not None,
            label_smoothing=self.recipe.data.label_smoothing, seed=self.recipe.train.seed + self.context.rank,
            img_size=self.recipe.data.img_size)
        self.objective = DistillationObjective(build_loss_terms(self.recipe, context)).to(self.device)
        # the objective's trainable parts (projections...) live outside DDP: start every process from rank 0's copy
        broadcast_parameters(self.objective, self.context)
        needs = self.objective.needs
        if needs.uses_teacher and self.teacher is None and not context.uses_cache:
            users = [name for name, term in zip(self.objective.names, self.objective.terms) if term.needs.uses_teacher]
            raise ConfigError(f"losses {users} need a teacher: set teacher.name (and teacher.checkpoint)")
        if needs.live_teacher_tokens and context.uses_cache:
            users = [name for name, term in zip(self.objective.names, self.objective.terms)
                     if term.needs.live_teacher_tokens]
            raise ConfigError(f"losses {users} need the live teacher's tokens, which a logit cache cannot provide; "
                              f"remove teacher.cache and set teacher.name, or drop those losses")
        if needs.dist_logits:
            self.student.set_distilled_training(True)
        self.teacher_source: TeacherSource = self._build_teacher_source(needs)
        self.student_runner = TappedStudent(self.student, needs.student_layers, needs.student_normed_layers,
                                            needs.student_hooks).to(self.device)
        self.trained_module = wrap_for_training(self.student_runner, self.context)

    def _build_teacher_source(self, needs) -> TeacherSource:
        if self.teacher is not None and needs.uses_teacher:
            return OnlineTeacher(self.teacher, needs.teacher_layers, needs.teacher_normed_layers, needs.teacher_hooks)
        if self.recipe.teacher is not None and self.recipe.teacher.cache and needs.teacher_logits:
            return open_cached_teacher(self.recipe, self.train_dataset, self.num_classes, self.mixup,
                                       self.context.world_size, self.device)
        return NoTeacher()

    def _build_optimization(self) -> None:
        optim = self.recipe.optim
        trainable = nn.ModuleDict({"student": self.student, "objective": self.objective})
        self.optimizer = create_optimizer_v2(trainable, opt=optim.opt, lr=optim.lr, weight_decay=optim.weight_decay,
                                             momentum=optim.momentum)
        self.steps_per_epoch = len(self.train_loader)
        if self.recipe.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.recipe.train.max_steps_per_epoch)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=optim.sched, num_epochs=self.recipe.train.epochs, warmup_epochs=optim.warmup_epochs,
            warmup_lr=optim.warmup_lr, min_lr=optim.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.amp_dtype = resolve_amp_dtype(self.recipe.train.amp, self.device)
        self.scaler = build_grad_scaler(self.device, self.amp_dtype)
        self.ema = ModelEmaV3(self.student, decay=self.recipe.train.ema_decay) if self.recipe.train.ema else None

    # ----------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _training_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.student.state_dict(),
            "model_name": self.recipe.student.name,
            "model_kwargs": self.student_kwargs,
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": capture_rng_state(),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "recipe": recipe_to_dict(self.recipe),
        }

    def _load_resume_state(self) -> None:
        state = load_checkpoint(self.last_path)
        if state.get("model_name") != self.recipe.student.name:
            raise ConfigError(f"--resume: {self.last_path} was trained with student '{state.get('model_name')}', "
                              f"the recipe names '{self.recipe.student.name}'")
        self.student.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        self.best_top1 = state["best_top1"]
        self.best_epoch = state["best_epoch"]
        self.log.truncate_after(state["epoch"])

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.student

    # ----------------------------------------------------------------------------------------------------------------
    # the loop

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        data_epoch = self.teacher_source.data_epoch(epoch)  # a cycled cache replays its cached epoch's images
        self.train_dataset.set_epoch(data_epoch)
        self.train_loader.sampler.set_epoch(data_epoch)
        self.trained_module.train()
        self.objective.train()
        sums: dict[str, float] = {}
        images_seen = 0
        skipped = 0
        start = time.perf_counter()
        progress = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}",
                        disable=not (self.recipe.train.progress and self.context.is_main), leave=False)
        clip = self.recipe.optim.clip_grad
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            skipped += batch.skipped
            if batch.images.numel() == 0:
                continue
            images = batch.images.to(self.device, non_blocking=True)
            labels = batch.labels.to(self.device, non_blocking=True)
            targets = Targets(labels=labels)
            if self.mixup is not None:
                images, targets.soft = self.mixup(images, labels, batch.seeds)
            with autocast(self.device, self.amp_dtype):
                student_outputs = self.trained_module(images)
                teacher_outputs = self.teacher_source(images, batch, epoch)
                loss, logged = self.objective(student_outputs, teacher_outputs, targets)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; terms: "
                                    f"{ {k: float(v) for k, v in logged.items()} }. The last finished epoch is saved "
                                    f"in {self.last_path}; lower optim.lr or set optim.clip_grad, then --resume")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                average_gradients(self.objective, self.context)  # outside DDP: average its gradients here
                if clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.optimizer_parameters(), clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                average_gradients(self.objective, self.context)  # outside DDP: average its gradients here
                if clip:
                    nn.utils.clip_grad_norm_(self.optimizer_parameters(), clip)
                self.optimizer.step()
            num_updates = epoch * self.steps_per_epoch + step + 1
            self.scheduler.step_update(num_updates)
            if self.ema is not None:
                self.ema.update(self.student, step=num_updates)
            batch_size = labels.shape[0]
            images_seen += batch_size
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * batch_size
            for name, value in logged.items():
                sums[name] = sums.get(name, 0.0) + value.item() * batch_size
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}",
                                 img_s=f"{images_seen / (time.perf_counter() - start):.0f}")
        progress.close()
        self.scheduler.step(epoch + 1)
        elapsed = time.perf_counter() - start
        sums.update({"images": float(images_seen), "skipped": float(skipped)})
        totals = reduce_sums(sums, self.context)
        count = max(totals.pop("images"), 1.0)
        metrics = {f"train/{k}": v / count for k, v in totals.items() if k != "skipped"}
        metrics["train/skipped_images"] = int(totals["skipped"])
        metrics["train/images_per_s"] = count / elapsed if elapsed > 0 else 0.0
        metrics["train/epoch_time_s"] = elapsed
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def optimizer_parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def fit(self) -> dict[str, Any]:
        """Train from `start_epoch` to `train.epochs`; returns the summary written to summary.json."""
        recipe = self.recipe
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.yaml", dump_recipe(recipe))
        wall_start = time.perf_counter()
        throughputs = []
        final_eval: dict[str, float] = {}
        for epoch in range(self.start_epoch, recipe.train.epochs):
            metrics = self.train_one_epoch(epoch)
            throughputs.append(metrics["train/images_per_s"])
            final_eval = evaluate(self._eval_model(), self.val_loader, self.device, self.amp_dtype, self.context)
            metrics.update({f"val/{k}": v for k, v in final_eval.items() if k != "images"})
            improved = final_eval["top1"] > self.best_top1
            if improved:
                self.best_top1, self.best_epoch = final_eval["top1"], epoch
            metrics["epoch"] = epoch
            metrics["best/top1"] = self.best_top1
            if self.context.is_main:
                state = self._training_state(epoch)
                save_checkpoint(self.last_path, state)
                if improved:
                    save_checkpoint(self.best_path, state)
                    self._export()
                self.log.write(metrics)
            barrier(self.context)
            if self.context.is_main and recipe.train.progress:
                tqdm.write(f"[{recipe.name}] epoch {epoch + 1}/{recipe.train.epochs} loss "
                           f"{metrics['train/loss']:.4f} val top-1 {final_eval['top1']:.2f}% top-5 "
                           f"{final_eval['top5']:.2f}% ({metrics['train/images_per_s']:.0f} img/s)")
        summary = self._summary(final_eval, throughputs, time.perf_counter() - wall_start)
        if self.context.is_main:
            atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        self.log.close()
        return summary

    def _export(self) -> None:
        export_student(self._eval_model(), self.run_dir / "export", self.recipe.student.name, self.student_kwargs,
                       extra_info={"num_classes": self.num_classes, "mean": list(self.student_mean),
                                   "std": list(self.student_std), "img_size": self.recipe.data.img_size,
                                   "crop_pct": self.recipe.data.crop_pct})

    def _summary(self, final_eval: dict[str, float], throughputs: list[float], wall_time: float) -> dict[str, Any]:
        previous = {}
        summary_path = self.run_dir / "summary.json"
        if self.resume and summary_path.is_file():
            previous = json.loads(summary_path.read_text())
        return {
            "name": self.recipe.name,
            "student": self.recipe.student.name,
            "params": count_parameters(self.student),
            "losses": {name: weight for name, weight in zip(self.objective.names, self.objective.weights)},
            "epochs": self.recipe.train.epochs,
            "top1": final_eval.get("top1", previous.get("top1")),
            "top5": final_eval.get("top5", previous.get("top5")),
            "val_loss": final_eval.get("loss", previous.get("val_loss")),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "images_per_s": sum(throughputs) / len(throughputs) if throughputs else previous.get("images_per_s"),
            "wall_time_s": wall_time + (previous.get("wall_time_s", 0.0) if self.resume else 0.0),
            "world_size": self.context.world_size,
            "device": str(self.device),
        }


def train(recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train a recipe and return its summary."""
    return Trainer(recipe, resume=resume).fit()
