"""A plain timm ViT/DeiT student as a detection and segmentation backbone (ViTDet, Li et al. 2022).

The ViT runs on inputs of any size: images are zero-padded on the bottom/right to a multiple of the patch size and
the position embedding is resampled to the token grid of each input (timm's `resample_abs_pos_embed`; a no-op when
the grid is the one it was trained or resampled for). Prefix tokens (class, distillation, registers) are dropped
before the blocks, as ViTDet drops the class token: windows partition the image grid and a token outside it has no
place in one. The chosen block's output, reshaped to the stride-`patch` grid, feeds the simple feature pyramid (or
is returned as is, for a linear head on the tokens).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from vitkd.downstream.backbones.base import DownstreamBackbone
from vitkd.downstream.backbones.simple_pyramid import SimpleFeaturePyramid, scales_for_patch
from vitkd.downstream.backbones.window_attention import grid_attention_blocks
from vitkd.errors import ConfigError


class PlainViTBackbone(DownstreamBackbone):
    """ViT tokens -> grid -> simple feature pyramid.

    Args:
        vit: a timm `VisionTransformer` (DeiT, distilled DeiT, registers...) with a `PatchEmbed`; modified in place
            (head and blocks after `block_index` removed, attention made grid-aware).
        block_index: the block whose output feeds the pyramid (-1: the last); later blocks are removed.
        window_size: ViTDet window attention in the blocks not in `global_blocks` (0: global everywhere).
        rel_pos: ViTDet's decomposed relative position biases in every block (zero-initialised, sized for the
            window or the fine-tune grid), on top of the absolute position embedding.
        global_blocks: blocks that keep global attention (default: 4 evenly spaced ones, the last included).
        fine_tune_size: (H, W) of the fine-tuning inputs; the position embedding is resampled once to their grid
            and learned there (other sizes are still resampled on the fly).
        pyramid: build ViTDet's pyramid; False returns the tokens alone: {"0": (B, D, h, w)}.
        scales: the pyramid's rescaling factors; default: those giving strides 4, 8, 16, 32 from the patch size
            (ViTDet's 4, 2, 1, 0.5 for 16-pixel patches, 1, 0.5, 0.25, 0.125 for 4-pixel ones).
        out_channels, extra_pool_level: the pyramid's (see `SimpleFeaturePyramid`).
        final_norm: apply the ViT's final LayerNorm to the tapped tokens (the norm the student was trained with).

    Shapes: images (B, 3, H, W) -> OrderedDict "0".."3", "pool" of (B, out_channels, ceil(H / p) * p / s, ...)
    for strides s = 4, 8, 16, 32, 64 with patch p (levels coarser than the grid are floor-divided).
    """

    def __init__(self, vit: VisionTransformer, block_index: int = -1, window_size: int = 0,
                 global_blocks: Optional[Sequence[int]] = None, fine_tune_size: Optional[Sequence[int]] = None,
                 pyramid: bool = True, scales: Optional[Sequence[float]] = None, out_channels: int = 256,
                 extra_pool_level: bool = True, final_norm: bool = True, rel_pos: bool = False) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer) or not isinstance(vit.patch_embed, PatchEmbed):
            raise ConfigError(f"a plain-ViT backbone needs a timm VisionTransformer with a PatchEmbed, got "
                              f"{type(vit).__name__}; use a hierarchical backbone (downstream.backbone.kind: "
                              f"hierarchical) for other models")
        depth = len(vit.blocks)
        if not -depth <= block_index < depth:
            raise ConfigError(f"downstream.backbone.block_index {block_index} is outside the model's {depth} blocks "
                              f"(valid: 0..{depth - 1}, or -1 for the last)")
        vit.prune_intermediate_layers([block_index], prune_norm=not final_norm, prune_head=True)
        _drop_prefix_tokens(vit)
        self.window_size = window_size
        self.patch_size = tuple(vit.patch_embed.patch_size)
        if fine_tune_size is not None:
            height, width = (int(side) for side in fine_tune_size)
            vit.set_input_size(img_size=(self._padded(height, 0), self._padded(width, 1)))
        grid = tuple(int(side) for side in vit.patch_embed.grid_size)  # the fine-tune grid once resized
        self.global_blocks = grid_attention_blocks(vit.blocks, window_size, global_blocks, grid if rel_pos else None)
        self.body = vit
        embed_dim = vit.embed_dim
        scales = scales_for_patch(self.patch_size[0]) if scales is None else scales
        self.pyramid = SimpleFeaturePyramid(embed_dim, self.patch_size[0], scales, out_channels, extra_pool_level) \
            if pyramid else None
        self.out_channels = out_channels if pyramid else embed_dim
        self.strides = self.pyramid.strides if pyramid else [self.patch_size[0]]
        self.level_names = self.pyramid.level_names if pyramid else ["0"]

    def _padded(self, side: int, axis: int) -> int:
        return math.ceil(side / self.patch_size[axis]) * self.patch_size[axis]

    def _position_embedding(self, grid: tuple[int, int]) -> Optional[torch.Tensor]:
        """The position embedding at `grid`: (1, h * w, D), or None for a ViT without one."""
        vit = self.body
        if vit.pos_embed is None:
            return None
        return resample_abs_pos_embed(vit.pos_embed, new_size=list(grid), old_size=list(vit.patch_embed.grid_size),
                                      num_prefix_tokens=0)

    def forward_grid(self, images: torch.Tensor) -> torch.Tensor:
        """The tapped block's tokens on their grid: (B, 3, H, W) -> (B, D, ceil(H / p), ceil(W / p))."""
        vit = self.body
        height, width = images.shape[-2:]
        pad_h, pad_w = self._padded(height, 0) - height, self._padded(width, 1) - width
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = vit.patch_embed.proj(images).permute(0, 2, 3, 1)  # (B, h, w, D)
        x = vit.patch_embed.norm(x)
        batch, grid_h, grid_w, dim = x.shape
        position = self._position_embedding((grid_h, grid_w))
        if position is not None:
            x = x + position.reshape(1, grid_h, grid_w, dim).to(x.dtype)
        x = vit.norm_pre(vit.pos_drop(x))
        for block in vit.blocks:
            x = block(x)  # (B, h, w, D): every attention is a GridAttention
        x = vit.norm(x)  # Identity when final_norm is False
        return x.permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        grid = self.forward_grid(images)
        if self.pyramid is None:
            return OrderedDict([("0", grid)])
        return self.pyramid(grid)


def _drop_prefix_tokens(vit: VisionTransformer) -> None:
    """Remove the prefix tokens and their position embeddings from `vit` (in place): unused parameters would stay
    in the optimizer and make DistributedDataParallel wait for gradients that never come."""
    if vit.pos_embed is not None and not vit.no_embed_class and vit.num_prefix_tokens:
        vit.pos_embed = nn.Parameter(vit.pos_embed.detach()[:, vit.num_prefix_tokens:].clone(),
                                     requires_grad=vit.pos_embed.requires_grad)
    for name in ("cls_token", "reg_token", "dist_token"):
        if getattr(vit, name, None) is not None:
            setattr(vit, name, None)
    vit.no_embed_class = True  # the position embedding now covers the patch grid alone
    vit.num_prefix_tokens = vit.num_reg_tokens = 0
    vit.has_class_token = False
