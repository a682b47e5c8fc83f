"""Semantic segmentation with a distilled student as the backbone: a Semantic FPN head on its pyramid, or a linear
head on a plain ViT's tokens, on ADE20K-style folders (or the bundled digit scenes).

One step: images (B, 3, S, S) and label maps (B, S, S) -> logits at the input size -> cross-entropy over the labelled
pixels. Evaluation: each validation image at its own size (a batch padded to its largest image, the padding
ignored), the arg-max class per pixel accumulated into one confusion matrix over the whole split (summed over
processes), then mIoU (classes absent from both prediction and ground truth left out) and pixel accuracy. Each
image in one forward (`downstream.inference.mode: whole`) or in overlapping crop-sized windows (`slide`); no
multi-scale or flip testing.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vitkd.config import Recipe
from vitkd.downstream.data import SegmentationCollate, SemanticFolder, dataset_paths
from vitkd.downstream.data.digit_scenes import DIGIT_SCENES
from vitkd.downstream.data.transforms import segmentation_transforms
from vitkd.downstream.heads import SegmentationCrossEntropy, build_segmenter, sliding_window_logits
from vitkd.downstream.metrics import ConfusionMatrix
from vitkd.engine.amp import autocast
from vitkd.engine.distributed import DistributedContext, mean_over_processes
from vitkd.engine.task import TOTAL_LOSS, StepResult
from vitkd.tasks.downstream.common import DownstreamTask
from vitkd.tasks.downstream.seeded_pairs import SeededPairDataset


class SemanticSegmentationTask(DownstreamTask):
    """`task: semantic_segmentation`; key metric: mIoU (a fraction)."""

    key_metric = "mIoU"
    higher_is_better = True

    def __init__(self, recipe: Recipe, context: DistributedContext) -> None:
        super().__init__(recipe, context)
        self._build_data()
        head = self.config.head
        self.model = build_segmenter(self.build_backbone(), self.num_classes, head.name, self.student.mean,
                                     self.student.std, head.channels, head.dropout).to(self.device)
        self.trainable = self.model
        self.loss = SegmentationCrossEntropy(self.config.data.ignore_index)

    def _build_data(self) -> None:
        data = self.config.data
        root, train_split, val_split = data.root, data.train_split, data.val_split
        if data.dataset == DIGIT_SCENES:
            paths = dataset_paths(DIGIT_SCENES, data_dir=data.root)
            root, (train_split, val_split) = paths.semantic_root, paths.splits
        options = dict(reduce_zero_label=data.reduce_zero_label, ignore_index=data.ignore_index)
        base = SemanticFolder(root, train_split, num_classes=data.num_classes, **options)
        self.num_classes = base.num_classes
        self.class_names = [str(index) for index in range(self.num_classes)]
        transforms = segmentation_transforms(True, data.size, data.scale_range, data.hflip, data.ignore_index)
        self.train_dataset = SeededPairDataset(base, transforms, self.recipe.train.seed)
        self.val_dataset = SemanticFolder(root, val_split, transforms=segmentation_transforms(False, data.size),
                                          num_classes=self.num_classes, **options)
        collate = SegmentationCollate(data.ignore_index)
        self.build_loaders(collate, collate)

    def training_step(self, trainable: nn.Module, batch: Any, epoch: int) -> StepResult:
        images, masks = batch
        images = images.to(self.device, non_blocking=True)  # (B, 3, S, S)
        masks = masks.to(self.device, non_blocking=True)  # (B, S, S)
        # DDP: the mean labelled-pixel count over processes, so each process's share of ignored pixels cannot tilt
        # the averaged gradient (one process: the batch's own count)
        normaliser = mean_over_processes(self.loss.labelled_pixels(masks), self.context)
        loss = self.loss(trainable(images), masks, normaliser)
        return StepResult(losses={TOTAL_LOSS: loss}, num_samples=images.shape[0])

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        confusion = ConfusionMatrix(self.num_classes, self.config.data.ignore_index, self.device)
        for images, masks in tqdm(self.val_loader, desc="eval", leave=False,
                                  disable=not (self.recipe.train.progress and self.context.is_main)):
            images = images.to(self.device, non_blocking=True)
            with autocast(self.device, amp_dtype):
                if self.config.inference.mode == "slide":
                    logits = sliding_window_logits(model, images, *self.config.slide_window())  # (B, C, H, W)
                else:
                    logits = model(images)  # (B, C, H, W)
            confusion.update(logits.argmax(dim=1), masks.to(self.device))
        model.train(was_training)
        if self.context.enabled and dist.is_initialized():
            dist.all_reduce(confusion.state)  # one confusion matrix over every process's shard
        return confusion.compute()

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        return f"val mIoU {100 * metrics['mIoU']:.2f}% pixel acc {100 * metrics['pixel_acc']:.2f}%"

    def summary_metrics(self) -> list[str]:
        return ["mIoU", "pixel_acc"]
