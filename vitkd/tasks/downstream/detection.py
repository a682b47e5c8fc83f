"""Object detection (torchvision Faster R-CNN) and instance segmentation (Mask R-CNN) with a distilled student as
the backbone, on COCO-format data (or the bundled digit scenes).

One step: images and targets -> the detector in training mode -> its named losses (RPN objectness and box
regression, RoI classification and box regression, and for Mask R-CNN the mask loss), summed. Evaluation: the
detector's predictions at each image's own size, turned into COCO results and scored by pycocotools' COCOeval
against the annotation file (box AP, and mask AP for instance segmentation; AP, AP50, AP75, APs, APm, APl).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from tqdm import tqdm

from vitkd.config import DETECTOR_SAMPLING_KEYS, Recipe
from vitkd.downstream.data import CocoDataset, DigitScenesPaths, dataset_paths, detection_collate
from vitkd.downstream.data.digit_scenes import DIGIT_SCENES
from vitkd.downstream.data.transforms import detection_transforms
from vitkd.downstream.heads import build_detector
from vitkd.downstream.metrics import COCO_METRIC_NAMES, coco_metrics, to_coco_results
from vitkd.engine.amp import autocast
from vitkd.engine.distributed import DistributedContext, gather_objects
from vitkd.engine.task import TOTAL_LOSS, StepResult
from vitkd.errors import DatasetError
from vitkd.tasks.downstream.common import DownstreamTask, optional_path, to_device
from vitkd.tasks.downstream.seeded_pairs import SeededPairDataset

#: The target entries torchvision's detectors read.
TARGET_KEYS = ("boxes", "labels", "masks")


class DetectionTask(DownstreamTask):
    """Faster R-CNN fine-tuning (`task: detection`); key metric: box AP (COCO AP@[.5:.95], as a fraction)."""

    masks = False
    key_metric = "box_AP"
    higher_is_better = True

    def __init__(self, recipe: Recipe, context: DistributedContext) -> None:
        super().__init__(recipe, context)
        self._build_data()
        backbone = self.build_backbone()
        head, size = self.config.head, self.config.data.size
        self.model = build_detector(
            backbone, self.num_classes, masks=self.masks, anchor_sizes=head.anchor_sizes,
            aspect_ratios=head.aspect_ratios, min_size=head.min_size or size, max_size=head.max_size or size,
            image_mean=self.student.mean, image_std=self.student.std, box_head_width=head.box_head_width,
            mask_head_width=head.mask_head_width, box_head=head.box_head, rpn_convs=head.rpn_convs,
            conv_norm=head.conv_norm, box_detections_per_img=head.detections_per_img,
            **{name: getattr(head, name) for name in DETECTOR_SAMPLING_KEYS}).to(self.device)
        self.trainable = self.model

    def _build_data(self) -> None:
        data = self.config.data
        if data.dataset == DIGIT_SCENES:
            paths: DigitScenesPaths = dataset_paths(DIGIT_SCENES, data_dir=data.root)
            train = (paths.coco_images("train"), paths.coco_annotations("train"))
            val = (paths.coco_images("val"), paths.coco_annotations("val"))
        else:
            train = (optional_path(data.root, data.train_images), optional_path(data.root, data.train_annotations))
            val = (optional_path(data.root, data.val_images), optional_path(data.root, data.val_annotations))
        transforms = detection_transforms(True, data.size, data.scale_range, data.hflip)
        base = CocoDataset(*train, with_masks=self.masks)
        self.train_dataset = SeededPairDataset(base, transforms, self.recipe.train.seed)
        self.val_dataset = CocoDataset(*val, transforms=detection_transforms(False, data.size), with_masks=False)
        self.num_classes = base.num_classes
        self.class_names = base.category_names
        if self.val_dataset.category_names != base.category_names:
            raise DatasetError(f"{val[1]} lists the categories {self.val_dataset.category_names}, but the training "
                               f"file {train[1]} lists {base.category_names}; both splits need the same categories")
        self.build_loaders(detection_collate, detection_collate)

    def training_step(self, trainable: nn.Module, batch: Any, epoch: int) -> StepResult:
        images, targets = batch
        images = [to_device(image, self.device) for image in images]  # each (3, S, S)
        targets = [{key: to_device(target[key], self.device) for key in TARGET_KEYS if key in target}
                   for target in targets]
        losses = trainable(images, targets)  # name -> scalar
        total = sum(losses.values())
        return StepResult(losses={TOTAL_LOSS: total, **{name: value.detach() for name, value in losses.items()}},
                          num_samples=len(images))

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        dataset = self.val_dataset
        results: dict[str, list[dict]] = {"bbox": [], "segm": []}
        image_ids: list[int] = []
        for images, targets in tqdm(self.val_loader, desc="eval", leave=False,
                                    disable=not (self.recipe.train.progress and self.context.is_main)):
            with autocast(self.device, amp_dtype):
                outputs = model([to_device(image, self.device) for image in images])
            for output, target in zip(outputs, targets):
                image_ids.append(int(target["image_id"]))
                for kind, entries in to_coco_results(output, target["image_id"],
                                                     dataset.label_to_category_id).items():
                    results[kind].extend(entries)
        model.train(was_training)
        gathered = gather_objects((results, image_ids), self.context)
        all_ids = sorted(image_id for _, ids in gathered for image_id in ids)
        metrics: dict[str, float] = {}
        for kind, prefix in self.scored_kinds():
            predictions = [entry for part, _ in gathered for entry in part[kind]]
            scores = coco_metrics(dataset.coco, predictions, kind, image_ids=all_ids)
            metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
        return metrics

    def scored_kinds(self) -> list[tuple[str, str]]:
        """(COCOeval iou type, metric prefix) pairs this task reports."""
        return [("bbox", "box")]

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        return " ".join(f"val {prefix} AP {100 * metrics[f'{prefix}_AP']:.1f} "
                        f"AP50 {100 * metrics[f'{prefix}_AP50']:.1f}" for _, prefix in self.scored_kinds())

    def summary_metrics(self) -> list[str]:
        return [f"{prefix}_{name}" for _, prefix in self.scored_kinds() for name in COCO_METRIC_NAMES]


class InstanceSegmentationTask(DetectionTask):
    """Mask R-CNN fine-tuning (`task: instance_segmentation`); key metric: mask AP (box AP reported too)."""

    masks = True
    key_metric = "mask_AP"

    def scored_kinds(self) -> list[tuple[str, str]]:
        return [("bbox", "box"), ("segm", "mask")]
