"""Semantic-segmentation metrics from one confusion matrix accumulated over the whole evaluation set.

For class c, with TP_c the pixels labelled c and predicted c, and the sums over all evaluated pixels (those whose
label is not the ignore index):

    IoU_c     = TP_c / (labelled c + predicted c - TP_c)
    mIoU      = mean of IoU_c over the classes that appear in the labels or the predictions (union > 0)
    pixel_acc = sum_c TP_c / evaluated pixels

Intersections and unions are summed over every image before dividing (not per-batch IoUs averaged), as
mmsegmentation and the ADE20K benchmark compute them. A class neither labelled nor predicted anywhere is left out
of the mean; one predicted but never labelled counts with IoU 0.
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Counts (label, prediction) pixel pairs.

    Args:
        num_classes: C; labels and predictions are 0..C-1.
        ignore_index: label value of pixels that are not evaluated.

    Attributes:
        state: int64 (C, C), `state[label, prediction]` pixel counts. Sum it across processes
            (`torch.distributed.all_reduce(matrix.state)`) before `compute()` to score a sharded evaluation.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.state = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)  # (C, C)

    def reset(self) -> None:
        self.state.zero_()

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: prediction (B, H, W) int class indices, target (B, H, W) int labels or `ignore_index`."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape "
                             f"{tuple(target.shape)}")
        keep = target != self.ignore_index  # (B, H, W)
        labels = target[keep].long()  # (P,) evaluated pixels
        predicted = prediction[keep].long().to(labels.device)  # (P,)
        for name, values in (("target", labels), ("prediction", predicted)):
            outside = (values < 0) | (values >= self.num_classes)  # (P,)
            if outside.any():
                raise ValueError(f"{name} holds values outside the classes 0..{self.num_classes - 1} (ignore index "
                                 f"{self.ignore_index}): {torch.unique(values[outside]).tolist()[:5]}")
        pairs = labels * self.num_classes + predicted  # (P,) row-major index into (C, C)
        counts = torch.bincount(pairs, minlength=self.num_classes ** 2)  # (C * C,)
        self.state += counts.view(self.num_classes, self.num_classes).to(self.state.device)

    def intersection_and_union(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class intersection (C,) and union (C,) pixel counts."""
        intersection = self.state.diagonal()  # (C,)
        union = self.state.sum(dim=1) + self.state.sum(dim=0) - intersection  # (C,) labelled + predicted - both
        return intersection, union

    def compute(self) -> dict[str, float]:
        """{"mIoU", "pixel_acc"} as fractions in [0, 1]; NaN for both when no pixel was evaluated."""
        intersection, union = self.intersection_and_union()
        present = union > 0  # (C,) labelled or predicted somewhere
        evaluated = int(self.state.sum())
        if not evaluated:
            return {"mIoU": float("nan"), "pixel_acc": float("nan")}
        iou = intersection[present].double() / union[present].double()
        return {"mIoU": float(iou.mean()), "pixel_acc": float(intersection.sum()) / evaluated}
