"""Input sizes: the model's own size, validation, and a probe forward that turns a model's failure into a clear error.

An input size is always `(C, H, W)` (channels, height, width in pixels), without the batch dimension.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vitkd.errors import InputSizeError

__all__ = ["InputSize", "model_display_name", "model_device", "eval_mode", "default_input_size",
           "normalize_input_size", "check_input_size"]

InputSize = tuple[int, int, int]

_FALLBACK_INPUT_SIZE: InputSize = (3, 224, 224)


def model_display_name(model: nn.Module) -> str:
    """The timm architecture name when the model carries a timm `pretrained_cfg`, else its class name."""
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(pretrained_cfg.get("architecture") or type(model).__name__)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (dropout off) inside the block; its train/eval mode is restored after, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def default_input_size(model: nn.Module) -> InputSize:
    """The `(C, H, W)` input the model was built for.

    A ViT's patch embedding knows the size it was actually built with (`img_size=32` in the model kwargs), which
    timm's `pretrained_cfg` does not (it keeps the registered 224), so the patch embedding wins when present.
    """
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        projection = getattr(patch_embed, "proj", None)
        channels = int(getattr(projection, "in_channels", 3))
        return (channels, *_as_pair(img_size))
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    if pretrained_cfg.get("input_size"):
        channels, height, width = pretrained_cfg["input_size"]
        return int(channels), int(height), int(width)
    return _FALLBACK_INPUT_SIZE


def normalize_input_size(input_size: int | Sequence[int]) -> InputSize:
    """Accept `S` (3×S×S), `(H, W)` (3 channels) or `(C, H, W)`; reject anything else or non-positive sizes."""
    if isinstance(input_size, int):
        values: tuple[int, ...] = (3, input_size, input_size)
    else:
        values = tuple(input_size)
        if len(values) == 2:
            values = (3, *values)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise InputSizeError(
            f"input size {input_size!r} is not valid: give (C, H, W) with positive integers, e.g. (3, 224, 224)"
        )
    return values  # type: ignore[return-value]


def _check_patch_divisibility(model: nn.Module, input_size: InputSize, model_name: str) -> None:
    """A ViT patch embedding silently drops the pixels past the last full patch; refuse such sizes instead."""
    patch_embed = getattr(model, "patch_embed", None)
    patch_size = getattr(patch_embed, "patch_size", None)
    if patch_size is None or getattr(patch_embed, "dynamic_img_pad", False):
        return
    patch_height, patch_width = _as_pair(patch_size)
    _, height, width = input_size
    if height % patch_height or width % patch_width:
        raise InputSizeError(
            f"model {model_name!r} cannot run on input size {input_size}: height and width must be multiples of its "
            f"patch size {patch_height}x{patch_width}"
        )


def _check_minimum_size(model: nn.Module, input_size: InputSize, model_name: str) -> None:
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    minimum = pretrained_cfg.get("min_input_size")
    if minimum and (input_size[1] < minimum[1] or input_size[2] < minimum[2]):
        raise InputSizeError(
            f"model {model_name!r} cannot run on input size {input_size}: its smallest input is {tuple(minimum)}"
        )


def check_input_size(model: nn.Module, input_size: InputSize, model_name: str | None = None) -> None:
    """Fail early, with the model and size named, if `model` cannot take a `(1, *input_size)` batch.

    Runs one batch-1 forward under `torch.inference_mode()` on the model's device. Any exception from the model
    (timm's size assertions, a convolution kernel larger than its input, ...) is re-raised as `InputSizeError`,
    chained to the original.
    """
    model_name = model_name or model_display_name(model)
    input_size = normalize_input_size(input_size)
    _check_patch_divisibility(model, input_size, model_name)
    _check_minimum_size(model, input_size, model_name)
    probe = torch.zeros(1, *input_size, device=model_device(model))
    try:
        with eval_mode(model), torch.inference_mode():
            model(probe)
    except (AssertionError, RuntimeError, ValueError, IndexError) as error:
        expected = default_input_size(model)
        raise InputSizeError(
            f"model {model_name!r} cannot run on input size {input_size} (its own input size is {expected}): {error}"
        ) from error
