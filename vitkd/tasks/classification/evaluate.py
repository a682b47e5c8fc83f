"""Evaluation: top-1, top-5 and cross-entropy over a loader (reduced over ranks when distributed)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkd.engine.amp import autocast
from vitkd.engine.distributed import DistributedContext, reduce_sums
from vitkd.errors import ClassCountMismatchError


def dataset_class_count(source: Any) -> Optional[int]:
    """Number of classes a dataset (or a loader) declares, or `None` if it declares none.

    Looks for a `classes` list or an integer `num_classes` on `source`, its `dataset`, and any dataset that
    dataset wraps through a `dataset` or `base` attribute (torch `Subset`, vitkd's transform wrappers).
    """
    pending: list[Any] = [source]
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


def model_class_count(model: nn.Module) -> Optional[int]:
    """Width of the model's classifier head (`model.num_classes`, timm's convention), or `None` if not declared."""
    num_classes = getattr(model, "num_classes", None)
    return num_classes if isinstance(num_classes, int) else None


def class_count_mismatch(source: str, head_classes: int, dataset_classes: int, *,
                         from_labels: bool = False) -> ClassCountMismatchError:
    """The one error for a head and a dataset that disagree; `from_labels`: the count is implied by a label."""
    dataset = (f"labels up to {dataset_classes - 1}, so at least {dataset_classes} classes" if from_labels
               else f"{dataset_classes} classes")
    return ClassCountMismatchError(
        f"{source}: the model's head has {head_classes} classes but the dataset has {dataset}; evaluate it on the "
        f"data it was trained for (the matching --dataset/--root/--split), or build it with "
        f"num_classes={dataset_classes}")


def check_head_matches_classes(model: nn.Module, dataset: Any, source: str) -> None:
    """Refuse to evaluate a model whose classifier head has another class count than the dataset (or loader)
    declares (a head with more classes would otherwise score silently). `source` names the model in the error.
    Models without a `num_classes` attribute are checked per batch (`check_logits_match_classes`)."""
    head, classes = model_class_count(model), dataset_class_count(dataset)
    if head is not None and classes is not None and head != classes:
        raise class_count_mismatch(source, head, classes)


def check_logits_match_classes(output_classes: int, dataset_classes: Optional[int], largest_label: int,
                               source: str) -> None:
    """The per-batch form of `check_head_matches_classes`: the logits' width against the declared class count (when
    any) and against the batch's largest label."""
    if dataset_classes is not None and dataset_classes != output_classes:
        raise class_count_mismatch(source, output_classes, dataset_classes)
    if largest_label >= output_classes:
        raise class_count_mismatch(source, output_classes, largest_label + 1, from_labels=True)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             context: Optional[DistributedContext] = None, progress: bool = False,
             description: str = "eval", source: str = "the evaluated model") -> dict[str, float]:
    """Returns {"top1": %, "top5": %, "loss": mean CE, "images": count}. DeiT students average their two heads
    in eval mode, as timm does. A label beyond the head raises `ClassCountMismatchError` naming `source`."""
    context = context or DistributedContext(device=device)
    was_training = model.training
    model.eval()
    sums = {"correct1": 0.0, "correct5": 0.0, "loss": 0.0, "images": 0.0}
    num_classes = None
    for batch in tqdm(loader, desc=description, disable=not (progress and context.is_main), leave=False):
        if batch.images.numel() == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()  # (B, C)
        num_classes = logits.shape[1]
        check_logits_match_classes(num_classes, None, int(labels.max().item()), source)
        top = logits.topk(min(5, num_classes), dim=1).indices  # (B, 5)
        hits = top.eq(labels.unsqueeze(1))
        sums["correct1"] += hits[:, 0].sum().item()
        sums["correct5"] += hits.any(dim=1).sum().item()
        sums["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        sums["images"] += labels.numel()
    model.train(was_training)
    sums = reduce_sums(sums, context)
    count = max(sums["images"], 1.0)
    return {"top1": 100.0 * sums["correct1"] / count, "top5": 100.0 * sums["correct5"] / count,
            "loss": sums["loss"] / count, "images": int(sums["images"])}
