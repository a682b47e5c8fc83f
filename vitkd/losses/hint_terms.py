"""Loss terms on transformer internals: `attention` (TinyBERT, MiniLM, MiniLMv2) and `hidden` (TinyBERT, MobileBERT,
DistilBERT hidden-state transfer).

Both read the step's single student and teacher forward through the existing taps, so they compose with every other
term and never change how the models run:

* `attention` hooks each tapped block's `attn.qkv` projection, (B, N, 3 * H * d), and rebuilds q, k, v from it
  (`vitkd.models.attention_maps`): timm's fused attention never forms the attention matrix, and forcing the non-fused
  path would cost every block its memory; rebuilding costs only the tapped blocks, and only in the loss.
* `hidden` reads raw block outputs (`layers`) and, for TinyBERT's embedding layer ("layer 0"), the input of block 0
  through a forward hook on `norm_pre`: in timm's ViTs that module's output is exactly what block 0 reads (patch
  embeddings + class/distillation tokens + position embeddings; `norm_pre` is an Identity unless the model pre-norms),
  the analogue of BERT's embedding-layer output. A hook on `patch_embed` would miss the position embeddings and the
  prefix tokens, which the student learns too.

Tokens: prefix tokens (class, distillation, registers) are kept (`prefix_tokens: keep`, as the papers keep [CLS]) or
dropped (`drop`: patch tokens only; for the attention term this renormalises each map over the patch tokens). Kept
prefixes must be as many on both sides; a different patch grid is resampled from the teacher's onto the student's
(`grid_mismatch: interpolate`) or refused (`fail`) when the term is built, naming both token counts.

Layer maps: `teacher_layers` unset pairs the same block indices (`hidden`: TinyBERT's `uniform` map instead);
`auto` maps by relative depth (`vitkd.models.layer_mapping.map_layers_evenly`); `uniform` is TinyBERT's
`g(m) = m * k`: student block i learns from teacher block (i + 1) * k - 1, k = teacher depth / student depth (a
whole number, else the term refuses and suggests `auto`).

Neither term works from a sparse-logit cache: their needs name teacher hooks or layers (live teacher tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkd.losses.attention import PARTS, PER_HEAD_PARTS, QKV, RELATION_PARTS, AttentionDistillationLoss
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.feature_terms import (GRID_POLICIES, auto_teacher_layers, check_bool, check_choice,
                                        check_layer_list, check_number, live_teacher)
from vitkd.losses.hidden import HIDDEN_MODES, HiddenStateLoss
from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.registry import register_loss_term
from vitkd.models.attention_maps import AttentionSite, attention_sites, split_qkv
from vitkd.models.feature_points import (FeaturePoint, model_depth, patch_tokens, resolve_feature_points,
                                         select_output, tap_requests)
from vitkd.models.layer_mapping import align_token_grid, map_layers_uniformly
from vitkd.models.taps import extract_features

PREFIX_POLICIES = ("keep", "drop")
LAYER_MAPS = ("auto", "uniform")
#: TinyBERT's layer 0: the block-0 input of timm ViTs is the output of this module
EMBEDDING_MODULE = "norm_pre"


# ---------------------------------------------------------------------------------------------------------------------
# layers and tokens


def teacher_entries(student_entries: list[Any], teacher_layers: Sequence[Any] | str | None, student: nn.Module,
                    teacher: nn.Module) -> list[Any]:
    """The teacher's entries: the student's (None), mapped by depth (`auto`, `uniform`), or as given; same length."""
    if teacher_layers is None:
        return list(student_entries)
    if teacher_layers == "auto":
        return auto_teacher_layers(student_entries, student, teacher, "student_layers", "teacher_layers")
    if teacher_layers == "uniform":
        points = resolve_feature_points(student_entries, student, "student_layers")  # kinds and ranges name the key
        t_depth = model_depth(teacher)
        if t_depth is None or any(point.block is None for point in points):
            raise ValueError(f"teacher_layers: uniform maps student block indices onto the teacher's blocks by depth; "
                             f"it needs ints in student_layers (got {student_entries}) and a teacher with transformer "
                             f"blocks ({type(teacher).__name__}: {t_depth or 'none'}); list teacher_layers explicitly")
        return map_layers_uniformly([point.block for point in points], model_depth(student), t_depth)
    entries = list(teacher_layers)
    if len(entries) != len(student_entries):
        raise ValueError(f"student_layers ({student_entries}) and teacher_layers ({entries}) must have the same "
                         f"length: entry i of one is paired with entry i of the other (or set teacher_layers: auto)")
    return entries


@dataclass(frozen=True)
class TokenLayout:
    """What a point yields at the training input size: ``prefix`` tokens before the ``grid`` of patch tokens, each
    ``width`` channels wide."""

    prefix: int
    grid: tuple[int, int]
    width: int

    def describe(self) -> str:
        patches = self.grid[0] * self.grid[1]
        return (f"{self.prefix + patches} tokens ({self.prefix} prefix + {patches} patches on a "
                f"{self.grid[0]}x{self.grid[1]} grid)")


@torch.no_grad()
def probe_token_layouts(model: nn.Module, points: Sequence[FeaturePoint], img_size: int, who: str
                        ) -> list[TokenLayout]:
    """Token layouts of ``points`` from one eval-mode forward of a ``(1, 3, img_size, img_size)`` zero image (the
    model's mode is restored). Prefix counts are read off the tensors: CaiT-like blocks carry none of the model's."""
    raw, normed, hooks = tap_requests(points)
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        tapped = extract_features(model.eval(), torch.zeros(1, 3, img_size, img_size, device=device), list(raw),
                                  normed_layers=list(normed), hooks=list(hooks))
    finally:
        model.train(was_training)
    layouts = []
    for point in points:
        output = select_output(tapped, point)
        patches, grid = patch_tokens(output, tapped.grid_size, tapped.num_prefix_tokens, f"{who} {point.describe()}",
                                     point.channels_last)
        prefix = output.shape[1] - patches.shape[1] if output.dim() == 3 else 0  # feature maps carry none
        layouts.append(TokenLayout(prefix=prefix, grid=grid, width=int(patches.shape[-1])))
    return layouts


def check_token_layouts(pairs: Sequence[tuple[str, str]], student: Sequence[TokenLayout],
                        teacher: Sequence[TokenLayout], keep_prefix: bool, grid_mismatch: str, img_size: int) -> None:
    """Refuse pairs whose token sequences cannot be compared; ``pairs`` describes each (student, teacher) point."""
    for (s_where, t_where), s, t in zip(pairs, student, teacher):
        if keep_prefix and s.prefix != t.prefix:
            raise ValueError(f"prefix_tokens: keep compares every token, but student {s_where} gives {s.describe()} "
                             f"and teacher {t_where} {t.describe()}; set prefix_tokens: drop to compare patch "
                             f"tokens only")
        if s.grid != t.grid and grid_mismatch == "fail":
            raise ValueError(f"grid_mismatch: fail, but student {s_where} gives {s.describe()} and teacher {t_where} "
                             f"{t.describe()} at img_size {img_size}; use the same patch size and resolution, or "
                             f"grid_mismatch: interpolate to resample the teacher's patch tokens")


def select_tokens(output: torch.Tensor, outputs: StudentOutputs | TeacherOutputs, point: FeaturePoint, where: str,
                  keep_prefix: bool, to_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A tapped output as ``(B, [P +] N, D)`` tokens: prefix tokens kept or dropped, and the patch tokens resampled
    bilinearly onto ``to_grid`` when given (the teacher's onto the student's grid)."""
    patches, grid = patch_tokens(output, outputs.grid_size, outputs.num_prefix_tokens, where, point.channels_last)
    if to_grid is not None:
        patches = align_token_grid(patches, grid, to_grid)  # (B, N_student, D)
    if not keep_prefix or output.dim() != 3:  # feature maps have no prefix tokens
        return patches
    prefix = output[:, :output.shape[1] - grid[0] * grid[1]]  # (B, P, D)
    return torch.cat((prefix, patches), dim=1)  # (B, P + N, D)


def _check_layer_map(params: dict, path: str) -> None:
    value = params.get("teacher_layers")
    if isinstance(value, str) and value not in LAYER_MAPS:
        raise ValueError(f"{path}.teacher_layers: expected a list of block indices (ints) and/or module names "
                         f"(strings), auto or uniform, got {value!r}")
    if not isinstance(value, str):
        check_layer_list(params, path, "teacher_layers")


def _check_prefix_and_grid(params: dict, path: str) -> None:
    check_choice(params, path, "prefix_tokens", PREFIX_POLICIES)
    check_choice(params, path, "grid_mismatch", GRID_POLICIES)


# ---------------------------------------------------------------------------------------------------------------------
# the terms


@register_loss_term("attention")
class AttentionTerm(LossTerm):
    """Attention distillation (`AttentionDistillationLoss`) between matched student/teacher blocks.

    Recipe parameters:
        student_layers: block indices (default [-1], the last block, as MiniLM / MiniLMv2 with a base-size teacher).
        teacher_layers: paired in order; unset = the same indices, `auto` (same relative depth) or `uniform`
            (TinyBERT's (i + 1) * k - 1; use it with every student block for TinyBERT's setting).
        parts: any of `scores` (TinyBERT's MSE on pre-softmax scores), `attention` (MiniLM's KL on attention
            probabilities), `value` (MiniLM's value-relation KL) - these three compare the models' own heads, whose
            counts must agree - and MiniLMv2 relations on re-split heads `qq`, `kk`, `vv`, `qk`, ... (default
            [qq, kk, vv], MiniLMv2's, which work for any head counts). Each part has weight 1, as in the papers.
        relation_heads: R for the relation parts (default: the student's head count); must divide both widths.
        prefix_tokens: `keep` (default) or `drop`; grid_mismatch: `interpolate` (default) or `fail`.

    Shapes: the hooked `attn.qkv` outputs (B, P + N, 3 * H * d) of each model -> q, k, v (B, H, N', d) -> scalar,
    summed over parts and block pairs; logs each part (`attention/qq`, ...). Default weight 1.0. No parameters.
    """

    def __init__(self, context: TermContext, student_layers: Sequence[int] = (-1,),
                 teacher_layers: Sequence[int] | str | None = None, parts: Sequence[str] = ("qq", "kk", "vv"),
                 relation_heads: int | None = None, prefix_tokens: str = "keep",
                 grid_mismatch: str = "interpolate") -> None:
        super().__init__()
        teacher = live_teacher(context, "attention")
        student_entries = list(student_layers)
        self.student_sites = attention_sites(context.student, student_entries, "student_layers")
        self.teacher_sites = attention_sites(teacher, teacher_entries(student_entries, teacher_layers,
                                                                      context.student, teacher), "teacher_layers")
        self.keep_prefix = prefix_tokens == "keep"
        self.student_points = [FeaturePoint(module=site.qkv_name) for site in self.student_sites]
        self.teacher_points = [FeaturePoint(module=site.qkv_name) for site in self.teacher_sites]
        self.student_layouts = probe_token_layouts(context.student, self.student_points, context.img_size, "student")
        teacher_layouts = probe_token_layouts(teacher, self.teacher_points, context.img_size, "teacher")
        described = [(f"block {s.block}", f"block {t.block}") for s, t in zip(self.student_sites, self.teacher_sites)]
        check_token_layouts(described, self.student_layouts, teacher_layouts, self.keep_prefix, grid_mismatch,
                            context.img_size)
        parts = list(parts)
        if relation_heads is None:
            relation_heads = self.student_sites[0].num_heads
        self._check_heads(parts, relation_heads)
        self.loss = AttentionDistillationLoss(parts, relation_heads)
        self.needs = LossNeeds(student_hooks=tuple(sorted({p.module for p in self.student_points})),
                               teacher_hooks=tuple(sorted({p.module for p in self.teacher_points})))

    def _check_heads(self, parts: list[str], relation_heads: int) -> None:
        for s, t in zip(self.student_sites, self.teacher_sites):
            per_head = [part for part in parts if part in PER_HEAD_PARTS]
            if per_head and s.num_heads != t.num_heads:
                raise ValueError(f"parts {per_head} compare heads one to one, but student block {s.block} has "
                                 f"{s.num_heads} heads and teacher block {t.block} {t.num_heads}; use relation "
                                 f"parts ({', '.join(RELATION_PARTS[:4])}, ...) with relation_heads, as MiniLMv2")
            if any(part in RELATION_PARTS for part in parts):
                for who, site in (("student", s), ("teacher", t)):
                    if site.width % relation_heads:
                        raise ValueError(f"relation_heads: {relation_heads} does not divide the {site.width} "
                                         f"channels of {who} block {site.block}'s queries ({site.num_heads} heads x "
                                         f"{site.head_dim}); choose a common divisor of both widths")

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_layer_list(params, path, "student_layers")
        _check_layer_map(params, path)
        if "parts" in params:
            parts = params["parts"]
            if not isinstance(parts, (list, tuple)) or not parts or any(part not in PARTS for part in parts):
                raise ValueError(f"{path}.parts: expected a non-empty list of {', '.join(PARTS)}, got {parts!r}")
        if params.get("relation_heads") is not None:
            check_number(params, path, "relation_heads", 1, integer=True)
        _check_prefix_and_grid(params, path)

    def _qkv(self, outputs: StudentOutputs | TeacherOutputs, site: AttentionSite, point: FeaturePoint, who: str,
             to_grid: tuple[int, int] | None = None) -> QKV:
        tokens = select_tokens(select_output(outputs, point), outputs, point, f"{who} {point.describe()}",
                               self.keep_prefix, to_grid)  # (B, [P +] N, 3 * H * d)
        q, k, v = split_qkv(tokens.float(), site)  # each (B, H, [P +] N, d)
        return QKV(q, k, v, site.scale)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        student_qkv = [self._qkv(student, site, point, "student")
                       for site, point in zip(self.student_sites, self.student_points)]
        with torch.no_grad():  # the frozen teacher's side: resampling and norms need no graph
            teacher_qkv = [self._qkv(teacher, site, point, "teacher", layout.grid)
                           for site, point, layout in zip(self.teacher_sites, self.teacher_points,
                                                          self.student_layouts)]
        value = self.loss(student_qkv, teacher_qkv)
        self.last_terms = dict(self.loss.last_terms)
        return value

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{s.block}->{t.block}" for s, t in zip(self.student_sites, self.teacher_sites))
        return f"blocks=[{pairs}], keep_prefix={self.keep_prefix}"


@register_loss_term("hidden")
class HiddenTerm(LossTerm):
    """Hidden-state transfer (`HiddenStateLoss`): student tokens regress the teacher's at matched layers.

    Recipe parameters:
        student_layers: block indices or module names (default: every block of the student).
        teacher_layers: `uniform` (default: TinyBERT's (i + 1) * k - 1, k = teacher depth / student depth), `auto`
            (same relative depth), or a list paired in order.
        embedding: also match TinyBERT's layer 0, the block-0 input (a hook on `norm_pre`; default true).
        mode: `mse` (default; TinyBERT / MobileBERT, learned linear projection when widths differ) or `cosine`
            (DistilBERT's cosine embedding loss, through the same projection when widths differ).
        prefix_tokens: `keep` (default) or `drop`; grid_mismatch: `interpolate` (default) or `fail`.

    Shapes: student (B, P + N, Ds) tokens or (B, Ds, H, W) maps, teacher (B, P + N_t, Dt) or maps -> scalar, summed
    over layer pairs (embedding first); logs each pair (`hidden/embedding`, `hidden/block3`, ...). Default weight
    1.0. Trainable: the projections (trained with the student, saved in `last.pt`, never exported).
    """

    def __init__(self, context: TermContext, student_layers: Sequence[Any] | None = None,
                 teacher_layers: Sequence[Any] | str | None = "uniform", embedding: bool = True, mode: str = "mse",
                 prefix_tokens: str = "keep", grid_mismatch: str = "interpolate") -> None:
        super().__init__()
        teacher = live_teacher(context, "hidden")
        if student_layers is None:
            depth = model_depth(context.student)
            if depth is None:
                raise ValueError(f"student_layers: {type(context.student).__name__} has no transformer blocks for "
                                 f"the default (every block); list the modules to read")
            student_layers = range(depth)
        student_entries = list(student_layers)
        entries = teacher_entries(student_entries, teacher_layers, context.student, teacher)
        self.student_points = resolve_feature_points(student_entries, context.student, "student_layers")
        self.teacher_points = resolve_feature_points(entries, teacher, "teacher_layers")
        self.names = [f"block{p.block}" if p.block is not None else p.module for p in self.student_points]
        if embedding:
            for model, key in ((context.student, "student"), (teacher, "teacher")):
                if not isinstance(dict(model.named_modules()).get(EMBEDDING_MODULE), nn.Module):
                    raise ValueError(f"embedding: true reads the block-0 input through a hook on `{EMBEDDING_MODULE}` "
                                     f"(timm ViTs), but the {key} {type(model).__name__} has no such module; set "
                                     f"embedding: false or list the module to read in {key}_layers")
            embed = FeaturePoint(module=EMBEDDING_MODULE)
            self.student_points, self.teacher_points = [embed] + self.student_points, [embed] + self.teacher_points
            self.names = ["embedding"] + self.names
        # a student point paired with several teacher points logs each pair apart: block1, block1_1, ...
        self.names = [name if self.names[:i].count(name) == 0 else f"{name}_{self.names[:i].count(name)}"
                      for i, name in enumerate(self.names)]
        self.keep_prefix = prefix_tokens == "keep"
        self.student_layouts = probe_token_layouts(context.student, self.student_points, context.img_size, "student")
        teacher_layouts = probe_token_layouts(teacher, self.teacher_points, context.img_size, "teacher")
        described = [(s.describe(), t.describe()) for s, t in zip(self.student_points, self.teacher_points)]
        check_token_layouts(described, self.student_layouts, teacher_layouts, self.keep_prefix, grid_mismatch,
                            context.img_size)
        self.loss = HiddenStateLoss([layout.width for layout in self.student_layouts],
                                    [layout.width for layout in teacher_layouts], mode=mode)
        s_raw, s_normed, s_hooks = tap_requests(self.student_points)
        t_raw, t_normed, t_hooks = tap_requests(self.teacher_points)
        self.needs = LossNeeds(student_layers=s_raw, student_normed_layers=s_normed, student_hooks=s_hooks,
                               teacher_layers=t_raw, teacher_normed_layers=t_normed, teacher_hooks=t_hooks)

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_layer_list(params, path, "student_layers")
        _check_layer_map(params, path)
        check_bool(params, path, "embedding")
        check_choice(params, path, "mode", HIDDEN_MODES)
        _check_prefix_and_grid(params, path)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        student_feats = [select_tokens(select_output(student, point), student, point, f"student {point.describe()}",
                                       self.keep_prefix) for point in self.student_points]
        with torch.no_grad():
            teacher_feats = [select_tokens(select_output(teacher, point), teacher, point,
                                           f"teacher {point.describe()}", self.keep_prefix, layout.grid)
                             for point, layout in zip(self.teacher_points, self.student_layouts)]
        value = self.loss(student_feats, teacher_feats)
        self.last_terms = {name: self.loss.last_terms[f"layer{i}"] for i, name in enumerate(self.names)}
        return value
