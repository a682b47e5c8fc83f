"""Attention distillation: TinyBERT's attention-score MSE, MiniLM's attention and value-relation KL and MiniLMv2's
multi-head self-attention relations, on the queries, keys and values of matched student/teacher blocks.

* TinyBERT (Jiao et al. 2020): the student's *pre-softmax* scores ``A = q k^T / sqrt(d)`` regress the teacher's,
  head by head (MSE). Unnormalised scores carry more than the probabilities (TinyBERT reports faster convergence).
* MiniLM (Wang et al. 2020): KL from the teacher's attention distribution ``softmax(q k^T / sqrt(d))`` to the
  student's, and the same for the value relation ``softmax(v v^T / sqrt(d))``, which transfers what the values
  encode without matching widths.
* MiniLMv2 (Wang et al. 2021): the per-head parts need equal head counts. MiniLMv2 concatenates all heads' queries
  (keys, values) back to ``(B, N, H * d)`` and re-splits them into ``R`` *relation heads* of ``H * d / R`` channels,
  the same ``R`` for both models, so any head counts and widths meet: relation ``xy = softmax(x_r y_r^T /
  sqrt(H * d / R))`` for x, y in {q, k, v} (the paper's choice: qq, kk and vv).

All maps are ``N x N`` over the tokens (``N`` equal for both models: drop prefix tokens or resample the teacher's
grid first), so widths never need a projection. The teacher side carries no gradient. Maps are computed in float32
whatever the autocast dtype: scores of a few hundred tokens overflow half precision in the softmax.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

__all__ = ["PARTS", "PER_HEAD_PARTS", "QKV", "RELATION_PARTS", "AttentionDistillationLoss", "AttentionScoreLoss",
           "Relation", "RelationKLLoss", "resplit_heads"]

#: parts on the models' own heads (head counts must agree)
PER_HEAD_PARTS = ("scores", "attention", "value")
#: MiniLMv2 relations on re-split relation heads, "xy" = softmax(x_r y_r^T / sqrt(d_r))
RELATION_PARTS = tuple(x + y for x in "qkv" for y in "qkv")
PARTS = PER_HEAD_PARTS + RELATION_PARTS


class QKV(NamedTuple):
    """One block's queries, keys and values, each ``(B, H, N, d)``, and the block's own attention scale (timm:
    ``d ** -0.5``); q and k already through the block's ``q_norm`` / ``k_norm``."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float


class Relation(NamedTuple):
    """A ``(B, H, N, M)`` map ``x y^T * scale`` kept as its factors ``x`` ``(B, H, N, d)`` and ``y`` ``(B, H, M, d)``:
    the losses form it themselves so they can keep only its gradient (see `RelationKLLoss`)."""

    x: torch.Tensor
    y: torch.Tensor
    scale: float

    def logits(self) -> torch.Tensor:
        return (self.x * self.scale) @ self.y.transpose(-1, -2)  # (B, H, N, M)


def resplit_heads(x: torch.Tensor, relation_heads: int) -> torch.Tensor:
    """MiniLMv2's relation heads: ``(B, H, N, d)`` -> ``(B, R, N, H * d / R)``.

    The heads are concatenated back to the block's ``(B, N, H * d)`` channel layout (head-major, as timm's
    ``qkv`` projection lays them out) and cut into ``R`` equal slices, so a 6-head and a 3-head model both give R maps.
    """
    width = x.shape[1] * x.shape[3]
    if width % relation_heads:
        raise ValueError(f"relation_heads {relation_heads} does not divide the width {width} (= {x.shape[1]} heads "
                         f"x {x.shape[3]} channels)")
    tokens = rearrange(x, "b h n d -> b n (h d)")  # (B, N, H * d)
    return rearrange(tokens, "b n (r c) -> b r n c", r=relation_heads)  # (B, R, N, H * d / R)


class AttentionScoreLoss(nn.Module):
    """TinyBERT's attention loss: MSE between pre-softmax attention scores.

    ``forward(student, teacher)``: two `Relation`s whose maps ``S = x y^T * scale`` (scores ``q k^T / sqrt(d)``) are
    both ``(B, H, N, M)`` -> scalar, the mean of ``(S_s - S_t)^2`` over all ``B * H * N * M`` entries (TinyBERT's
    ``1/h sum_heads MSE``, batch mean). Gradients reach the student's ``x`` and ``y``.
    """

    def forward(self, student: Relation, teacher: Relation) -> torch.Tensor:
        return _RelationLoss.apply(_mse_and_gradient, student.x, student.y, student.scale, teacher)


class RelationKLLoss(nn.Module):
    """MiniLM's KL between row distributions: ``KL(softmax(S_t) || softmax(S_s))`` along the last dim.

    ``forward(student, teacher)``: two `Relation`s (attention scores, value relations or relation-head maps), maps
    ``(B, H, N, M)`` each -> scalar: each row's KL summed over its ``M`` entries, averaged over the ``B * H * N``
    rows (MiniLM's ``1 / (A_h |x|) sum_a sum_t KL``, batch mean). Zero when the distributions agree.

    Memory: the gradient with respect to the student's map, ``(softmax(S_s) - softmax(S_t)) / rows``, is known once
    the forward has both maps, so it is the one map kept for backward, in place of the student's map, its
    log-softmax and the teacher's probabilities that autograd would keep (`benchmarks/attention_memory.py`).
    """

    def forward(self, student: Relation, teacher: Relation) -> torch.Tensor:
        return _RelationLoss.apply(_kl_and_gradient, student.x, student.y, student.scale, teacher)


def _mse_and_gradient(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean((s - t)^2)`` and its gradient ``2 (s - t) / n``; overwrites both maps, which are the caller's own."""
    difference = student.sub_(teacher)  # (B, H, N, M)
    value = torch.dot(difference.reshape(-1), difference.reshape(-1)) / difference.numel()
    return value, difference.mul_(2.0 / difference.numel())


def _kl_and_gradient(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-mean ``KL(softmax(t) || softmax(s))`` and its gradient ``(softmax(s) - softmax(t)) / rows``; overwrites
    both maps, which are the caller's own."""
    rows = student.numel() // student.shape[-1]
    log_student = student.sub_(student.logsumexp(dim=-1, keepdim=True))  # (B, H, N, M) log-softmax, in place
    log_teacher = teacher.sub_(teacher.logsumexp(dim=-1, keepdim=True))
    p_teacher = log_teacher.exp()
    # sum p_t (log p_t - log p_s) from one difference map (not two large dot products whose difference would cancel)
    value = torch.dot(p_teacher.reshape(-1), log_teacher.sub_(log_student).reshape(-1)) / rows
    return value, log_student.exp_().sub_(p_teacher).div_(rows)


class _RelationLoss(torch.autograd.Function):
    """``loss(x y^T * scale, teacher map)`` keeping only ``d loss / d map`` (one map) and the factors for backward.

    ``loss_and_gradient(student_map, teacher_map) -> (value, gradient)`` may overwrite both maps. The maps are built
    and compared in float32 with autocast off: scores over a few hundred tokens overflow half precision.
    """

    @staticmethod
    def forward(ctx, loss_and_gradient, x: torch.Tensor, y: torch.Tensor, scale: float,  # noqa: D102
                teacher: Relation) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x32, y32 = x.float(), y.float()
            student_map = (x32 * scale) @ y32.transpose(-1, -2)  # (B, H, N, M)
            teacher_map = Relation(teacher.x.detach().float(), teacher.y.detach().float(), teacher.scale).logits()
            if student_map.shape != teacher_map.shape:
                raise ValueError(f"student and teacher maps must have the same shape (B, H, N, M), got "
                                 f"{tuple(student_map.shape)} and {tuple(teacher_map.shape)}; drop prefix tokens or "
                                 f"align token grids first")
            value, gradient = loss_and_gradient(student_map, teacher_map)
        ctx.save_for_backward(x32, y32, gradient)
        ctx.scale, ctx.dtypes = scale, (x.dtype, y.dtype)
        return value

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: D102
        x, y, gradient = ctx.saved_tensors
        gradient = gradient * (grad_output * ctx.scale)  # (B, H, N, M): d loss / d (x y^T)
        grad_x = (gradient @ y).to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None  # (B, H, N, d)
        grad_y = (gradient.transpose(-1, -2) @ x).to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return None, grad_x, grad_y, None, None


class AttentionDistillationLoss(nn.Module):
    """The chosen attention parts between matched student/teacher blocks, summed over parts and block pairs.

    ``forward(student, teacher)``: two equally long sequences of ``QKV`` (one per block pair, ``student[l]`` learns
    from ``teacher[l]``), each tensor ``(B, H, N, d)``; ``B`` and ``N`` must agree within a pair, ``H`` and ``d``
    only for the per-head parts. Returns a scalar.

    Parts (each weight 1, as in the papers; layer pairs summed as TinyBERT sums its layers):

    * ``scores``: ``AttentionScoreLoss`` of ``q_s k_s^T * scale_s`` and ``q_t k_t^T * scale_t`` (TinyBERT);
    * ``attention``: ``RelationKLLoss`` of the same scores, i.e. KL between the attention probabilities (MiniLM);
    * ``value``: ``RelationKLLoss`` of ``v_s v_s^T / sqrt(d_s)`` and ``v_t v_t^T / sqrt(d_t)`` (MiniLM's value
      relation);
    * ``xy`` for x, y in {q, k, v} (``qq``, ``kk``, ``vv``, ``qk``, ...): ``RelationKLLoss`` of
      ``x_r y_r^T / sqrt(d_r)`` on ``relation_heads`` re-split heads (``resplit_heads``), ``d_r`` = width / R of
      each model (MiniLMv2). ``qk`` is the attention distribution and ``vv`` the value relation on relation heads.

    After each call ``last_terms`` holds every part summed over the pairs, detached (they sum to the result).
    """

    def __init__(self, parts: Sequence[str] = ("qq", "kk", "vv"), relation_heads: int | None = None) -> None:
        super().__init__()
        parts = list(dict.fromkeys(parts))
        unknown = [part for part in parts if part not in PARTS]
        if unknown or not parts:
            raise ValueError(f"AttentionDistillationLoss: unknown or no parts {unknown or parts}; valid parts: "
                             f"{', '.join(PARTS)}")
        if any(part in RELATION_PARTS for part in parts) and (relation_heads is None or relation_heads < 1):
            raise ValueError(f"AttentionDistillationLoss: parts {parts} need relation_heads >= 1, got {relation_heads}")
        self.parts, self.relation_heads = parts, relation_heads
        self.score_loss, self.relation_loss = AttentionScoreLoss(), RelationKLLoss()
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, student: Sequence[QKV], teacher: Sequence[QKV]) -> torch.Tensor:
        if len(student) != len(teacher) or not student:
            raise ValueError(f"AttentionDistillationLoss expects matching non-empty lists of blocks, got "
                             f"{len(student)} student and {len(teacher)} teacher blocks")
        totals = {part: 0.0 for part in self.parts}
        for s, t in zip(student, teacher):
            for part in self.parts:
                totals[part] = totals[part] + self._part(part, s, t)
        self.last_terms = {part: value.detach() for part, value in totals.items()}
        return sum(totals.values())

    def _part(self, part: str, s: QKV, t: QKV) -> torch.Tensor:
        if part in PER_HEAD_PARTS and s.q.shape[1] != t.q.shape[1]:
            raise ValueError(f"attention part '{part}' compares heads one to one, but the student has "
                             f"{s.q.shape[1]} heads and the teacher {t.q.shape[1]}; use relation parts (qk, vv, ...) "
                             f"with relation_heads")
        if part in ("scores", "attention"):
            student, teacher = Relation(s.q, s.k, s.scale), Relation(t.q, t.k, t.scale)  # q k^T / sqrt(d)
        elif part == "value":
            student, teacher = Relation(s.v, s.v, s.v.shape[-1] ** -0.5), Relation(t.v, t.v, t.v.shape[-1] ** -0.5)
        else:  # MiniLMv2: both models re-split into the same number of relation heads, each at its own d_r
            s_x, s_y = (resplit_heads(getattr(s, name), self.relation_heads) for name in part)  # (B, R, N, d_r)
            t_x, t_y = (resplit_heads(getattr(t, name), self.relation_heads) for name in part)
            student, teacher = Relation(s_x, s_y, s_x.shape[-1] ** -0.5), Relation(t_x, t_y, t_x.shape[-1] ** -0.5)
        return (self.score_loss if part == "scores" else self.relation_loss)(student, teacher)

    def extra_repr(self) -> str:
        return f"parts={self.parts}, relation_heads={self.relation_heads}"

