"""The contract between the trainer and loss terms.

A loss term is an `nn.Module` that declares what it needs (`LossNeeds`) and is called once per step with the
student outputs, the teacher outputs and the targets. The trainer asks each model once for the union of the needs
of all terms, so adding a method never adds a branch to the trainer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets


@dataclass(frozen=True)
class TapRequest:
    """What one model's single forward must expose besides its logits: raw block outputs (`layers`), block outputs
    after the final norm (`normed_layers`) and outputs of named modules (`hooks`, forward hooks)."""

    layers: tuple[int, ...] = ()
    normed_layers: tuple[int, ...] = ()
    hooks: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.layers or self.normed_layers or self.hooks)


@dataclass(frozen=True)
class LossNeeds:
    """What a loss term reads from the one student forward and the one teacher forward of a step.

    Layer indices are resolved (non-negative) block indices. `*_layers` are raw block outputs, `*_normed_layers`
    block outputs after the model's final norm (ViTKD's deep layer), `*_hooks` outputs of modules named in
    `model.named_modules()` (forward hooks, for models without ViT blocks such as a CNN teacher).
    """

    teacher_logits: bool = False
    dist_logits: bool = False
    student_layers: tuple[int, ...] = ()
    teacher_layers: tuple[int, ...] = ()
    student_normed_layers: tuple[int, ...] = ()
    teacher_normed_layers: tuple[int, ...] = ()
    student_hooks: tuple[str, ...] = ()
    teacher_hooks: tuple[str, ...] = ()

    @property
    def student_taps(self) -> TapRequest:
        return TapRequest(self.student_layers, self.student_normed_layers, self.student_hooks)

    @property
    def teacher_taps(self) -> TapRequest:
        return TapRequest(self.teacher_layers, self.teacher_normed_layers, self.teacher_hooks)

    @property
    def live_teacher_tokens(self) -> bool:
        """Teacher tokens exist only for a live teacher: a sparse-logit cache cannot serve them."""
        return bool(self.teacher_layers or self.teacher_normed_layers or self.teacher_hooks)

    @property
    def uses_teacher(self) -> bool:
        """True when a term reads anything from the teacher (logits or tokens)."""
        return self.teacher_logits or self.live_teacher_tokens

    def union(self, other: "LossNeeds") -> "LossNeeds":
        def merged(name: str) -> tuple:
            return tuple(sorted(set(getattr(self, name)) | set(getattr(other, name))))

        return LossNeeds(
            teacher_logits=self.teacher_logits or other.teacher_logits,
            dist_logits=self.dist_logits or other.dist_logits,
            student_layers=merged("student_layers"),
            teacher_layers=merged("teacher_layers"),
            student_normed_layers=merged("student_normed_layers"),
            teacher_normed_layers=merged("teacher_normed_layers"),
            student_hooks=merged("student_hooks"),
            teacher_hooks=merged("teacher_hooks"),
        )


@dataclass
class TermContext:
    """What a loss term may look at while it is built: the models and the data settings.

    student_info / teacher_info: `vitkd.models.describe_model` dicts (embed_dim, depth, grid_size, num_prefix_tokens).
    teacher is None when targets come from a sparse-logit cache.
    img_size: the training input size (B, 3, img_size, img_size) both models see; terms may probe shapes with it.
    seed: this process's seed for a term's own generators: the recipe's `train.seed` plus the process rank, so
    masks and random samples differ across processes but replay exactly on resume.
    steps_per_epoch: optimizer updates per epoch on this process (0: unknown); terms with schedules counted in
    epochs (DKD's warm-up) convert them to steps with it.
    dataset_record: returns the training data's fingerprint (`vitkd.cache.run_identity.dataset_record`: name/split,
    sample count, hash of the ordered sample keys); terms reading per-sample targets by sample id check their store
    against it. A function, called only by the terms that need it: hashing every sample key takes seconds at
    ImageNet scale, which other runs need not pay at start-up. None when the caller has no data.
    """

    student: nn.Module
    teacher: Optional[nn.Module]
    num_classes: int
    student_info: dict = field(default_factory=dict)
    teacher_info: dict = field(default_factory=dict)
    uses_cache: bool = False
    mixup_active: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    img_size: int = 224
    steps_per_epoch: int = 0
    dataset_record: Optional[Callable[[], dict]] = None


class LossTerm(nn.Module):
    """Base class of the recipe's loss terms.

    Subclasses set `needs` in `__init__(self, context, **params)` and implement `forward`, returning a scalar.
    A term may keep trainable parameters (projections...): they train with the student and are not exported.
    Terms with several parts put the unweighted parts in `self.last_terms` for logging.
    """

    needs: LossNeeds = LossNeeds()
    #: True for the ground-truth term, whose default weight is what the convex distillation terms leave over.
    is_ground_truth: bool = False
    #: True for distillation terms that DeiT mixes convexly with the ground-truth loss (weights alpha, 1 - alpha).
    convex_with_ground_truth: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.last_terms: dict[str, torch.Tensor] = {}

    @classmethod
    def default_weight(cls, params: dict[str, Any]) -> float:
        """The paper's weight for this term given its parameters."""
        return 1.0

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        """Validate recipe parameters before any model is built; raise ValueError naming `path` on a bad one."""
        signature = inspect.signature(cls.__init__)
        valid = [name for name in signature.parameters if name not in ("self", "context")]
        for key in params:
            if key not in valid:
                raise ValueError(f"{path}.{key}: unknown parameter for loss '{cls.registry_name}'; "
                                 f"valid parameters: {', '.join(valid) or '(none)'}")

    registry_name: str = ""

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        raise NotImplementedError
