"""The frozen teacher: eval mode for the whole run, no gradients, its own input normalisation."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vitkd.config import Recipe
from vitkd.models.factory import build_model, kwargs_with_classes


class FrozenTeacher(nn.Module):
    """Wraps a teacher so it can never train.

    `train(True)` on the wrapper (or on a parent module) leaves the teacher in eval mode, so dropout, drop-path and
    batch-norm statistics stay off for the whole run; parameters have `requires_grad=False`.

    Inputs arrive normalised for the student (mean_s, std_s); when the teacher expects another normalisation the
    batch is re-normalised: x_t = (x * std_s + mean_s - mean_t) / std_t, per channel.

    `channels_last`: weights and inputs in channels-last memory format (faster convolutions on CUDA and oneDNN CPUs).
    The teacher runs under `torch.no_grad`, not `inference_mode`: its outputs are targets that the loss terms combine
    with the student's outputs, and autograd may save them for the backward, which inference tensors forbid. Under
    the engine's autocast the teacher computes in the run's bf16/fp16 like the student.
    """

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Optional[Sequence[float]] = None, teacher_std: Optional[Sequence[float]] = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        teacher_mean = student_mean if teacher_mean is None else teacher_mean
        teacher_std = student_std if teacher_std is None else teacher_std
        self.renormalize = tuple(teacher_mean) != tuple(student_mean) or tuple(teacher_std) != tuple(student_std)
        # x_t = x * scale + shift, with scale = std_s / std_t and shift = (mean_s - mean_t) / std_t; shapes (1, 3, 1, 1)
        scale = torch.tensor(student_std) / torch.tensor(teacher_std)
        shift = (torch.tensor(student_mean) - torch.tensor(teacher_mean)) / torch.tensor(teacher_std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.model.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        super().train(mode)
        self.model.eval()  # re-asserted after every model.train()
        return self

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) student-normalised -> (B, 3, H, W) teacher-normalised (channels-last when asked for)."""
        if self.renormalize:
            images = images * self.scale.to(images.dtype) + self.shift.to(images.dtype)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, C)."""
        self.model.eval()
        return self.model(self.prepare_input(images))


def student_normalization(recipe: Recipe) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the student's input: `student.mean/std`, else the data normalisation."""
    return tuple(recipe.student.mean or recipe.data.mean), tuple(recipe.student.std or recipe.data.std)


def build_frozen_teacher(recipe: Recipe, num_classes: int) -> FrozenTeacher:
    """The recipe's live teacher (`teacher.name`, kwargs with the dataset's class count, `teacher.checkpoint`),
    frozen, re-normalising the student's input when `teacher.mean/std` differ. Used by training and by
    `vitkd cache-logits`, so both see exactly the same teacher. The caller moves it to its device."""
    config = recipe.teacher
    model = build_model(config.name, kwargs_with_classes(config.kwargs, num_classes, "teacher.kwargs"), config.checkpoint)
    mean, std = student_normalization(recipe)
    return FrozenTeacher(model, mean, std, config.mean, config.std, channels_last=config.channels_last)
