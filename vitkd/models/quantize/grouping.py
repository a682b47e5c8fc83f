"""Weights seen as quantisation groups: a (out, in) matrix (or a conv kernel, flattened per output channel) as
(out, groups, group_size), so every quantiser computes its scales with one reduction over the last dimension."""

from __future__ import annotations

from typing import Optional

import torch


def as_groups(weight: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """(out, ...) -> (out, G, g): each output row cut into G groups of `g` consecutive weights (one group of the whole
    row when `group_size` is None). Raises ValueError when the row length is not a multiple of `group_size`."""
    rows = weight.reshape(weight.shape[0], -1)  # (out, in)
    size = group_size or rows.shape[1]
    if rows.shape[1] % size:
        raise ValueError(f"a weight row of {rows.shape[1]} values cannot be cut into groups of {size}")
    return rows.reshape(rows.shape[0], rows.shape[1] // size, size)


def from_groups(grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of `as_groups`: (out, G, g) -> the weight's own `shape`."""
    return grouped.reshape(shape)
