"""Heads on downstream backbones: torchvision's Faster/Mask R-CNN, a Semantic FPN head, a linear token head,
sliding-window inference and the segmentation loss."""

from vitkd.downstream.heads.detection import (LayerDecayFasterRCNN, LayerDecayMaskRCNN, build_detector,
                                              default_anchor_sizes)
from vitkd.downstream.heads.linear import LinearTokenHead
from vitkd.downstream.heads.losses import SegmentationCrossEntropy
from vitkd.downstream.heads.segmenter import SEGMENTATION_HEADS, SemanticSegmenter, build_segmenter
from vitkd.downstream.heads.semantic_fpn import SemanticFPNHead
from vitkd.downstream.heads.sliding_window import sliding_window_logits, window_starts

__all__ = ["LayerDecayFasterRCNN", "LayerDecayMaskRCNN", "LinearTokenHead", "SEGMENTATION_HEADS",
           "SegmentationCrossEntropy", "SemanticFPNHead", "SemanticSegmenter", "build_detector", "build_segmenter",
           "default_anchor_sizes", "sliding_window_logits", "window_starts"]
