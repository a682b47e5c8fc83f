"""Fine-tuning tasks with a distilled student as the backbone: detection, instance and semantic segmentation."""

from vitkd.tasks.downstream.detection import DetectionTask, InstanceSegmentationTask
from vitkd.tasks.downstream.segmentation import SemanticSegmentationTask

__all__ = ["DetectionTask", "InstanceSegmentationTask", "SemanticSegmentationTask"]
