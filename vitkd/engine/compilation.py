"""`train.compile`: the trained module under `torch.compile` (the same code path on CPU and CUDA)."""

from __future__ import annotations

import torch

from vitkd.config import TrainConfig


def compile_for_training(module: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    """`module` (the trainable module, DDP-wrapped or not) under `torch.compile` when `train.compile` is not `off`.

    Compiling outside the DDP wrapper lets dynamo split graphs at DDP's bucket boundaries, so gradient all-reduce
    still overlaps the backward. The compiled wrapper shares parameters with `module`: checkpoints, EMA and exports
    read the eager module and are unchanged."""
    if train.compile == "off":
        return module
    mode = None if train.compile == "default" else train.compile
    return torch.compile(module, mode=mode, backend=train.compile_backend)
