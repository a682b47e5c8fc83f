"""Evaluation: top-1, top-5 and cross-entropy over a loader (reduced over ranks when distributed)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitkd.data.loader import num_classes_of
from vitkd.engine.amp import autocast
from vitkd.engine.distributed import DistributedContext, reduce_sums
from vitkd.errors import ClassCountMismatchError


def check_head_matches_classes(model: nn.Module, dataset, weights: str) -> None:
    """Refuse to evaluate a model whose classifier head has another class count than the dataset (a head with more
    classes would otherwise score silently). Models without a `num_classes` attribute are checked per batch."""
    head = getattr(model, "num_classes", None)
    classes = num_classes_of(dataset)
    if head is not None and int(head) != classes:
        raise ClassCountMismatchError(f"{weights}: the model's head has {head} classes but the dataset has "
                                      f"{classes}; evaluate it on the data it was trained for (or pass the matching "
                                      f"--dataset/--root/--split)")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             context: Optional[DistributedContext] = None, progress: bool = False,
             description: str = "eval") -> dict[str, float]:
    """Returns {"top1": %, "top5": %, "loss": mean CE, "images": count}. DeiT students average their two heads
    in eval mode, as timm does."""
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
        if labels.max().item() >= num_classes:
            raise ValueError(f"the dataset has labels up to {labels.max().item()} but the model's head has "
                             f"{num_classes} classes; check num_classes against the dataset")
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
