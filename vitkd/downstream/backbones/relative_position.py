"""ViTDet's relative position biases (Li et al. 2022; the decomposed form of MViTv2, Li et al. 2022) for the blocks
of a plain timm ViT fine-tuned as a backbone.

Each attention gets two learned tables, one per axis, of (2 * size - 1, head_dim) embeddings indexed by the
query-key offset along that axis. The bias of query i at (y_i, x_i) for key j at (y_j, x_j) is
q_i . Rh[y_i - y_j] + q_i . Rw[x_i - x_j], added to the attention logits before the softmax. Tables start at zero
(ViTDet's initialisation, the pre-trained student has none), so a freshly built backbone computes exactly what it
computed without them. Sized for a window block's window or a global block's fine-tune grid; another grid
resamples them linearly (timm's `get_decomposed_rel_pos_bias`, which also does the indexing).

The bias is handed to the block's own timm attention as its additive `attn_mask`; the query it needs is recomputed
from the first third of the attention's `qkv` projection (and its `q_norm`), so the attention's weights and its
forward are timm's, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
from torch import nn

from vitkd.errors import ConfigError


class DecomposedRelativePosition(nn.Module):
    """Learned decomposed relative position tables for one timm attention module.

    Args:
        attention: the timm attention the bias is for (its `qkv`, `q_norm`, `num_heads`, `head_dim` are read).
        size: (h, w) of the token grid the tables are sized for (a window, or a global block's grid).

    Shapes: `bias(attention, x, grid)`: x (B, N, D) tokens of an h x w grid (N = h * w) -> (B, heads, N, N).
    """

    def __init__(self, attention: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        missing = [name for name in ("qkv", "q_norm", "num_heads", "head_dim") if not hasattr(attention, name)]
        if missing or not isinstance(attention.qkv, nn.Linear) or getattr(attention, "gate", None) is not None:
            raise ConfigError(f"downstream.backbone.rel_pos needs timm's standard Attention (one qkv projection), got "
                              f"{type(attention).__name__}; set rel_pos: false for this model")
        head_dim = int(attention.head_dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * int(size[0]) - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * int(size[1]) - 1, head_dim))

    def bias(self, attention: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads, head_dim = attention.num_heads, attention.head_dim
        width = heads * head_dim
        query_bias = attention.qkv.bias[:width] if attention.qkv.bias is not None else None
        query = F.linear(x, attention.qkv.weight[:width], query_bias)  # (B, N, heads * head_dim)
        query = attention.q_norm(query.view(batch, tokens, heads, head_dim).transpose(1, 2))  # (B, heads, N, hd)
        bias = get_decomposed_rel_pos_bias(query.reshape(batch * heads, tokens, head_dim), self.rel_pos_h,
                                           self.rel_pos_w, grid, grid)  # (B * heads, N, N)
        return bias.view(batch, heads, tokens, tokens).to(query.dtype)

    def extra_repr(self) -> str:
        return f"tables=({self.rel_pos_h.shape[0]}, {self.rel_pos_w.shape[0]}) x {self.rel_pos_h.shape[1]}"
