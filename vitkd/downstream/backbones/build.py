"""Build a downstream backbone from a student: the ViTDet pyramid for plain ViTs, an FPN for hierarchical models."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

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
                   freeze: bool = False) -> DownstreamBackbone:
    """Wrap `student` (modified in place, its classifier head removed) as a backbone.

    Args:
        kind: "plain" (a timm VisionTransformer: ViTDet simple feature pyramid), "hierarchical" (stage outputs into
            an FPN), or "auto": plain for VisionTransformer models, hierarchical otherwise.
        out_channels, extra_pool_level: of every backbone's neck.
        block_index, window_size, global_blocks, fine_tune_size, pyramid: plain ViTs only (`PlainViTBackbone`).
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
            extra_pool_level=extra_pool_level)
    else:
        plain_only = {"block_index": block_index != -1, "window_size": window_size != 0,
                      "global_blocks": global_blocks is not None, "pyramid": not pyramid}
        given = [key for key, set_ in plain_only.items() if set_]
        if given:
            raise ConfigError(f"downstream.backbone.{given[0]} applies to plain ViT backbones only; "
                              f"{type(student).__name__} is hierarchical")
        backbone = HierarchicalBackbone(student, out_indices=out_indices, out_channels=out_channels,
                                        extra_pool_level=extra_pool_level)
    if freeze:
        backbone.freeze_body()
    return backbone
