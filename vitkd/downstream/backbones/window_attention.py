"""ViTDet's window attention (Li et al. 2022) on the blocks of a plain timm ViT.

Global self-attention over every token costs O(N^2) in the token count, which is what makes a plain ViT slow at
detection resolutions (a 1024x1024 image is 4096 stride-16 tokens). ViTDet restricts most blocks to
non-overlapping windows (14x14 tokens) and keeps a few evenly spaced blocks global, so information still flows
across the image. Here the timm `Attention` module of each block is wrapped by `GridAttention`, which receives the
tokens as a grid (B, H, W, D) -- the block's norms, MLP, layer scale and drop path are per-token or per-sample and
work on the grid unchanged -- and runs the wrapped attention globally or inside windows, optionally with ViTDet's
relative position biases (`relative_position.py`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitkd.downstream.backbones.relative_position import DecomposedRelativePosition
from vitkd.errors import ConfigError


class GridAttention(nn.Module):
    """A timm attention module run over a token grid, globally or in non-overlapping windows.

    Args:
        attention: the block's attention (takes (B, N, D) tokens, returns (B, N, D)); its weights are kept.
        window_size: side of the square windows in tokens; 0 attends globally. A window larger than the grid is
            clipped to the grid (at small inputs a window block is then a global block, not a padded one).
        rel_pos_grid: add ViTDet's relative position biases, their tables sized for this (h, w) grid (a global
            block's fine-tune grid; window blocks size theirs for the window); None: no biases.

    Shapes: x (B, H, W, D) -> (B, H, W, D). Windows that do not tile the grid are completed with zero tokens on
    the bottom/right (as ViTDet does), which are removed again after attention.
    """

    def __init__(self, attention: nn.Module, window_size: int = 0,
                 rel_pos_grid: Optional[tuple[int, int]] = None) -> None:
        super().__init__()
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: global attention), got {window_size}")
        self.attention = attention
        self.window_size = window_size
        self.rel_pos = None
        if rel_pos_grid is not None:
            size = (window_size, window_size) if window_size else tuple(rel_pos_grid)
            self.rel_pos = DecomposedRelativePosition(attention, size)

    def _attend(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The wrapped attention over (B', h * w, D) tokens of h x w grids, with the position bias if any."""
        if self.rel_pos is None:
            return self.attention(tokens)
        return self.attention(tokens, attn_mask=self.rel_pos.bias(self.attention, tokens, grid))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        # attn_mask / is_causal: accepted because timm blocks pass them; a detection backbone never masks tokens
        batch, height, width, dim = x.shape
        if self.window_size == 0:
            tokens = self._attend(x.reshape(batch, height * width, dim), (height, width))
            return tokens.reshape(batch, height, width, dim)
        window_h, window_w = min(self.window_size, height), min(self.window_size, width)
        windows, padded = window_partition(x, window_h, window_w)  # (B * nW, window_h * window_w, D)
        windows = self._attend(windows, (window_h, window_w))
        return window_unpartition(windows, window_h, window_w, padded, (height, width))

    def extra_repr(self) -> str:
        return (f"window_size={self.window_size}" if self.window_size else "global") + \
            (", relative position biases" if self.rel_pos is not None else "")


def window_partition(x: torch.Tensor, window_h: int, window_w: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a grid into windows: (B, H, W, D) -> ((B * nW, window_h * window_w, D), padded (Hp, Wp)).

    The grid is zero-padded on the bottom/right to multiples of the window; windows are ordered row-major per image.
    """
    batch, height, width, dim = x.shape
    pad_h, pad_w = (-height) % window_h, (-width) % window_w
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window_h, window_h, padded_w // window_w, window_w, dim)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_h * window_w, dim)
    return windows, (padded_h, padded_w)


def window_unpartition(windows: torch.Tensor, window_h: int, window_w: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window_h * window_w, D) -> (B, H, W, D), padding removed."""
    padded_h, padded_w = padded
    rows, cols = padded_h // window_h, padded_w // window_w
    dim = windows.shape[-1]
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window_h, window_w, dim).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, padded_h, padded_w, dim)
    return x[:, :size[0], :size[1]].contiguous()


def evenly_spaced_global_blocks(depth: int, count: int = 4) -> list[int]:
    """Indices of `count` global blocks spread evenly over `depth` blocks, ending at the last one
    (ViTDet's choice: blocks 2, 5, 8, 11 of 12). With fewer blocks than `count`, every block is global."""
    count = min(count, depth)
    return [(index + 1) * depth // count - 1 for index in range(count)]


def grid_attention_blocks(blocks: Sequence[nn.Module], window_size: int = 0,
                          global_blocks: Optional[Sequence[int]] = None,
                          rel_pos_grid: Optional[tuple[int, int]] = None) -> list[int]:
    """Make every block's attention take the token grid (in place): window attention of `window_size` in every
    block except `global_blocks` (default: 4 evenly spaced), global attention everywhere when `window_size` is 0;
    with `rel_pos_grid` (the fine-tune token grid), relative position biases in every block.

    Returns the indices of the global blocks. Blocks without a timm-style `attn` (B, N, D) -> (B, N, D) module
    (e.g. ViT's parallel blocks) raise `ConfigError`, as do global block indices outside the model's depth.
    """
    depth = len(blocks)
    if window_size == 0:
        chosen = list(range(depth))
    else:
        chosen = sorted(set(evenly_spaced_global_blocks(depth) if global_blocks is None else global_blocks))
        outside = [index for index in chosen if not 0 <= index < depth]
        if outside:
            raise ConfigError(f"downstream.backbone.global_blocks {outside} are outside the model's {depth} blocks "
                              f"(valid: 0..{depth - 1})")
    for index, block in enumerate(blocks):
        attention = getattr(block, "attn", None)
        if not isinstance(attention, nn.Module):
            raise ConfigError(f"block {index} ({type(block).__name__}) has no separate attention module; window "
                              f"attention and the token grid need timm's Block or ResPostBlock")
        if isinstance(attention, GridAttention):
            raise ValueError(f"block {index} already attends over the token grid")
        block.attn = GridAttention(attention, 0 if index in chosen else window_size, rel_pos_grid)
    return chosen
