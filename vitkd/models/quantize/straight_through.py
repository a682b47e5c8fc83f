"""The straight-through estimator: the forward sees the quantised weight, the backward passes the gradient on as if
quantisation were the identity (Bengio et al. 2013; the estimator BinaryBERT, TWN and XTC train with)."""

from __future__ import annotations

import torch


def straight_through(weight: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward, d(out)/d(weight) = identity in the backward (the scales are not differentiated:
    they are recomputed from the latent weight at every step). Both tensors have the same shape."""
    return weight + (quantized - weight).detach()
