"""Image classification with distillation: the first task of the engine.

One step: batch -> (Mixup/CutMix) -> teacher outputs (a live frozen teacher, a sparse-logit cache, or none) ->
the trainable module (student forward once, every loss term) -> named losses. Evaluation: top-1 (the key metric),
top-5 and cross-entropy. Export: the student as safetensors plus `student.json` (name, kwargs, classes, input
normalisation and size, crop).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from tqdm import tqdm

from vitkd.cache.run_identity import dataset_record
from vitkd.config import Recipe
from vitkd.data.loader import (Batch, build_train_dataset, build_train_loader, build_val_dataset, build_val_loader,
                               classes_of, num_classes_of)
from vitkd.data.mixup import build_mixup
from vitkd.data.replay import BatchReplay
from vitkd.engine.checkpoint import export_student
from vitkd.engine.distributed import DistributedContext
from vitkd.engine.task import TOTAL_LOSS, StepResult, Task, updates_per_epoch
from vitkd.errors import ConfigError
from vitkd.losses.base import TermContext
from vitkd.losses.inputs import Targets
from vitkd.losses.registry import build_loss_terms, resolve_loss_terms
from vitkd.models.factory import build_model, check_input_size, check_model_name, describe_model, kwargs_with_classes
from vitkd.models.construction import build_student, core_student, plain_student
from vitkd.models.quantize import PACKED_FILE, save_packed
from vitkd.models.teacher import FrozenTeacher, build_frozen_teacher, student_normalization
from vitkd.tasks.classification.cached_teacher import open_cached_teacher
from vitkd.tasks.classification.evaluate import evaluate
from vitkd.tasks.classification.module import DistillationModule
from vitkd.tasks.classification.objective import DistillationObjective
from vitkd.tasks.classification.runners import TappedStudent
from vitkd.tasks.classification.teacher_source import NoTeacher, OnlineTeacher, TeacherSource


class ClassificationTask(Task):
    """Builds the data, student, teacher source and objective a classification recipe names.

    Attributes besides the `Task` contract: student (the timm model), teacher (`FrozenTeacher` or None when the
    targets come from a cache or no term needs them), objective (`DistillationObjective`), teacher_source,
    num_classes, train_dataset / val_dataset, mixup.
    """

    key_metric = "top1"
    higher_is_better = True

    @staticmethod
    def resolve_recipe(recipe: Recipe) -> Recipe:
        """Check what the recipe's names mean (models, loss terms and their parameters); return it with the loss
        weights resolved (paper defaults). Raises `ConfigError` naming the key."""
        check_model_name(recipe.student.name, "student.name")
        if recipe.teacher is not None and recipe.teacher.name:
            check_model_name(recipe.teacher.name, "teacher.name")
        if not recipe.losses:
            raise ConfigError("losses: at least one loss term is required (e.g. - name: ce)")
        return dataclasses.replace(recipe, losses=resolve_loss_terms(recipe.losses))

    def __init__(self, recipe: Recipe, context: DistributedContext) -> None:
        self.recipe = recipe
        self.context = context
        self.device = context.device
        self._build_data()
        self._build_models()
        self._build_objective()

    # ----------------------------------------------------------------------------------------------------------------
    # set-up

    def _build_data(self) -> None:
        config, seed, context = self.recipe.data, self.recipe.train.seed, self.context
        self.train_dataset = build_train_dataset(config, seed)
        self.classes = classes_of(self.train_dataset)  # one mapping for every split, stored in the export
        self.val_dataset = build_val_dataset(config, self.classes)
        self.num_classes = num_classes_of(self.train_dataset)
        missing = getattr(self.val_dataset.base, "missing_classes", [])
        if missing and context.is_main:
            tqdm.write(f"[{self.recipe.name}] note: the {config.val_split} split has no images of {len(missing)} "
                       f"class(es): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; its top-1 is "
                       f"over the other classes")
        self.reported_skips: set[str] = set()
        self.train_loader = build_train_loader(self.train_dataset, config, seed, context.rank, context.world_size)
        self.val_loader = build_val_loader(self.val_dataset, config.eval_batch_size or config.batch_size,
                                           config.num_workers, context.rank, context.world_size)
        self.mixup = build_mixup(config, self.num_classes)
        # lets `train_dataset.teacher_input(epoch, id)` re-create any (mixed) image of this run's batches
        self.train_dataset.use_batch_replay(BatchReplay(self.train_dataset, config.batch_size, context.world_size,
                                                        seed, self.mixup))

    def _build_models(self) -> None:
        student = self.recipe.student
        self.student_mean, self.student_std = student_normalization(self.recipe)
        self.teacher: FrozenTeacher | None = None
        teacher = self.recipe.teacher
        live_teacher = teacher is not None and bool(teacher.name) and not teacher.cache
        # Models draw their random initialisation from the global RNG in build order. The student comes first, as
        # it always has, so a recipe's initial weights (and results) do not depend on whether it has a teacher;
        # only `student.init`, which copies the teacher's layers, needs the teacher built before it.
        if live_teacher and student.init is not None:
            self._build_live_teacher()
        self.student_kwargs = kwargs_with_classes(student.kwargs, self.num_classes, "student.kwargs")
        # the student module that trains: a timm model, possibly made from teacher layers, wrapped for module
        # replacement or quantised (`student.init`, `student.quantize`); `core` is the timm model inside it
        self.student = build_student(student, self.student_kwargs, self._init_teacher(), self.recipe.train.seed)
        self.core = core_student(self.student)
        check_input_size(self.core, self.recipe.data.img_size, "student")
        if live_teacher and self.teacher is None:
            self._build_live_teacher()

    def _build_live_teacher(self) -> None:
        self.teacher = build_frozen_teacher(self.recipe, self.num_classes).to(self.device)
        check_input_size(self.teacher.model, self.recipe.data.img_size, "teacher")

    def _init_teacher(self) -> Optional[nn.Module]:
        """The teacher model `student.init` copies from: the live teacher, else (a cached teacher) built for it."""
        if self.recipe.student.init is None or self.recipe.teacher is None or not self.recipe.teacher.name:
            return None
        if self.teacher is not None:
            return self.teacher.model
        config = self.recipe.teacher
        return build_model(config.name, kwargs_with_classes(config.kwargs, self.num_classes, "teacher.kwargs"),
                           config.checkpoint)

    def _build_objective(self) -> None:
        uses_cache = bool(self.recipe.teacher and self.recipe.teacher.cache)
        context = TermContext(
            student=self.core, teacher=self.teacher.model if self.teacher else None, num_classes=self.num_classes,
            student_info=describe_model(self.core),
            teacher_info=describe_model(self.teacher.model) if self.teacher else {},
            uses_cache=uses_cache, mixup_active=self.mixup is not None,
            label_smoothing=self.recipe.data.label_smoothing, seed=self.recipe.train.seed + self.context.rank,
            img_size=self.recipe.data.img_size,
            steps_per_epoch=updates_per_epoch(self.train_loader, self.recipe.train.max_steps_per_epoch),
            dataset_record=functools.partial(dataset_record, self.train_dataset, self.recipe.data))
        self.objective = DistillationObjective(build_loss_terms(self.recipe.losses, context)).to(self.device)
        needs = self.objective.needs
        if needs.uses_teacher and self.teacher is None and not uses_cache:
            raise ConfigError(f"losses {self._terms_needing('uses_teacher')} need a teacher: set teacher.name (and "
                              f"teacher.checkpoint)")
        if needs.live_teacher_tokens and uses_cache:
            raise ConfigError(f"losses {self._terms_needing('live_teacher_tokens')} need the live teacher's tokens, "
                              f"which a logit cache cannot provide; remove teacher.cache and set teacher.name, or "
                              f"drop those losses")
        if needs.dist_logits:
            self.core.set_distilled_training(True)
        if needs.student_taps and self.core is not self.student:
            raise ConfigError(f"losses {self._terms_needing('student_taps')} tap the student's blocks, which "
                              f"student.init.method=theseus swaps during training; use logit terms (ce, kd, ...) "
                              f"with it")
        self.teacher_source = self._build_teacher_source(uses_cache)
        self.model = self.student
        self.trainable = DistillationModule(TappedStudent(self.student, needs.student_taps),
                                            self.objective).to(self.device)

    def _terms_needing(self, need: str) -> list[str]:
        return [name for name, term in zip(self.objective.names, self.objective.terms) if getattr(term.needs, need)]

    def _build_teacher_source(self, uses_cache: bool) -> TeacherSource:
        needs = self.objective.needs
        if self.teacher is not None and needs.uses_teacher:
            return OnlineTeacher(self.teacher, needs.teacher_taps)
        if uses_cache and needs.teacher_logits:
            return open_cached_teacher(self.recipe, self.train_dataset, self.num_classes, self.mixup,
                                       self.context.world_size, self.device)
        return NoTeacher()

    # ----------------------------------------------------------------------------------------------------------------
    # the Task contract

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        data_epoch = self.teacher_source.data_epoch(epoch)  # a cycled cache replays its cached epoch's images
        self.train_dataset.set_epoch(data_epoch)
        self.train_loader.sampler.set_epoch(data_epoch)
        self.train_loader.sampler.start_at(first_step * self.train_loader.batch_size)

    def training_step(self, trainable: nn.Module, batch: Batch, epoch: int) -> StepResult:
        self._report_skipped_images(batch)
        if batch.images.numel() == 0:
            return StepResult(losses=None, num_samples=0, skipped=batch.skipped)
        images = batch.images.to(self.device, non_blocking=True)  # (B, 3, H, W)
        labels = batch.labels.to(self.device, non_blocking=True)  # (B,)
        targets = Targets(labels=labels, sample_ids=batch.sample_ids.to(self.device, non_blocking=True))
        if self.mixup is not None:  # what `self.mixup(images, labels, seeds)` does, keeping the plan for the terms
            targets.mix_plan = self.mixup.plan(batch.seeds, (images.shape[-2], images.shape[-1]))
            images = self.mixup.mix_images(images, targets.mix_plan)
            targets.soft = self.mixup.mix_targets(labels, targets.mix_plan)
        teacher_outputs = self.teacher_source(images, batch, epoch)
        total, logged = trainable(images, teacher_outputs, targets)
        return StepResult(losses={TOTAL_LOSS: total, **logged}, num_samples=labels.shape[0], skipped=batch.skipped)

    def _report_skipped_images(self, batch: Batch) -> None:
        """One line per unreadable image the loader skipped (`data.on_corrupt: skip`), the first time it is met."""
        for skipped in batch.skipped_images:
            if skipped.path not in self.reported_skips:
                self.reported_skips.add(skipped.path)
                tqdm.write(f"[{self.recipe.name}] data.on_corrupt=skip: skipped {skipped.path} ({skipped.reason})")

    def evaluate(self, model: nn.Module, amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
        metrics = evaluate(model, self.val_loader, self.device, amp_dtype, self.context)
        metrics.pop("images")
        return metrics

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        return f"val top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """The student as a plain timm model (quantised weights as floats, Theseus' teacher modules dropped), plus
        the packed low-bit file (`student.packed.safetensors`) of a quantised student."""
        student, quantize = self.recipe.student, self.recipe.student.quantize
        construction = {"quantize": dataclasses.asdict(quantize)} if quantize else {}
        export_student(plain_student(model), out_dir, student.name, self.student_kwargs,
                       extra_info={"num_classes": self.num_classes, "classes": self.classes,
                                   "mean": list(self.student_mean),
                                   "std": list(self.student_std), "img_size": self.recipe.data.img_size,
                                   "crop_pct": self.recipe.data.crop_pct,
                                   "interpolation": self.recipe.data.interpolation, **construction})
        if quantize is not None:
            save_packed(core_student(model), out_dir / PACKED_FILE, student.name, self.student_kwargs,
                        quantize.activation_bits)

    def model_identity(self) -> dict[str, Any]:
        return {"model_name": self.recipe.student.name, "model_kwargs": self.student_kwargs}

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["objective"])

    def summary(self, metrics: dict[str, float], previous: dict[str, Any]) -> dict[str, Any]:
        return {
            "student": self.recipe.student.name,
            "losses": {name: weight for name, weight in zip(self.objective.names, self.objective.weights)},
            "top1": metrics.get("top1", previous.get("top1")),
            "top5": metrics.get("top5", previous.get("top5")),
            "val_loss": metrics.get("loss", previous.get("val_loss")),
        }
