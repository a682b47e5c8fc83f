"""Detection and segmentation data: COCO-format and ADE20K-style datasets, v2 augmentation, batching, and the
bundled digit scenes."""

from vitkd.downstream.data.coco import CocoDataset
from vitkd.downstream.data.collate import SegmentationCollate, detection_collate, segmentation_collate
from vitkd.downstream.data.digit_scenes import DIGIT_SCENES, DigitScenesPaths, dataset_paths, ensure_digit_scenes
from vitkd.downstream.data.semantic import SemanticFolder
from vitkd.downstream.data.transforms import detection_transforms, segmentation_transforms

__all__ = [
    "DIGIT_SCENES", "CocoDataset", "DigitScenesPaths", "SegmentationCollate", "SemanticFolder", "dataset_paths",
    "detection_collate", "detection_transforms", "ensure_digit_scenes", "segmentation_collate",
    "segmentation_transforms",
]
