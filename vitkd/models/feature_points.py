"""Where a feature loss reads tokens: a transformer block (raw, or after the model's final norm) or a named module.

Recipes name feature points per model as list entries: an int is a block index of ``model.blocks`` (negative counts
from the end), a string is a module name from ``model.named_modules()`` read with a forward hook, for models without
ViT blocks (``features.5`` of the demo's CNN teacher) or for a sub-module of a block (``blocks.3.mlp``)::

    points = resolve_feature_points([0, 1, "features.5"], model, "teacher_layers")
    shapes = probe_feature_shapes(model, points, img_size=224)       # widths and token grids, one small forward
    tokens, grid = patch_tokens(select_output(outputs, points[0]), outputs.grid_size, outputs.num_prefix_tokens)

``patch_tokens`` turns whatever the point produced into patch tokens ``(B, H * W, D)`` on an ``(H, W)`` grid:

* ``(B, P + H * W, D)`` block tokens lose their ``P`` prefix tokens (class, distillation, registers). ``P`` is read
  off the tensor (tokens minus grid cells) and must be 0 or the model's ``num_prefix_tokens``: CaiT reports one
  prefix token but its ``blocks`` never carry it (the class token joins later, in the class-attention blocks).
* ``(B, C, H, W)`` feature maps (conv stages) become ``(B, H * W, C)`` tokens, row-major like ViT patches.
* ``(B, H, W, C)`` maps (channels-last stages, e.g. Swin's) must say so: name the module with the suffix ``:nhwc``
  (``layers.2:nhwc``). A 4-D output cannot tell its layout by itself, and reading it the wrong way round would
  silently give meaningless tokens.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vitkd.models.layer_mapping import resolve_layer_indices

#: suffix of a module name whose 4-D output is channels-last, (B, H, W, C)
CHANNELS_LAST_SUFFIX = ":nhwc"

__all__ = ["FeaturePoint", "FeatureShape", "patch_tokens", "probe_feature_shapes", "resolve_feature_points",
           "select_output", "tap_requests"]


@dataclass(frozen=True)
class FeaturePoint:
    """One place to read tokens from: ``block`` (absolute index into ``model.blocks``) or ``module`` (a name).

    ``channels_last``: the module returns ``(B, H, W, C)`` maps rather than ``(B, C, H, W)``.
    """

    block: int | None = None
    module: str | None = None
    normed: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        if self.module is not None:
            return f"module '{self.module}'" + (" (NHWC)" if self.channels_last else "")
        return f"block {self.block}" + (" (after the final norm)" if self.normed else "")


@dataclass(frozen=True)
class FeatureShape:
    """What a feature point yields for the training input size: token width ``D`` and patch grid ``(H, W)``."""

    width: int
    grid: tuple[int, int]


def model_depth(model: nn.Module) -> int | None:
    """Number of transformer blocks (``len(model.blocks)``), ``None`` for models without them."""
    blocks = getattr(model, "blocks", None)
    return len(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else None


def resolve_feature_points(entries: Sequence[Any], model: nn.Module, key: str, normed: bool = False
                           ) -> list[FeaturePoint]:
    """Validate recipe entries against ``model`` and turn them into feature points.

    Args:
        entries: ints (block indices, negative allowed) and/or strings (module names; the suffix ``:nhwc`` marks a
            module whose 4-D output is ``(B, H, W, C)``).
        model: the model the points belong to.
        key: the recipe key the entries came from, used in every error (e.g. ``"teacher_layers"``).
        normed: read int entries after the model's final norm (``model.norm``); ignored for module names.

    Raises:
        ValueError: naming ``key``, the bad entry and what is valid: the index range for the model's depth, or
            close module names (the top-level modules when nothing is close).
    """
    who = type(model).__name__
    depth = model_depth(model)
    modules = dict(model.named_modules())
    points = []
    for entry in entries:
        if isinstance(entry, str):
            channels_last = entry.lower().endswith(CHANNELS_LAST_SUFFIX)
            if channels_last:
                entry = entry[: -len(CHANNELS_LAST_SUFFIX)]
            if not entry or entry not in modules:
                close = difflib.get_close_matches(entry, [n for n in modules if n], n=5, cutoff=0.5)
                top_level = [n for n in modules if n and "." not in n]
                hint = f"close matches: {close}" if close else f"top-level modules: {top_level}"
                raise ValueError(f"{key}: {who} has no module named {entry!r} to hook; {hint}")
            points.append(FeaturePoint(module=entry, channels_last=channels_last))
        elif isinstance(entry, int) and not isinstance(entry, bool):
            if depth is None:
                top_level = [n for n in modules if n and "." not in n]
                raise ValueError(f"{key}: {who} has no transformer blocks to take block index {entry} from; name "
                                 f"modules to hook instead (top-level modules: {top_level})")
            if normed and not isinstance(getattr(model, "norm", None), nn.Module):
                raise ValueError(f"{key}: {who} has no final norm (`norm`) to apply to block {entry}")
            (block,) = resolve_layer_indices([entry], depth, key)
            points.append(FeaturePoint(block=block, normed=normed))
        else:
            raise ValueError(f"{key}: entry {entry!r} must be a block index (int) or a module name (string)")
    return points


def tap_requests(points: Sequence[FeaturePoint]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """``(raw block indices, normed block indices, module names)`` to ask the tapped forward for, sorted, unique."""
    raw = sorted({p.block for p in points if p.block is not None and not p.normed})
    normed = sorted({p.block for p in points if p.block is not None and p.normed})
    hooks = sorted({p.module for p in points if p.module is not None})
    return tuple(raw), tuple(normed), tuple(hooks)


def select_output(outputs: Any, point: FeaturePoint) -> Any:
    """The tensor a point refers to in a tapped forward's result (``TappedOutput``, ``StudentOutputs`` or
    ``TeacherOutputs``: anything with ``tokens``, ``normed_tokens`` and ``hooked``)."""
    if point.module is not None:
        store, key, kind = outputs.hooked, point.module, "hooks"
    else:
        store, key = (outputs.normed_tokens, point.block) if point.normed else (outputs.tokens, point.block)
        kind = "normed layers" if point.normed else "layers"
    if key not in store:
        raise KeyError(f"{point.describe()} was not tapped in this forward (tapped {kind}: {sorted(store)}); the "
                       f"loss term's needs and the trainer's tap requests disagree")
    return store[key]


def patch_tokens(output: Any, grid_size: tuple[int, int] | None, num_prefix_tokens: int, where: str = "feature",
                 channels_last: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch tokens ``(B, H * W, D)`` and their grid ``(H, W)`` from a tapped output.

    Args:
        output: ``(B, P + H * W, D)`` tokens on the model's patch grid, or a ``(B, C, H, W)`` feature map
            (``(B, H, W, C)`` with ``channels_last``).
        grid_size: the model's patch grid ``(H, W)`` for this input (used for token outputs).
        num_prefix_tokens: the model's prefix-token count; token outputs carry either that many or none.
        where: names the point in errors (e.g. ``"teacher module 'features.5'"``).
        channels_last: a 4-D output is ``(B, H, W, C)`` (the point was named with ``:nhwc``).
    """
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"{where} returned {type(output).__name__}, not a tensor; hook a module that returns a "
                         f"(B, N, D) or (B, C, H, W) tensor")
    if output.dim() == 4 and channels_last:  # (B, H, W, C) feature map -> (B, H * W, C) tokens
        return rearrange(output, "b h w c -> b (h w) c"), (int(output.shape[1]), int(output.shape[2]))
    if output.dim() == 4:  # (B, C, H, W) feature map -> (B, H * W, C) tokens
        return rearrange(output, "b c h w -> b (h w) c"), (int(output.shape[2]), int(output.shape[3]))
    if output.dim() != 3:
        raise ValueError(f"{where} returned a tensor of shape {tuple(output.shape)}; expected (B, N, D) tokens or a "
                         f"(B, C, H, W) feature map")
    grid = tuple(int(s) for s in (grid_size or (0, 0)))
    cells = grid[0] * grid[1]
    prefix = output.shape[1] - cells
    if cells <= 0 or prefix not in (0, num_prefix_tokens):
        raise ValueError(f"{where} returned {output.shape[1]} tokens, which is neither the {cells} cells of the "
                         f"patch grid {grid} nor those plus the model's {num_prefix_tokens} prefix tokens")
    return output[:, prefix:], grid  # (B, H * W, D), prefix tokens dropped


@torch.no_grad()
def probe_feature_shapes(model: nn.Module, points: Sequence[FeaturePoint], img_size: int, who: str = "model"
                         ) -> list[FeatureShape]:
    """Widths and token grids of ``points`` for ``(1, 3, img_size, img_size)`` inputs, from one eval-mode forward
    without gradients (the model's train/eval mode is restored). Lets loss terms size projections and check grids
    before training starts, for block and hooked points alike."""
    from vitkd.models.taps import extract_features

    raw, normed, hooks = tap_requests(points)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        tapped = extract_features(model, torch.zeros(1, 3, img_size, img_size, device=device), list(raw),
                                  normed_layers=list(normed), hooks=list(hooks))
    finally:
        model.train(was_training)
    shapes = []
    for point in points:
        tokens, grid = patch_tokens(select_output(tapped, point), tapped.grid_size, tapped.num_prefix_tokens,
                                    f"{who} {point.describe()}", point.channels_last)
        shapes.append(FeatureShape(width=int(tokens.shape[-1]), grid=grid))
    return shapes
