"""Loss terms on logits: ground truth (`ce`), Hinton KD (`kd`: forward, reverse or symmetric), the DeiT distillation
token (`deit`), NKD (`nkd`), DKD (`dkd`) and DIST (`dist`).

Teacher targets from a top-K logit cache (`teacher.cache`): `teacher.logits` is then the log of the rebuilt soft
label at temperature 1 (the top-K probabilities, the leftover mass spread evenly over the other classes), so
`softmax(teacher.logits)` is that label. A term that reads the teacher's distribution at temperature 1 is served
as it would be by a live teacher whose softmax were the rebuilt label. Another temperature cannot be served
exactly: re-tempering the rebuilt label keeps the ratios among the top K but gets the tail, and with it every
probability's normalisation, wrong. Such terms refuse to build (`refuse_tempered_cache`), except the two that
always accepted it (forward `kd` and `deit` soft, as TinyViT-style sparse KD does; the shipped
`recipes/demo/cached_kd.yaml` runs forward KD at temperature 4 from a cache).

    term                     from a cache
    kd forward               any temperature (T != 1: the rebuilt label re-tempered, an approximation)
    kd reverse / symmetric   temperature 1 only
    deit                     hard: the cached argmax; soft: any tau (re-tempered, as kd forward)
    nkd                      temperature 1 only (its target part is always at temperature 1)
    dkd                      temperature 1 only
    dist                     tau 1 only
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.feature_terms import check_choice, check_number
from vitkd.losses.logits import KD_DIRECTIONS, DeiTDistillationLoss, DISTLoss, DKDLoss, KDDirection, KDLoss, NKDLoss
from vitkd.losses.registry import register_loss_term


@register_loss_term("ce")
class GroundTruthTerm(LossTerm):
    """Cross-entropy of the class-token head against the ground truth.

    Under Mixup/CutMix the targets are soft (B, C) and the loss is soft-target cross-entropy; otherwise integer
    labels with label smoothing `data.label_smoothing`. Mean over the batch.
    """

    is_ground_truth = True

    def __init__(self, context: TermContext) -> None:
        super().__init__()
        self.label_smoothing = context.label_smoothing
        self.soft_target_loss = SoftTargetCrossEntropy()

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        logits = student.logits.float()  # (B, C)
        if targets.soft is not None:
            return self.soft_target_loss(logits, targets.soft)
        return F.cross_entropy(logits, targets.labels, label_smoothing=self.label_smoothing)


@register_loss_term("kd")
class LogitKDTerm(LossTerm):
    """Hinton KD (`KDLoss`) between a student head and the teacher's logits.

    head: "cls" (class-token head, the only head of plain students) or "dist" (DeiT distillation head).
    direction: "forward" `KL(teacher || student)` (default), "reverse" `KL(student || teacher)`, "symmetric"
    Jensen-Shannon `0.5 KL(p || m) + 0.5 KL(q || m)`, m = (p + q) / 2; all at `temperature`, times T^2.
    Cache: forward at any temperature (as before); reverse and symmetric at temperature 1 only. Default weight 1.
    """

    def __init__(self, context: TermContext, temperature: float = 4.0, head: Literal["cls", "dist"] = "cls",
                 direction: KDDirection = "forward") -> None:
        super().__init__()
        if head not in ("cls", "dist"):
            raise ValueError(f"head must be 'cls' or 'dist', got {head!r}")
        if head == "dist" and not _has_distillation_head(context):
            raise ValueError("head 'dist' needs a student with a distillation token "
                             "(e.g. deit_tiny_distilled_patch16_224)")
        if direction != "forward":  # forward KD keeps accepting a re-tempered cache (module docstring)
            refuse_tempered_cache(context, f"kd (direction {direction})", "temperature", temperature)
        self.head = head
        self.loss = KDLoss(temperature, direction=direction)
        self.needs = LossNeeds(teacher_logits=True, dist_logits=head == "dist")

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_number(params, path, "temperature", 0.0, low_inclusive=False)
        check_choice(params, path, "head", ("cls", "dist"))
        check_choice(params, path, "direction", KD_DIRECTIONS)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        logits = student.dist_logits if self.head == "dist" else student.logits
        return self.loss(logits, teacher.logits)


@register_loss_term("deit")
class DeiTTokenTerm(LossTerm):
    """The DeiT distillation-token term (`DeiTDistillationLoss`) on the student's distillation head.

    Paper defaults: hard mode weight (alpha) 0.5; soft mode tau 3 and weight (lambda) 0.1. With a cache, the hard
    target is the argmax of the cached probabilities.
    """

    convex_with_ground_truth = True

    def __init__(self, context: TermContext, mode: Literal["soft", "hard"] = "hard", tau: float = 3.0,
                 normalization: Literal["element", "batch"] = "element") -> None:
        super().__init__()
        if not _has_distillation_head(context):
            raise ValueError("the 'deit' loss needs a student with a distillation token: use a deit_*_distilled_* "
                             "model name (any ViT configuration can be set through student.kwargs)")
        self.loss = DeiTDistillationLoss(mode=mode, tau=tau, normalization=normalization)
        self.needs = LossNeeds(teacher_logits=True, dist_logits=True)

    @classmethod
    def default_weight(cls, params: dict[str, Any]) -> float:
        return 0.1 if params.get("mode", "hard") == "soft" else 0.5

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        if params.get("mode", "hard") not in ("soft", "hard"):
            raise ValueError(f"{path}.mode: {params['mode']!r} is not valid; valid modes: 'hard', 'soft'")

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        return self.loss(student.dist_logits, teacher.logits)


@register_loss_term("nkd")
class NKDTerm(LossTerm):
    """NKD (`NKDLoss`) on the class-token head: the target part at temperature 1 plus gamma * T^2 times the
    cross-entropy of the renormalised non-target distributions at `temperature`.

    Defaults: ViTKD's DeiT setting on ImageNet, temperature 1, gamma 1 (NKD's reference code defaults to gamma 1.5
    for CNNs); default weight 1, beside `ce` at weight 1. The target class is `target_classes(targets)` (Mixup/CutMix:
    the dominant class of the mixed label). Cache: temperature 1 only; T_t of a target class outside the cached
    top K is its even share of the leftover mass. Logs `nkd/target` and `nkd/non_target`.
    """

    def __init__(self, context: TermContext, temperature: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        refuse_tempered_cache(context, "nkd", "temperature", temperature)
        self.loss = NKDLoss(temperature=temperature, gamma=gamma)
        self.needs = LossNeeds(teacher_logits=True)

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_number(params, path, "temperature", 0.0, low_inclusive=False)
        check_number(params, path, "gamma", 0.0)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        target, non_target = self.loss.parts(student.logits, teacher.logits, target_classes(targets))
        self.last_terms = {"target": target, "non_target": non_target}
        return target + non_target


@register_loss_term("dkd")
class DKDTerm(LossTerm):
    """DKD (`DKDLoss`, `(alpha * TCKD + beta * NCKD) * T^2`) on the class-token head, warmed up linearly.

    Warm-up: the term is multiplied by `min(k / (warmup_epochs * steps_per_epoch), 1)` at its k-th training step
    (k = 1, 2, ...). The paper multiplies by `min(epoch / warmup, 1)` per epoch (epochs counted from 1); counting
    steps gives the same factor at the end of every epoch and rises smoothly in between instead of in jumps.
    `warmup_epochs: 0` turns it off. The step count is the persistent buffer `step_count`: it is in the objective's
    state_dict, hence in `last.pt`, so a resumed run continues the ramp exactly; it advances once per forward in
    training mode (one per optimizer update) and stays put in eval mode.

    Defaults: the paper's ImageNet ResNet-34 -> ResNet-18 setting, alpha 1, beta 0.5, temperature 1 (ResNet-50 ->
    MobileNet: beta 2; CIFAR-100: temperature 4, beta 8). warmup_epochs 20 is the paper's (and its CIFAR code's);
    the authors' ImageNet configs use 1. Default weight 1, beside `ce` at weight 1. The target class is
    `target_classes(targets)`. Cache: temperature 1 only. Logs `dkd/tckd`, `dkd/nckd` (alpha, beta, T^2 applied,
    before the warm-up) and `dkd/warmup` (the factor).
    """

    def __init__(self, context: TermContext, alpha: float = 1.0, beta: float = 0.5, temperature: float = 1.0,
                 warmup_epochs: float = 20.0) -> None:
        super().__init__()
        refuse_tempered_cache(context, "dkd", "temperature", temperature)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if warmup_epochs > 0 and context.steps_per_epoch <= 0:
            raise ValueError("warmup_epochs needs the number of steps per epoch, which this task did not give "
                             "(TermContext.steps_per_epoch); set warmup_epochs: 0 to train without the warm-up")
        self.loss = DKDLoss(alpha=alpha, beta=beta, temperature=temperature)
        self.warmup_steps = float(warmup_epochs * context.steps_per_epoch)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64), persistent=True)
        self.needs = LossNeeds(teacher_logits=True)

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_number(params, path, "temperature", 0.0, low_inclusive=False)
        for key in ("alpha", "beta", "warmup_epochs"):
            check_number(params, path, key, 0.0)

    def warmup_factor(self) -> torch.Tensor:
        """min(step_count / warmup steps, 1), a 0-dim float32 tensor on the buffer's device (no host sync)."""
        if self.warmup_steps == 0:
            return torch.ones((), device=self.step_count.device)
        return (self.step_count.float() / self.warmup_steps).clamp(max=1.0)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        if self.training:
            self.step_count += 1
        tckd, nckd = self.loss.parts(student.logits, teacher.logits, target_classes(targets))
        factor = self.warmup_factor()
        self.last_terms = {"tckd": tckd, "nckd": nckd, "warmup": factor}
        return factor * (tckd + nckd)


@register_loss_term("dist")
class DISTTerm(LossTerm):
    """DIST (`DISTLoss`): `tau^2 * (beta * (1 - inter-class Pearson) + gamma * (1 - intra-class Pearson))` on the
    class-token head; needs no labels, so Mixup/CutMix changes nothing.

    Defaults: the paper's ImageNet setting, beta = gamma = 1, tau 1, default weight 2 (beside `ce` at weight 1).
    The intra-class relation is over each process's batch. Cache: tau 1 only. Logs `dist/inter`, `dist/intra`
    (beta, gamma, tau^2 applied).
    """

    def __init__(self, context: TermContext, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        refuse_tempered_cache(context, "dist", "tau", tau)
        self.loss = DISTLoss(beta=beta, gamma=gamma, tau=tau)
        self.needs = LossNeeds(teacher_logits=True)

    @classmethod
    def default_weight(cls, params: dict[str, Any]) -> float:
        return 2.0

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_number(params, path, "tau", 0.0, low_inclusive=False)
        for key in ("beta", "gamma"):
            check_number(params, path, key, 0.0)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        inter, intra = self.loss.parts(student.logits, teacher.logits)
        self.last_terms = {"inter": inter, "intra": intra}
        return inter + intra


def target_classes(targets: Targets) -> torch.Tensor:
    """The target class of each sample for NKD and DKD, (B,): the largest entry of the soft target when there is
    one (Mixup/CutMix), else the label.

    Why not `targets.labels` under Mixup/CutMix: sample b's mixed target is `lam * y_b + (1 - lam) * y_partner` and
    its label is y_b whatever lam is, so for lam < 0.5 the label names the class that covers the smaller part of the
    image. The dominant class is the one NKD's released code takes (argmax of the mixed label); the other mixed
    class stays among the non-target classes, whose teacher distribution (on the same mixed image) is what NKD and
    DKD transfer there. Label smoothing does not move the argmax; an exact tie (lam = 0.5) goes to the lower index.
    """
    if targets.soft is not None:
        return targets.soft.argmax(dim=-1)
    return targets.labels


def refuse_tempered_cache(context: TermContext, term: str, parameter: str, value: float) -> None:
    """Raise ValueError when targets come from a logit cache and the term needs the teacher at temperature != 1."""
    if context.uses_cache and value != 1:
        raise ValueError(
            f"the '{term}' loss with {parameter}={value} needs the teacher's distribution at temperature {value}, "
            f"which a top-K logit cache (teacher.cache) cannot give: the cache holds the temperature-1 soft label "
            f"with its leftover mass spread evenly, and re-tempering that is not the teacher's softmax at {value}. "
            f"Set {parameter}: 1.0, or remove teacher.cache and train with the live teacher")


def _has_distillation_head(context: TermContext) -> bool:
    return hasattr(context.student, "head_dist")
