"""Distilled students as detection and segmentation backbones: ViTDet's simple feature pyramid for plain ViTs
(with optional window attention and relative position biases), torchvision's FPN for hierarchical models, layer
ids for layer-wise lr decay."""

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.build import BACKBONE_KINDS, build_backbone, build_configured_backbone
from vitkd.downstream.backbones.hierarchical import HierarchicalBackbone
from vitkd.downstream.backbones.layer_decay import BackboneLayerGroups
from vitkd.downstream.backbones.plain_vit import PlainViTBackbone
from vitkd.downstream.backbones.simple_pyramid import SimpleFeaturePyramid
from vitkd.downstream.backbones.student_source import LoadedStudent, load_student

__all__ = ["BACKBONE_KINDS", "BackboneLayerGroups", "DownstreamBackbone", "HierarchicalBackbone", "LoadedStudent",
           "PlainViTBackbone", "SimpleFeaturePyramid", "build_backbone", "build_configured_backbone",
           "load_student"]
