"""Loss terms on intermediate tokens: `vitkd` (ViTKD, Yang et al. 2022) and `manifold` (ManifoldKD, Hao et al. 2022).

Both read patch tokens of chosen student and teacher layers from the step's single student and teacher forward (the
terms declare the layers in `needs`; the trainer taps the union). Layer entries in recipes are block indices
(negative counts from the end of each model) or module names read with forward hooks (for models without ViT blocks,
e.g. the demo's CNN teacher: `features.5`). `teacher_layers: auto` pairs each student block with the teacher block at
the same relative depth (`vitkd.models.layer_mapping.map_layers_evenly`).

Per step, for each (student, teacher) pair of points:

* prefix tokens (class, distillation, registers) are dropped using the tap's `num_prefix_tokens`
  (`vitkd.models.feature_points.patch_tokens`); conv feature maps (B, C, H, W) become (B, H * W, C) tokens;
* when the token grids differ (another patch size or resolution), the teacher's tokens are resampled bilinearly onto
  the student's grid (`grid_mismatch: interpolate`, the default; the teacher is the target and carries no gradient,
  so the student's tokens, ViTKD's masks and generation block stay on the student's own grid), or the term refuses
  to build (`grid_mismatch: fail`);
* width mismatches are bridged by ViTKD's learnable projections, which live in the term: the trainer optimises them
  with the student, saves them in training checkpoints and leaves them out of the exported student. ManifoldKD
  compares width-free relation maps and needs none.

Default weight of both terms: 1.0 (ViTKD's alpha and beta, ManifoldKD's w_intra, w_inter, w_rand are inside the
losses). Each term's masks and random samples come from its own generator seeded with `train.seed + rank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vitkd.losses.inputs import StudentOutputs, TeacherOutputs, Targets
from vitkd.losses.base import LossNeeds, LossTerm, TermContext
from vitkd.losses.manifold import ManifoldLoss
from vitkd.losses.registry import register_loss_term
from vitkd.losses.vitkd_features import ViTKDLoss
from vitkd.models.feature_points import (FeaturePoint, FeatureShape, model_depth, patch_tokens, probe_feature_shapes,
                                         resolve_feature_points, select_output, tap_requests)
from vitkd.models.layer_mapping import align_token_grid, map_layers_evenly

GRID_POLICIES = ("interpolate", "fail")
PAPER_MANIFOLD_LAYERS = (0, 1, 2, 3, -4, -3, -2, -1)  # first four and last four blocks (12 vs 24: 0-3, 8-11 / 20-23)


class FeaturePairs(nn.Module):
    """Matched student/teacher feature points of one term and how to read them from a step's outputs.

    `student(outputs)` -> list of (B, N, Ds_l) patch tokens; `teacher(outputs)` -> list of (B, N, Dt_l) patch tokens
    on the matching student point's grid. Holds no parameters (a module only so `repr` shows the pairs).
    """

    def __init__(self, student_points: list[FeaturePoint], teacher_points: list[FeaturePoint],
                 student_shapes: list[FeatureShape], teacher_shapes: list[FeatureShape], grid_mismatch: str) -> None:
        super().__init__()
        self.student_points, self.teacher_points = student_points, teacher_points
        self.student_shapes, self.teacher_shapes = student_shapes, teacher_shapes
        self.grid_mismatch = grid_mismatch

    def needs(self) -> dict[str, tuple]:
        s_raw, s_normed, s_hooks = tap_requests(self.student_points)
        t_raw, t_normed, t_hooks = tap_requests(self.teacher_points)
        return dict(student_layers=s_raw, student_normed_layers=s_normed, student_hooks=s_hooks,
                    teacher_layers=t_raw, teacher_normed_layers=t_normed, teacher_hooks=t_hooks)

    def student(self, outputs: StudentOutputs) -> list[torch.Tensor]:
        return [patch_tokens(select_output(outputs, point), outputs.grid_size, outputs.num_prefix_tokens,
                             f"student {point.describe()}", point.channels_last)[0] for point in self.student_points]

    def teacher(self, outputs: TeacherOutputs) -> list[torch.Tensor]:
        feats = []
        for point, s_shape in zip(self.teacher_points, self.student_shapes):
            tokens, grid = patch_tokens(select_output(outputs, point), outputs.grid_size, outputs.num_prefix_tokens,
                                        f"teacher {point.describe()}", point.channels_last)
            mode = "interpolate" if self.grid_mismatch == "interpolate" else "error"
            feats.append(align_token_grid(tokens.detach(), grid, s_shape.grid, mode=mode))  # (B, N_student, Dt)
        return feats

    def extra_repr(self) -> str:
        pairs = [f"student {s.describe()} -> teacher {t.describe()}"
                 for s, t in zip(self.student_points, self.teacher_points)]
        return f"grid_mismatch={self.grid_mismatch!r}, pairs=[{'; '.join(pairs)}]"


def build_pairs(context: TermContext, term: str, student_entries: Sequence[Any],
                teacher_entries: Sequence[Any] | str | None, grid_mismatch: str, student_key: str = "student_layers",
                teacher_key: str = "teacher_layers", normed: bool = False,
                extra: Sequence[tuple[Any, Any, str, str]] = ()) -> FeaturePairs:
    """Resolve and probe the student/teacher points of a term, check token grids, and return them paired.

    `teacher_entries` None reuses the student's entries (the same block indices, resolved against the teacher's
    depth); `"auto"` maps the student's block indices evenly onto the teacher's depth. `extra` appends
    (student entry, teacher entry, student key, teacher key) pairs read with `normed` (ViTKD's deep layer).
    Raises ValueError naming the recipe key on any bad entry, a missing live teacher, or mismatched grids under
    `grid_mismatch: fail`.
    """
    teacher = live_teacher(context, term)
    student_entries = list(student_entries)
    if teacher_entries is None:
        teacher_entries = student_entries
    elif teacher_entries == "auto":
        teacher_entries = auto_teacher_layers(student_entries, context.student, teacher, student_key, teacher_key)
    teacher_entries = list(teacher_entries)
    if len(student_entries) != len(teacher_entries):
        raise ValueError(f"{student_key} ({student_entries}) and {teacher_key} ({teacher_entries}) must have the same "
                         f"length: entry i of one is paired with entry i of the other (or set {teacher_key}: auto)")
    student_points = resolve_feature_points(student_entries, context.student, student_key)
    teacher_points = resolve_feature_points(teacher_entries, teacher, teacher_key)
    for s_entry, t_entry, s_key, t_key in extra:
        student_points += resolve_feature_points([s_entry], context.student, s_key, normed=normed)
        teacher_points += resolve_feature_points([t_entry], teacher, t_key, normed=normed)
    student_shapes = probe_feature_shapes(context.student, student_points, context.img_size, "student")
    teacher_shapes = probe_feature_shapes(teacher, teacher_points, context.img_size, "teacher")
    for s_point, t_point, s_shape, t_shape in zip(student_points, teacher_points, student_shapes, teacher_shapes):
        if s_shape.grid != t_shape.grid and grid_mismatch == "fail":
            raise ValueError(
                f"grid_mismatch: fail, but student {s_point.describe()} gives a {_grid(s_shape.grid)} token grid and "
                f"teacher {t_point.describe()} a {_grid(t_shape.grid)} grid at img_size {context.img_size}; use the "
                f"same patch size and resolution, or grid_mismatch: interpolate to resample the teacher's tokens")
    return FeaturePairs(student_points, teacher_points, student_shapes, teacher_shapes, grid_mismatch)


def live_teacher(context: TermContext, term: str) -> nn.Module:
    if context.teacher is not None:
        return context.teacher
    if context.uses_cache:
        raise ValueError(f"the '{term}' loss needs the live teacher's tokens, which a sparse-logit cache "
                         f"(teacher.cache) cannot provide; remove teacher.cache and set teacher.name")
    raise ValueError(f"the '{term}' loss needs a teacher: set teacher.name (and teacher.checkpoint)")


def auto_teacher_layers(student_entries: list[Any], student: nn.Module, teacher: nn.Module, student_key: str,
                        teacher_key: str) -> list[int]:
    """`teacher_layers: auto`: each student block index -> the teacher block at the same relative depth."""
    s_depth, t_depth = model_depth(student), model_depth(teacher)
    if s_depth is None or t_depth is None:
        model = type(student if s_depth is None else teacher).__name__
        raise ValueError(f"{teacher_key}: auto maps block indices by depth, but {model} has no transformer blocks; "
                         f"list {teacher_key} explicitly (module names to hook)")
    if any(isinstance(e, bool) or not isinstance(e, int) for e in student_entries):
        raise ValueError(f"{teacher_key}: auto needs block indices (ints) in {student_key}, got {student_entries}")
    resolve_feature_points(student_entries, student, student_key)  # range errors name the student key
    return map_layers_evenly(student_entries, s_depth, t_depth)


def paper_manifold_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[int], list[int]]:
    """ManifoldKD's default pairs: the first four blocks with the teacher's first four, the last four with its last
    four (DeiT-Tiny 0-3, 8-11 vs CaiT-S24 0-3, 20-23). Pairs a shallow model lacks are left out."""
    s_depth, t_depth = model_depth(student), model_depth(teacher)
    if s_depth is None or t_depth is None:
        model = type(student if s_depth is None else teacher).__name__
        raise ValueError(f"student_layers / teacher_layers: {model} has no transformer blocks for the default layers; "
                         f"list both explicitly (module names to hook)")
    pairs = [(i, i) for i in PAPER_MANIFOLD_LAYERS if -s_depth <= i < s_depth and -t_depth <= i < t_depth]
    return [s for s, _ in pairs], [t for _, t in pairs]


def _grid(grid: tuple[int, int]) -> str:
    return f"{grid[0]}x{grid[1]}"


# ---------------------------------------------------------------------------------------------------------------------
# recipe parameter checks (before any model is built)


def check_layer_list(params: dict, path: str, key: str, allow_auto: bool = False, allow_empty: bool = False) -> None:
    if params.get(key) is None:  # unset: the term's default
        return
    value = params[key]
    if allow_auto and value == "auto":
        return
    valid = "a list of block indices (ints) and/or module names (strings)" + (", or auto" if allow_auto else "")
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ValueError(f"{path}.{key}: expected {valid}, got {value!r}")
    for entry in value:
        check_layer_entry(entry, path, key)


def check_layer_entry(entry: Any, path: str, key: str) -> None:
    if isinstance(entry, bool) or not isinstance(entry, (int, str)) or entry == "":
        raise ValueError(f"{path}.{key}: {entry!r} is not a block index (int) or a module name (string)")


def check_choice(params: dict, path: str, key: str, choices: Sequence[str]) -> None:
    if key in params and params[key] not in choices:
        raise ValueError(f"{path}.{key}: {params[key]!r} is not valid; valid values: {', '.join(choices)}")


def check_number(params: dict, path: str, key: str, low: float, high: float | None = None, *,
                 low_inclusive: bool = True, integer: bool = False) -> None:
    if key not in params:
        return
    value = params[key]
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{path}.{key}: expected {'an integer' if integer else 'a number'} {bound}, got {value!r}")


def check_bool(params: dict, path: str, key: str) -> None:
    if key in params and not isinstance(params[key], bool):
        raise ValueError(f"{path}.{key}: expected true or false, got {params[key]!r}")


# ---------------------------------------------------------------------------------------------------------------------
# the terms


@register_loss_term("vitkd")
class ViTKDTerm(LossTerm):
    """ViTKD (`ViTKDLoss`): the student's shallow layers mimic the teacher's through linear projections; its deep
    layer, after the final norm, regenerates the teacher's deep tokens from a half-masked copy.

    Recipe parameters (defaults = the paper's setting):
        student_layers / teacher_layers: mimicked layers, paired in order (default [0, 1], the first two blocks;
            teacher_layers defaults to the student's entries, or `auto`: same relative depth). Ints are block
            indices, strings module names.
        student_deep_layer / teacher_deep_layer: the generated layer (default -1, the last block).
        deep_normed: read block-index deep layers after the model's final norm (default true, as the paper).
        mask_ratio (0.5), alpha (3e-5), beta (3e-6), reduction (`sum_per_batch` = summed squared error divided by
            the batch size, as the released code; `mean` = per-element means, see `ViTKDLoss` for the equivalent
            alpha/beta), grid_mismatch (`interpolate` | `fail`).

    Shapes: student tokens (B, P_s + N, Ds) or (B, Ds, H, W), teacher tokens (B, P_t + N_t, Dt) or (B, Dt, H_t, W_t)
    -> scalar; logs `vitkd/mimic` and `vitkd/generation` (alpha and beta applied). Default weight 1.0.
    """

    def __init__(self, context: TermContext, student_layers: Sequence[Any] = (0, 1),
                 teacher_layers: Sequence[Any] | str | None = None, student_deep_layer: int | str = -1,
                 teacher_deep_layer: int | str = -1, deep_normed: bool = True, mask_ratio: float = 0.5,
                 alpha: float = 3e-5, beta: float = 3e-6, reduction: str = "sum_per_batch",
                 grid_mismatch: str = "interpolate") -> None:
        super().__init__()
        self.pairs = build_pairs(context, "vitkd", student_layers, teacher_layers, grid_mismatch, normed=deep_normed,
                                 extra=[(student_deep_layer, teacher_deep_layer, "student_deep_layer",
                                         "teacher_deep_layer")])
        grids = {shape.grid for shape in self.pairs.student_shapes}
        if len(grids) > 1:
            raise ValueError(f"student_layers / student_deep_layer: the student points lie on different token grids "
                             f"{sorted(grids)}; ViTKD needs them on one grid (use transformer blocks)")
        self.loss = ViTKDLoss(student_dim=[shape.width for shape in self.pairs.student_shapes],
                              teacher_dim=[shape.width for shape in self.pairs.teacher_shapes],
                              num_mimic_layers=len(self.pairs.student_points) - 1, grid_size=grids.pop(),
                              mask_ratio=mask_ratio, alpha=alpha, beta=beta, reduction=reduction, seed=context.seed)
        self.needs = LossNeeds(**self.pairs.needs())

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_layer_list(params, path, "student_layers", allow_empty=True)
        check_layer_list(params, path, "teacher_layers", allow_auto=True, allow_empty=True)
        for key in ("student_deep_layer", "teacher_deep_layer"):
            if key in params:
                check_layer_entry(params[key], path, key)
        check_bool(params, path, "deep_normed")
        check_number(params, path, "mask_ratio", 0.0, 1.0, low_inclusive=False)
        check_number(params, path, "alpha", 0.0)
        check_number(params, path, "beta", 0.0)
        check_choice(params, path, "reduction", ("sum_per_batch", "mean"))
        check_choice(params, path, "grid_mismatch", GRID_POLICIES)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        value = self.loss(self.pairs.student(student), self.pairs.teacher(teacher))
        self.last_terms = dict(self.loss.last_terms)
        return value


@register_loss_term("manifold")
class ManifoldTerm(LossTerm):
    """ManifoldKD (`ManifoldLoss`): intra-image, inter-image and random-sample patch relation maps of matched layers.

    Recipe parameters (defaults = the paper's setting):
        student_layers / teacher_layers: paired in order. Default (both unset): the first four blocks with the
            teacher's first four and the last four with its last four (DeiT-Tiny 0-3, 8-11 vs CaiT-S24 0-3,
            20-23), leaving out pairs a shallow model lacks. teacher_layers unset with student_layers given: the
            same indices; `auto`: same relative depth. Repeated pairs count once.
        k (192), w_intra (4.0), w_inter (0.1), w_rand (0.2), gather_inter (false: the inter-image term over the
            local batch; true: over the global batch under torch.distributed), grid_mismatch (`interpolate` | `fail`).

    Raw block outputs are compared (no final norm); no projection is needed when widths differ.
    Shapes: student tokens (B, P_s + N, Ds), teacher tokens (B, P_t + N_t, Dt) or feature maps -> scalar; logs
    `manifold/intra`, `manifold/inter`, `manifold/random` (their weights applied). Default weight 1.0.
    """

    def __init__(self, context: TermContext, student_layers: Sequence[Any] | None = None,
                 teacher_layers: Sequence[Any] | str | None = None, k: int = 192, w_intra: float = 4.0,
                 w_inter: float = 0.1, w_rand: float = 0.2, gather_inter: bool = False,
                 grid_mismatch: str = "interpolate") -> None:
        super().__init__()
        if student_layers is None:
            if teacher_layers is not None:
                raise ValueError("student_layers: required when teacher_layers is given (entry i of one is paired "
                                 "with entry i of the other)")
            student_layers, teacher_layers = paper_manifold_pairs(context.student, live_teacher(context, "manifold"))
        pairs = build_pairs(context, "manifold", student_layers, teacher_layers, grid_mismatch)
        # repeated (student, teacher) pairs, e.g. the default first/last four blocks of a 4-block model, count once
        unique = list(dict.fromkeys(zip(pairs.student_points, pairs.teacher_points, pairs.student_shapes,
                                        pairs.teacher_shapes)))
        self.pairs = FeaturePairs([u[0] for u in unique], [u[1] for u in unique], [u[2] for u in unique],
                                  [u[3] for u in unique], grid_mismatch)
        self.loss = ManifoldLoss(k=k, w_intra=w_intra, w_inter=w_inter, w_rand=w_rand, gather_inter=gather_inter,
                                 seed=context.seed)
        self.needs = LossNeeds(**self.pairs.needs())

    @classmethod
    def check_params(cls, params: dict[str, Any], path: str) -> None:
        super().check_params(params, path)
        check_layer_list(params, path, "student_layers")
        check_layer_list(params, path, "teacher_layers", allow_auto=True)
        check_number(params, path, "k", 1, integer=True)
        for key in ("w_intra", "w_inter", "w_rand"):
            check_number(params, path, key, 0.0)
        check_bool(params, path, "gather_inter")
        check_choice(params, path, "grid_mismatch", GRID_POLICIES)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets) -> torch.Tensor:
        value = self.loss(self.pairs.student(student), self.pairs.teacher(teacher))
        self.last_terms = dict(self.loss.last_terms)
        return value
