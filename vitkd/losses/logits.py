"""Logit distillation losses: Hinton KD (forward, reverse or symmetric), the DeiT distillation-token term, NKD, DKD
and DIST.

Each is a small `nn.Module` called on logits; their docstrings state the shapes and how the result is normalised.
Teacher logits are detached and every loss is computed in float32 (the logits may come from autocast).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

KDDirection = Literal["forward", "reverse", "symmetric"]
KD_DIRECTIONS: tuple[str, ...] = ("forward", "reverse", "symmetric")


class KDLoss(nn.Module):
    """Hinton et al. knowledge distillation between temperature-T distributions p = softmax(t / T) (teacher) and
    q = softmax(s / T) (student), times T^2.

    Args:
        temperature: softening temperature T (> 0).
        direction: "forward" -- `KL(p || q)` (Hinton KD; the default).
            "reverse" -- `KL(q || p)`, the mode-seeking direction MiniLLM (Gu et al. 2024) uses; over C classes it
            is the closed-form sum, no sampling needed.
            "symmetric" -- the Jensen-Shannon divergence `0.5 * KL(p || m) + 0.5 * KL(q || m)`, m = (p + q) / 2
            (bounded by ln 2 before the T^2 factor).

    Shapes: student_logits (B, C), teacher_logits (B, C) -> scalar.
    Reduction: the divergence is summed over classes and averaged over the batch (per-sample, `batchmean`);
    the T^2 factor keeps gradient magnitudes comparable across temperatures, in every direction.
    """

    def __init__(self, temperature: float = 4.0, direction: KDDirection = "forward") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KDLoss temperature must be positive, got {temperature}")
        if direction not in KD_DIRECTIONS:
            raise ValueError(f"KDLoss direction must be one of {', '.join(KD_DIRECTIONS)}, got {direction!r}")
        self.temperature = temperature
        self.direction = direction

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_logit_shapes(student_logits, teacher_logits, "KDLoss")
        t = self.temperature
        student_log_probs = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, C) log q
        teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)  # (B, C) log p
        if self.direction == "forward":
            kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
        elif self.direction == "reverse":
            kl = _kl_per_sample(student_log_probs, teacher_log_probs).mean()
        else:
            # log m = log((p + q) / 2), stably in log space (p or q may underflow where the other does not)
            log_mixture = torch.logaddexp(teacher_log_probs, student_log_probs) - math.log(2.0)
            kl = 0.5 * (_kl_per_sample(teacher_log_probs, log_mixture)
                        + _kl_per_sample(student_log_probs, log_mixture)).mean()
        return kl * (t * t)


class DeiTDistillationLoss(nn.Module):
    """The DeiT distillation-token term (Touvron et al. 2021), applied to the distillation head's logits.

    Args:
        mode: "hard" -- cross-entropy of the distillation head against the teacher's argmax class.
              "soft" -- `KL(softmax(t / tau) || softmax(s / tau)) * tau^2`.
        tau: temperature of the soft mode (ignored by hard).
        normalization: for the soft mode, "element" divides the summed KL by B * C, as DeiT's released code does
            (so the paper's settings carry over); "batch" divides by B (the usual per-sample KL).

    Shapes: dist_logits (B, C), teacher_logits (B, C) -> scalar. Hard mode is averaged over the batch.
    """

    def __init__(self, mode: Literal["soft", "hard"] = "hard", tau: float = 3.0,
                 normalization: Literal["element", "batch"] = "element") -> None:
        super().__init__()
        if mode not in ("soft", "hard"):
            raise ValueError(f"DeiTDistillationLoss mode must be 'soft' or 'hard', got {mode!r}")
        if normalization not in ("element", "batch"):
            raise ValueError(f"DeiTDistillationLoss normalization must be 'element' or 'batch', got {normalization!r}")
        if tau <= 0:
            raise ValueError(f"DeiTDistillationLoss tau must be positive, got {tau}")
        self.mode = mode
        self.tau = tau
        self.normalization = normalization

    def forward(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_logit_shapes(dist_logits, teacher_logits, "DeiTDistillationLoss")
        teacher_logits = teacher_logits.detach().float()
        if self.mode == "hard":
            return F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
        tau = self.tau
        student_log_probs = F.log_softmax(dist_logits.float() / tau, dim=-1)  # (B, C)
        teacher_log_probs = F.log_softmax(teacher_logits / tau, dim=-1)  # (B, C)
        kl_sum = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
        divisor = dist_logits.numel() if self.normalization == "element" else dist_logits.shape[0]
        return kl_sum * (tau * tau) / divisor


class NKDLoss(nn.Module):
    """NKD, normalized knowledge distillation (Yang et al., "From Knowledge Distillation to Self-Knowledge
    Distillation", ICCV 2023).

    With t the target class, T_t / S_t the teacher's / student's target probability at temperature 1, and
    T^_i / S^_i (i != t) the temperature-T distributions over the C - 1 non-target classes alone (softmax of the
    logits / T with the target class removed, i.e. renormalised to sum to 1):

        loss = -mean_b(T_t * log S_t) - gamma * T^2 * mean_b(sum_{i != t} T^_i * log S^_i)

    The second part is a cross-entropy, not a KL: it differs from `KL(T^ || S^)` by the teacher's entropy, a
    constant, so the gradients are the same; the value is the paper's. (At least one revision of the released code
    builds its non-target mask with ones, keeping the target class in that softmax; this follows the paper.)

    Args:
        temperature: T of the non-target part (> 0); the target part always uses temperature 1.
        gamma: weight of the non-target part (>= 0). ViTKD's DeiT setting is 1; NKD's reference code defaults to 1.5.

    Shapes: student_logits (B, C), teacher_logits (B, C), labels (B,) integer target classes -> scalar (C >= 2).
    Reduction: class sums, batch means.
    """

    def __init__(self, temperature: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        _check_coefficients("NKDLoss", positive={"temperature": temperature}, non_negative={"gamma": gamma})
        self.temperature, self.gamma = temperature, gamma

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target part, non-target part with gamma * T^2 applied), both scalars; their sum is the loss."""
        student, teacher, is_target = _target_split_inputs(student_logits, teacher_logits, labels, "NKDLoss")
        student_target_log_prob = F.log_softmax(student, dim=-1)[is_target]  # (B,) log S_t
        teacher_target_prob = F.softmax(teacher, dim=-1)[is_target]  # (B,) T_t
        target = -(teacher_target_prob * student_target_log_prob).mean()
        t = self.temperature
        student_non_target = F.log_softmax(_non_target(student, is_target) / t, dim=-1)  # (B, C - 1) log S^
        teacher_non_target = F.softmax(_non_target(teacher, is_target) / t, dim=-1)  # (B, C - 1) T^
        cross_entropy = -(teacher_non_target * student_non_target).sum(dim=-1).mean()
        return target, self.gamma * (t * t) * cross_entropy

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        target, non_target = self.parts(student_logits, teacher_logits, labels)
        return target + non_target


class DKDLoss(nn.Module):
    """DKD, decoupled knowledge distillation (Zhao et al., CVPR 2022): `(alpha * TCKD + beta * NCKD) * T^2`.

    At temperature T, with t the target class, p = softmax(logits / T):
        TCKD = KL(b^T || b^S), b = [p_t, 1 - p_t], the binary target / all-non-target distribution;
        NCKD = KL(p^^T || p^^S), p^ = the distribution over the C - 1 non-target classes alone (renormalised).
    Classic KD decomposes as `KL(p^T || p^S) = TCKD + (1 - p_t^T) * NCKD` (p_t^T: the teacher's target
    probability); DKD drops the (1 - p_t^T) coupling and weighs the two parts freely.

    Args:
        alpha: TCKD weight (>= 0). The paper keeps 1.
        beta: NCKD weight (>= 0). ImageNet: 0.5 (ResNet-34 -> ResNet-18), 2.0 (ResNet-50 -> MobileNet); CIFAR-100: 8.
        temperature: T (> 0). ImageNet 1, CIFAR-100 4.

    The paper's linear warm-up of the whole term belongs to the recipe term (`dkd`), not to this module.
    Shapes: student_logits (B, C), teacher_logits (B, C), labels (B,) integer target classes -> scalar (C >= 2).
    Reduction: class sums, batch means (per-sample KL, as `KDLoss`).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        _check_coefficients("DKDLoss", positive={"temperature": temperature},
                            non_negative={"alpha": alpha, "beta": beta})
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(TCKD, NCKD) per sample, (B,) each, without the weights and without T^2."""
        student, teacher, is_target = _target_split_inputs(student_logits, teacher_logits, labels, "DKDLoss")
        t = self.temperature
        student, teacher = student / t, teacher / t
        tckd = _kl_per_sample(_binary_log_probs(teacher, is_target), _binary_log_probs(student, is_target))
        nckd = _kl_per_sample(F.log_softmax(_non_target(teacher, is_target), dim=-1),
                              F.log_softmax(_non_target(student, is_target), dim=-1))
        return tckd, nckd

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha * TCKD * T^2, beta * NCKD * T^2), batch means; their sum is the loss."""
        tckd, nckd = self.per_sample(student_logits, teacher_logits, labels)
        scale = self.temperature * self.temperature
        return self.alpha * scale * tckd.mean(), self.beta * scale * nckd.mean()

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        tckd, nckd = self.parts(student_logits, teacher_logits, labels)
        return tckd + nckd


class DISTLoss(nn.Module):
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match relations, not
    probabilities, of Y^S = softmax(s / tau) and Y^T = softmax(t / tau), (B, C) each:

        inter = 1 - mean_b pearson(Y^S[b, :], Y^T[b, :])   (per sample, correlation across the classes)
        intra = 1 - mean_c pearson(Y^S[:, c], Y^T[:, c])   (per class, correlation across the batch)
        loss  = tau^2 * (beta * inter + gamma * intra)

    pearson(u, v) = <u - mean u, v - mean v> / (||u - mean u|| * ||v - mean v|| + 1e-8); the epsilon keeps a
    constant vector (a batch of one, a class no sample rates differently) at correlation 0 instead of NaN. The
    intra-class relation is over this process's batch (under torchrun, each process's own samples).

    Args:
        beta: inter-class weight (>= 0), gamma: intra-class weight (>= 0), tau: temperature (> 0). ImageNet: all 1,
        with a term weight of 2.

    Shapes: student_logits (B, C), teacher_logits (B, C), labels (ignored, accepted so every logit loss is called
    alike) -> scalar.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        _check_coefficients("DISTLoss", positive={"tau": tau}, non_negative={"beta": beta, "gamma": gamma})
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta * tau^2 * inter, gamma * tau^2 * intra), scalars; their sum is the loss."""
        _check_logit_shapes(student_logits, teacher_logits, "DISTLoss")
        tau = self.tau
        student = F.softmax(student_logits.float() / tau, dim=-1)  # (B, C)
        teacher = F.softmax(teacher_logits.detach().float() / tau, dim=-1)  # (B, C)
        inter = 1.0 - _pearson(student, teacher, dim=1).mean()
        intra = 1.0 - _pearson(student, teacher, dim=0).mean()
        scale = tau * tau
        return self.beta * scale * inter, self.gamma * scale * intra

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        inter, intra = self.parts(student_logits, teacher_logits)
        return inter + intra


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _check_logit_shapes(student: torch.Tensor, teacher: torch.Tensor, who: str) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"{who} expects student and teacher logits of the same shape (B, C); "
                         f"got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")


def _check_coefficients(who: str, positive: dict[str, float], non_negative: dict[str, float]) -> None:
    """Raise ValueError naming the loss and the argument for a temperature <= 0 or a negative weight."""
    for name, value in positive.items():
        if not value > 0:  # `not >` also refuses NaN
            raise ValueError(f"{who} {name} must be positive, got {value}")
    for name, value in non_negative.items():
        if not value >= 0:
            raise ValueError(f"{who} {name} must be >= 0, got {value}")


def _kl_per_sample(target_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(target || other) of each row, (B,): sum_c target * (log target - log other), summed over the last dim.

    Unlike `F.kl_div`, gradients reach both arguments (reverse and symmetric KD need them through the student's
    side); a class whose target probability underflows to 0 adds exactly 0.
    """
    target_probs = target_log_probs.exp()
    return torch.where(target_probs > 0, target_probs * (target_log_probs - log_probs),
                       torch.zeros_like(target_probs)).sum(dim=-1)


def _target_split_inputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                         who: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked float32 (student, detached teacher) logits and the (B, C) boolean mask of each row's target class."""
    _check_logit_shapes(student_logits, teacher_logits, who)
    batch, classes = student_logits.shape
    if classes < 2:
        raise ValueError(f"{who} needs at least 2 classes (a target and a non-target part), got {classes}")
    if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{who} expects labels of shape (B,) = ({batch},) holding integer class indices; got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    labels = labels.to(student_logits.device, torch.long)
    is_target = F.one_hot(labels, classes).bool()  # one_hot raises on indices outside [0, C)
    return student_logits.float(), teacher_logits.detach().float(), is_target


def _non_target(logits: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C - 1): each row without its target class, the other classes in their order."""
    return logits[~is_target].view(logits.shape[0], logits.shape[1] - 1)


def _binary_log_probs(logits: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """(B, C) logits -> (B, 2) log [p_t, 1 - p_t] of softmax(logits), in log space so that 1 - p_t keeps its
    precision when p_t is close to 1 (a confident teacher)."""
    log_total = torch.logsumexp(logits, dim=-1)  # (B,)
    log_target = logits[is_target] - log_total
    log_rest = torch.logsumexp(_non_target(logits, is_target), dim=-1) - log_total
    return torch.stack([log_target, log_rest], dim=-1)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of a and b along `dim` (the other dimension indexes the pairs)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
