"""Choosing which student layer learns from which teacher layer, and aligning their token grids.

Layer indices follow Python's convention: ``0`` is the first transformer block, ``-1`` the last. Everything that
takes indices resolves them once, here, so error messages look the same everywhere:
``"student: layer index 14 is out of range for depth 12 (valid: -12..11)"``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resolve_layer_indices", "map_layers_evenly", "resolve_layer_pairs", "align_token_grid"]


def resolve_layer_indices(indices: Sequence[int], depth: int, who: str) -> list[int]:
    """Turn possibly negative layer indices into absolute ones in ``[0, depth)``, keeping their order.

    Args:
        indices: layer (block) indices; negative ones count from the end (``-1`` is the last block).
        depth: number of blocks of the model.
        who: name used in error messages, e.g. ``"student"`` or ``"teacher (vit_base_patch16_224)"``.

    Raises:
        ValueError: an index is not an int, or lies outside ``[-depth, depth - 1]``; the message names ``who``,
            the index and the valid range.
    """
    if depth <= 0:
        raise ValueError(f"{who}: depth must be positive to select layers, got {depth}")
    resolved = []
    for index in indices:
        # bool is an int subclass; `True` as a layer index is always a mistake.
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"{who}: layer index {index!r} must be an int (valid: {-depth}..{depth - 1})")
        if not -depth <= index < depth:
            raise ValueError(
                f"{who}: layer index {index} is out of range for depth {depth} (valid: {-depth}..{depth - 1})")
        resolved.append(index % depth)
    return resolved


def map_layers_evenly(student_layers: Sequence[int], student_depth: int, teacher_depth: int) -> list[int]:
    """Pair each student layer with the teacher layer at the same relative depth.

    Student layer ``i`` (0-based, after resolving negatives) maps to teacher layer
    ``round((i + 1) * teacher_depth / student_depth) - 1``, so the last student block always meets the last teacher
    block. Halves round up (computed in integers, no float surprises); a student deeper than its teacher maps its
    first layers to teacher layer 0 rather than below it. Example: student depth 12, teacher depth 24:
    ``[0, 5, 11] -> [1, 11, 23]``.

    Returns:
        Absolute teacher layer indices, one per student layer, in the same order.
    """
    resolved = resolve_layer_indices(student_layers, student_depth, "student")
    if teacher_depth <= 0:
        raise ValueError(f"teacher: depth must be positive to map layers onto, got {teacher_depth}")
    # round-half-up of (i + 1) * T / S without floats: floor(((i + 1) * 2T + S) / 2S)
    return [max(0, ((i + 1) * 2 * teacher_depth + student_depth) // (2 * student_depth) - 1) for i in resolved]


def map_layers_uniformly(student_layers: Sequence[int], student_depth: int, teacher_depth: int) -> list[int]:
    """TinyBERT's uniform map: student block ``i`` -> teacher block ``(i + 1) * k - 1``, ``k = T / S``.

    Example: a 4-block student under a 12-block teacher (k = 3): ``[0, 1, 2, 3] -> [2, 5, 8, 11]``.
    Raises ValueError when ``teacher_depth`` is not a multiple of ``student_depth``.
    """
    if teacher_depth % student_depth:
        raise ValueError(f"teacher_layers: uniform maps student block i to teacher block (i + 1) * k - 1 with "
                         f"k = teacher depth / student depth, but {teacher_depth} / {student_depth} is not whole; "
                         f"use teacher_layers: auto (same relative depth, rounded) or list the blocks")
    k = teacher_depth // student_depth
    return [(i + 1) * k - 1 for i in resolve_layer_indices(list(student_layers), student_depth, "student_layers")]


def resolve_layer_pairs(pairs: Sequence[tuple[int, int]], student_depth: int, teacher_depth: int
                        ) -> list[tuple[int, int]]:
    """Validate explicit ``(student_layer, teacher_layer)`` pairs and resolve negative indices on both sides.

    Example: ``resolve_layer_pairs([(0, 0), (-1, -1)], 12, 24) == [(0, 0), (11, 23)]``.
    """
    pairs = list(pairs)
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"layer pair {pair!r} must be (student_layer, teacher_layer)")
    student = resolve_layer_indices([p[0] for p in pairs], student_depth, "student")
    teacher = resolve_layer_indices([p[1] for p in pairs], teacher_depth, "teacher")
    return list(zip(student, teacher))


def align_token_grid(tokens: torch.Tensor, from_grid: tuple[int, int], to_grid: tuple[int, int],
                     mode: str = "interpolate") -> torch.Tensor:
    """Resample patch tokens from one token grid to another (e.g. a patch-16 student onto a patch-14 teacher).

    Args:
        tokens: ``(B, N, D)`` patch tokens only (no class/distillation tokens; see ``taps.split_prefix``),
            row-major over a ``from_grid = (H, W)`` grid, ``N == H * W``.
        from_grid: the ``(H, W)`` grid ``tokens`` lie on.
        to_grid: the ``(H', W')`` grid wanted.
        mode: ``"interpolate"`` resamples bilinearly (``align_corners=False``); ``"error"`` refuses any mismatch.

    Returns:
        ``(B, H' * W', D)`` tokens; the input itself when the grids already agree.

    Raises:
        ValueError: ``N`` does not match ``from_grid``, an unknown ``mode``, or grids differ under ``mode="error"``.
    """
    if mode not in ("interpolate", "error"):
        raise ValueError(f"align_token_grid: mode must be 'interpolate' or 'error', got {mode!r}")
    from_grid, to_grid = tuple(from_grid), tuple(to_grid)
    if tokens.dim() != 3:
        raise ValueError(f"align_token_grid: expected tokens of shape (B, N, D), got {tuple(tokens.shape)}")
    B, N, D = tokens.shape
    if N != from_grid[0] * from_grid[1]:
        raise ValueError(
            f"align_token_grid: {N} tokens do not fill the source grid {from_grid} ({from_grid[0] * from_grid[1]} "
            f"tokens); strip class/distillation tokens first (vitkd.models.taps.split_prefix)")
    if from_grid == to_grid:
        return tokens
    if mode == "error":
        raise ValueError(
            f"token grids differ: student/source grid {from_grid} vs teacher/target grid {to_grid}; use the same "
            f"image and patch size, or mode='interpolate' to resample the tokens")
    grid = tokens.transpose(1, 2).reshape(B, D, from_grid[0], from_grid[1])  # (B, D, H, W)
    grid = F.interpolate(grid, size=to_grid, mode="bilinear", align_corners=False)  # (B, D, H', W')
    return grid.flatten(2).transpose(1, 2)  # (B, H' * W', D)
