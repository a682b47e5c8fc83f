"""Downstream metrics: COCO box and mask AP (pycocotools COCOeval) and mIoU / pixel accuracy."""

from vitkd.downstream.metrics.coco_eval import COCO_METRIC_NAMES, coco_metrics, to_coco_results
from vitkd.downstream.metrics.miou import ConfusionMatrix

__all__ = ["COCO_METRIC_NAMES", "ConfusionMatrix", "coco_metrics", "to_coco_results"]
