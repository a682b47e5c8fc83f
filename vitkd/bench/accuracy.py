"""Top-1 / top-5 accuracy of a classifier over an evaluation loader.

The metrics come from the package's one evaluation loop, `vitkd.tasks.classification.evaluate.evaluate` (as in
`vitkd eval` and the trainer); this module adapts bench loaders and options to it and adds the class-count checks
that name the model (`ClassCountMismatchError`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from vitkd.bench.input_size import model_display_name
from vitkd.bench.runtime import RuntimeOptions, prepare_model
from vitkd.errors import ClassCountMismatchError

__all__ = ["Accuracy", "dataset_class_count", "evaluate_accuracy", "model_class_count"]


class Accuracy(NamedTuple):
    """Top-1 and top-5 accuracy in percent (0-100); unpacks as `top1, top5 = evaluate_accuracy(...)`.

    With fewer than 5 classes, "top-5" is top-C (so 100 %).
    """

    top1: float
    top5: float


def dataset_class_count(loader: Iterable[Any]) -> int | None:
    """Number of classes the loader's dataset declares, or `None` if it declares none.

    Looks for a `classes` list or an integer `num_classes` on the loader, its `dataset`, and any dataset that
    dataset wraps through a `dataset` or `base` attribute (torch `Subset`, vitkd's transform wrappers).
    """
    pending: list[Any] = [loader]
    visited: set[int] = set()
    while pending:
        owner = pending.pop(0)
        if owner is None or id(owner) in visited:
            continue
        visited.add(id(owner))
        classes = getattr(owner, "classes", None)
        if classes is not None:
            return len(classes)
        num_classes = getattr(owner, "num_classes", None)
        if isinstance(num_classes, int):
            return num_classes
        pending.extend([getattr(owner, "dataset", None), getattr(owner, "base", None)])
    return None


class _Batch(NamedTuple):
    """The `images` / `labels` view of a batch that `evaluate` reads."""

    images: torch.Tensor  # (B, C, H, W)
    labels: torch.Tensor  # (B,)


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`(images, labels)` from a tuple/list batch `(images, labels, ...)` or an object with those attributes."""
    if hasattr(batch, "images") and hasattr(batch, "labels"):
        return batch.images, batch.labels
    return batch[0], batch[1]


def model_class_count(model: nn.Module) -> int | None:
    """Width of the model's classifier head (`model.num_classes`, timm's convention), or `None` if not declared."""
    num_classes = getattr(model, "num_classes", None)
    return num_classes if isinstance(num_classes, int) else None


def _class_mismatch(model_name: str, model_classes: int, dataset_classes: int, *,
                    from_labels: bool = False) -> ClassCountMismatchError:
    dataset_description = (f"labels up to {dataset_classes - 1}, so at least {dataset_classes} classes" if from_labels
                           else f"{dataset_classes} classes")
    return ClassCountMismatchError(
        f"model {model_name!r} has {model_classes} output classes but the evaluation dataset has "
        f"{dataset_description}; build the model with num_classes={dataset_classes} or evaluate on a matching dataset"
    )


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
    # Imported here: importing `vitkd.tasks` loads the task registry (training, caching), which FLOP counting,
    # latency and the rest of vitkd.bench do not need.
    from vitkd.tasks.classification.evaluate import evaluate

    model_name = model_name or model_display_name(model)
    options = options or RuntimeOptions(device=str(device))
    dataset_classes = dataset_class_count(loader)
    model_classes = model_class_count(model)
    if model_classes is not None and dataset_classes is not None and model_classes != dataset_classes:
        raise _class_mismatch(model_name, model_classes, dataset_classes)
    largest_label = -1  # of the batch being evaluated

    def batches() -> Iterator[_Batch]:
        nonlocal largest_label
        for batch in loader:
            images, labels = _images_and_labels(batch)
            if labels.numel() == 0:  # every image of the batch was skipped (e.g. corrupt files)
                continue
            largest_label = int(labels.max())
            yield _Batch(images.contiguous(memory_format=options.memory_format), labels)

    def check_head(module: nn.Module, inputs: Any, logits: Any) -> None:
        """Forward hook: the head's width against the dataset, before `evaluate` scores the batch."""
        output_classes = logits.shape[-1]
        if dataset_classes is not None and dataset_classes != output_classes:
            raise _class_mismatch(model_name, output_classes, dataset_classes)
        if largest_label >= output_classes:
            raise _class_mismatch(model_name, output_classes, largest_label + 1, from_labels=True)

    prepare_model(model, options, allow_compile=False)
    hook = model.register_forward_hook(check_head)
    try:
        metrics = evaluate(model, batches(), options.torch_device, options.amp_dtype,  # type: ignore[arg-type]
                           progress=sys.stderr.isatty() if progress is None else progress,
                           description=f"accuracy {model_name}")
    finally:
        hook.remove()
    if metrics["images"] == 0:
        raise ValueError(f"evaluation loader for model {model_name!r} yielded no images")
    return Accuracy(top1=metrics["top1"], top5=metrics["top5"])
