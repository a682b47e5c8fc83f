"""Queries, keys and values of timm ViT blocks, recomputed from the output of their ``attn.qkv`` projection.

timm's ``Attention`` runs ``scaled_dot_product_attention`` (fused) by default, which never forms the ``N x N``
attention matrix, so there is nothing to hook for attention probabilities. What *is* a module output is the
``(B, N, 3 * H * d)`` result of ``attn.qkv``: a forward hook on it keeps the main forward on the fused kernel, and the
attention losses rebuild only what they need, only for the blocks they tap::

    sites = attention_sites(model, [3, 11], "student_layers")      # checks each block's attention is rebuildable
    q, k, v = split_qkv(outputs.hooked[sites[0].qkv_name], sites[0])  # each (B, H, N, d), q_norm / k_norm applied
    probs = (q @ k.transpose(-1, -2) * sites[0].scale).softmax(-1)    # (B, H, N, N), timm's non-fused attention

Only attention classes whose probabilities are exactly ``softmax(q_norm(q) k_norm(k)^T * scale)`` qualify (timm's
``timm.layers.Attention``, used by ``VisionTransformer``, DeiT, DeiT III and the distilled DeiTs). Others, e.g.
CaiT's talking-heads attention (heads mixed before and after the softmax) or EVA's rotary embeddings, would be
rebuilt wrongly from ``qkv`` alone, so they are refused by name rather than approximated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import Attention
from torch import nn

from vitkd.models.feature_points import model_depth
from vitkd.models.layer_mapping import resolve_layer_indices

__all__ = ["AttentionSite", "attention_sites", "split_qkv"]


#: attention classes (exact types: a subclass may change forward) whose probabilities are softmax(q k^T * scale)
REBUILDABLE_ATTENTION = (Attention,)


@dataclass(frozen=True, eq=False)
class AttentionSite:
    """One block's attention as the losses rebuild it: ``num_heads`` heads of ``head_dim`` channels, the block's
    own ``scale`` (``head_dim ** -0.5`` in timm) and its ``q_norm`` / ``k_norm`` modules (``Identity`` unless the
    model was built with ``qk_norm=True``).

    Holds references to the model's modules, not copies: a plain dataclass, so a loss term keeping sites does not
    register the student's (or the frozen teacher's) norms as its own parameters.
    """

    block: int
    num_heads: int
    head_dim: int
    scale: float
    q_norm: nn.Module
    k_norm: nn.Module

    @property
    def qkv_name(self) -> str:
        """The module to hook, as ``model.named_modules()`` names it."""
        return f"blocks.{self.block}.attn.qkv"

    @property
    def width(self) -> int:
        """``H * d``: the channels of q (and of k, v) with all heads concatenated."""
        return self.num_heads * self.head_dim


def attention_sites(model: nn.Module, entries: list[int], key: str) -> list[AttentionSite]:
    """Resolve block indices (negative from the end) of ``model`` into rebuildable attention sites.

    Raises:
        ValueError: naming ``key``: an entry that is not an int, an index out of range, a model without
            transformer blocks, or a block whose attention cannot be rebuilt from its ``qkv`` output.
    """
    who = type(model).__name__
    depth = model_depth(model)
    if depth is None:
        raise ValueError(f"{key}: {who} has no transformer blocks whose attention could be recomputed; the "
                         f"attention loss needs a ViT-family model on both sides")
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise ValueError(f"{key}: {entry!r} is not a block index; the attention loss reads blocks by index")
    sites = []
    for block in resolve_layer_indices(entries, depth, key):
        attn = getattr(model.blocks[block], "attn", None)
        if type(attn) not in REBUILDABLE_ATTENTION or not isinstance(attn.qkv, nn.Linear):
            found = type(attn).__name__ if attn is not None else "no `attn` module"
            raise ValueError(f"{key}: block {block} of {who} has {found}; the attention loss recomputes "
                             f"softmax(q k^T * scale) from `attn.qkv` and supports timm's Attention only (ViT, DeiT, "
                             f"DeiT III), not attention that mixes heads or rotates q and k")
        sites.append(AttentionSite(block=block, num_heads=int(attn.num_heads), head_dim=int(attn.head_dim),
                                   scale=float(attn.scale), q_norm=attn.q_norm, k_norm=attn.k_norm))
    return sites


def split_qkv(qkv: torch.Tensor, site: AttentionSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, N, 3 * H * d)`` output of ``attn.qkv`` -> q, k, v, each ``(B, H, N, d)``, with the block's
    ``q_norm`` / ``k_norm`` applied to q and k exactly where timm applies them (per head, before the scale)."""
    if qkv.dim() != 3 or qkv.shape[-1] != 3 * site.width:
        raise ValueError(f"block {site.block}: expected the (B, N, {3 * site.width}) output of attn.qkv, got "
                         f"{tuple(qkv.shape)}")
    # timm lays the projection out as (3, heads, head_dim) along the channels
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=site.num_heads)  # each (B, H, N, d)
    return site.q_norm(q), site.k_norm(k), v
