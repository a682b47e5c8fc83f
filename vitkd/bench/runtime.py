"""How a model runs while it is measured: device, CPU threads, memory format, autocast and torch.compile.

The same `RuntimeOptions` drive latency, throughput, memory and accuracy, so every figure in one record comes from
the same configuration (timm's benchmark script takes the same switches). Device and autocast dtype are chosen as
the trainer chooses them (`vitkd.engine.distributed.resolve_device`, `vitkd.engine.amp.resolve_amp_dtype`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vitkd.bench.input_size import InputSize
from vitkd.engine.amp import autocast, resolve_amp_dtype
from vitkd.engine.distributed import resolve_device

__all__ = ["RuntimeOptions", "example_batch", "inference_context", "prepare_model", "synchronize", "use_threads"]


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings shared by every measurement of one model.

    Attributes:
        device: where the model runs (`"cpu"`, `"cuda"`, `"cuda:1"`, ...; `"auto"`: CUDA when available).
        threads: CPU intra-op threads for `torch.set_num_threads`; `None` keeps the current setting.
        channels_last: convert model and input to `torch.channels_last` (helps convolutions, rarely ViTs).
        amp: autocast as the trainer's `amp: auto` does (bf16 on CPU, fp16 on CUDA).
        compile: wrap the model in `torch.compile` (compilation happens during warmup and is not timed).
    """

    device: str = "cpu"
    threads: int | None = None
    channels_last: bool = False
    amp: bool = False
    compile: bool = False

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(str(self.device), option="--device")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return resolve_amp_dtype("auto" if self.amp else "off", self.torch_device)


@contextlib.contextmanager
def use_threads(threads: int | None) -> Iterator[int]:
    """Set `torch.set_num_threads(threads)` inside the block (when given), restore it after; yields the count used."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def prepare_model(model: nn.Module, options: RuntimeOptions, *, allow_compile: bool = True) -> nn.Module:
    """Move `model` (in place) to the device and memory format, switch it to eval, and optionally compile it.

    Returns the module to call: `model` itself, or its `torch.compile` wrapper.
    """
    model.to(device=options.torch_device, memory_format=options.memory_format)
    model.eval()
    if options.compile and allow_compile:
        return torch.compile(model)
    return model


def example_batch(input_size: InputSize, batch_size: int, options: RuntimeOptions, seed: int = 0) -> torch.Tensor:
    """A fixed random `(batch_size, C, H, W)` float32 batch on the options' device and memory format."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(batch_size, *input_size, generator=generator)  # (B, C, H, W)
    return batch.to(device=options.torch_device, memory_format=options.memory_format)


@contextlib.contextmanager
def inference_context(options: RuntimeOptions) -> Iterator[None]:
    """`torch.inference_mode()` plus autocast when `options.amp` is set."""
    with torch.inference_mode(), autocast(options.torch_device, options.amp_dtype):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA so a timer reads finished work; a no-op on CPU (which runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
