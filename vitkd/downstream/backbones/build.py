"""Build a downstream backbone from a student: the ViTDet pyramid for plain ViTs, an FPN for hierarchical models."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitkd.config import DownstreamBackboneConfig
from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.hierarchical import HierarchicalBackbone
from vitkd.downstream.backbones.plain_vit import PlainViTBackbone
from vitkd.errors import ConfigError

BackboneKind = Literal["auto", "plain", "hierarchical"]
BACKBONE_KINDS: tuple[str, ...] = ("auto", "plain", "hierarchical")


def build_backbone(student: nn.Module, kind: BackboneKind = "auto", *, out_channels: int = 256,
                   extra_pool_level: bool = True, block_index: int = -1, window_size: int = 0,
                   global_blocks: Optional[Sequence[int]] = None, fine_tune_size: Optional[Sequence[int]] = None,
                   pyramid: bool = True, out_indices: Optional[Sequence[int]] = None,
                   freeze: bool = False, rel_pos: bool = False) -> DownstreamBackbone:
    """Wrap `student` (modified in place, its classifier head removed) as a backbone.

    Args:
        kind: "plain" (a timm VisionTransformer: ViTDet simple feature pyramid), "hierarchical" (stage outputs into
            an FPN), or "auto": plain for VisionTransformer models, hierarchical otherwise.
        out_channels, extra_pool_level: of every backbone's neck.
        block_index, window_size, global_blocks, fine_tune_size, pyramid, rel_pos: plain ViTs only
            (`PlainViTBackbone`).
        out_indices: hierarchical models only (`HierarchicalBackbone`).
        freeze: fix the student's weights and train the neck (and heads) only.
    """
    if kind not in BACKBONE_KINDS:
        raise ConfigError(f"downstream.backbone.kind: unknown kind '{kind}'; valid kinds: {', '.join(BACKBONE_KINDS)}")
    plain = isinstance(student, VisionTransformer) if kind == "auto" else kind == "plain"
    if plain:
        backbone: DownstreamBackbone = PlainViTBackbone(
            student, block_index=block_index, window_size=window_size, global_blocks=global_blocks,
            fine_tune_size=fine_tune_size, pyramid=pyramid, out_channels=out_channels,
            extra_pool_level=extra_pool_level, rel_pos=rel_pos)
    else:
        plain_only = {"block_index": block_index != -1, "window_size": window_size != 0,
                      "global_blocks": global_blocks is not None, "pyramid": not pyramid, "rel_pos": rel_pos}
        given = [key for key, set_ in plain_only.items() if set_]
        if given:
            raise ConfigError(f"downstream.backbone.{given[0]} applies to plain ViT backbones only; "
                              f"{type(student).__name__} is hierarchical")
        backbone = HierarchicalBackbone(student, out_indices=out_indices, out_channels=out_channels,
                                        extra_pool_level=extra_pool_level)
    if freeze:
        backbone.freeze_body()
    return backbone


def build_configured_backbone(student: nn.Module, options: DownstreamBackboneConfig, size: int) -> DownstreamBackbone:
    """`build_backbone` with a recipe's `downstream.backbone` settings, for `size` x `size` fine-tuning inputs."""
    return build_backbone(
        student, options.kind, out_channels=options.out_channels, block_index=options.block_index,
        window_size=options.window_size, global_blocks=options.global_blocks, fine_tune_size=(size, size),
        pyramid=options.pyramid, out_indices=options.out_indices, freeze=options.freeze, rel_pos=options.rel_pos)
