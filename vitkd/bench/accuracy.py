"""Top-1 / top-5 accuracy of a classifier over an evaluation loader.

The metrics come from the package's one evaluation loop, `vitkd.tasks.classification.evaluate.evaluate` (as in
`vitkd eval` and the trainer), and so do the class-count checks (`check_head_matches_classes` and its per-batch
form, raising `ClassCountMismatchError` naming the model); this module adapts bench loaders and options to them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from vitkd.bench.input_size import model_display_name
from vitkd.bench.runtime import RuntimeOptions, prepare_model
from vitkd.tasks.classification.evaluate import (check_head_matches_classes, check_logits_match_classes,
                                                 dataset_class_count, evaluate, model_class_count)

__all__ = ["Accuracy", "dataset_class_count", "evaluate_accuracy", "model_class_count"]


class Accuracy(NamedTuple):
    """Top-1 and top-5 accuracy in percent (0-100); unpacks as `top1, top5 = evaluate_accuracy(...)`.

    With fewer than 5 classes, "top-5" is top-C (so 100 %).
    """

    top1: float
    top5: float


class _Batch(NamedTuple):
    """The `images` / `labels` view of a batch that `evaluate` reads."""

    images: torch.Tensor  # (B, C, H, W)
    labels: torch.Tensor  # (B,)


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`(images, labels)` from a tuple/list batch `(images, labels, ...)` or an object with those attributes."""
    if hasattr(batch, "images") and hasattr(batch, "labels"):
        return batch.images, batch.labels
    return batch[0], batch[1]


def evaluate_accuracy(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu", *,
                      model_name: str | None = None, options: RuntimeOptions | None = None,
                      progress: bool | None = None) -> Accuracy:
    """Top-1 / top-5 accuracy (percent) of `model` over every batch of `loader`.

    Args:
        model: classifier mapping `(B, C, H, W)` images to `(B, num_classes)` logits; moved in place to `device`.
        loader: yields tuples whose first two items are images `(B, C, H, W)` and integer labels `(B,)` (extra
            items such as sample ids are ignored), or batch objects with `images` and `labels` attributes.
        device: where to evaluate (ignored when `options` is given; `options.device` wins).
        model_name: named in errors; defaults to the timm architecture or class name.
        options: memory format / autocast to evaluate with; default plain fp32 on `device`.
        progress: show a tqdm bar; `None` shows it only on a terminal.

    Raises:
        ClassCountMismatchError: the dataset's class count (declared, or implied by a label) differs from the
            model's head width.
        ValueError: the loader is empty.
    """
    model_name = model_name or model_display_name(model)
    source = f"model {model_name!r}"
    options = options or RuntimeOptions(device=str(device))
    check_head_matches_classes(model, loader, source)
    dataset_classes = dataset_class_count(loader)

    def batches() -> Iterator[_Batch]:
        for batch in loader:
            images, labels = _images_and_labels(batch)
            if labels.numel() == 0:  # every image of the batch was skipped (e.g. corrupt files)
                continue
            yield _Batch(images.contiguous(memory_format=options.memory_format), labels)

    def check_head(module: nn.Module, inputs: Any, logits: Any) -> None:
        """Forward hook: the head's width against the declared classes (for models that declare no `num_classes`);
        labels beyond the head are caught by `evaluate` itself."""
        check_logits_match_classes(logits.shape[-1], dataset_classes, -1, source)

    prepare_model(model, options, allow_compile=False)
    hook = model.register_forward_hook(check_head)
    try:
        metrics = evaluate(model, batches(), options.torch_device, options.amp_dtype,  # type: ignore[arg-type]
                           progress=sys.stderr.isatty() if progress is None else progress,
                           description=f"accuracy {model_name}", source=source)
    finally:
        hook.remove()
    if metrics["images"] == 0:
        raise ValueError(f"evaluation loader for model {model_name!r} yielded no images")
    return Accuracy(top1=metrics["top1"], top5=metrics["top5"])
