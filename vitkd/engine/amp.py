"""Mixed precision where the device supports it: bf16 autocast on CPU, fp16 (with a grad scaler) or bf16 on CUDA."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch


def resolve_amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """`off` -> None; `auto` -> bf16 on CPU, fp16 on CUDA; `bf16`/`fp16` as asked (fp16 needs CUDA)."""
    if amp == "off":
        return None
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; on CPU use train.amp=bf16 (or auto)")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_grad_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """Only fp16 needs loss scaling; for every other dtype the scaler is disabled and its calls are pass-throughs
    (`scale(loss)` is `loss`, `step` is `optimizer.step()`), so training has one backward/step path."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
