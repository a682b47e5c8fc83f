"""Peak memory of one inference forward.

`peak_memory_bytes` means the same thing on every device: the most tensor memory alive at once while the model
runs one forward of the given batch, counting the resident tensors (parameters, buffers and the input batch, each
storage once) plus the largest amount of memory the forward allocated on top of them (activations kept alive,
attention scores, autocast weight copies, ...). It is what `torch.cuda.max_memory_allocated` reports for a model
that is alone on a fresh GPU. It does not count the Python process, the allocator's cached-but-free blocks, or
gradients (inference only).

* CUDA: the allocated-on-top part is `torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()` around the
  forward, so it includes the workspace kernels request through the caching allocator.
* CPU (and any other device): a `TorchDispatchMode` sees the output of every op, tracks each new storage until it
  is freed, and records the peak of live bytes. Scratch memory a kernel allocates and frees inside one op (e.g.
  inside a fused attention kernel) is not seen, so on CPU the figure is a slight underestimate of what the
  allocator touched, but it is deterministic and independent of other allocations in the process.

The forward runs eagerly (never compiled: compiled graphs plan their own buffers), with the options' memory format
and autocast.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vitkd.bench.input_size import InputSize
from vitkd.bench.runtime import RuntimeOptions, example_batch, inference_context, prepare_model, synchronize

__all__ = ["LiveTensorTracker", "measure_peak_memory", "resident_bytes"]


def resident_bytes(model: nn.Module, *tensors: torch.Tensor) -> int:
    """Bytes of the model's parameters and buffers plus `tensors`, counting each shared storage once."""
    storages = {}
    for tensor in (*model.parameters(), *model.buffers(), *tensors):
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while active; `peak_bytes` is the most alive at once.

    Storages of `resident` tensors (weights, input) are known up front and never counted: views of them (a
    transposed weight, a reshaped input) are not new memory. Each new storage is counted once, when an op first
    returns it, and uncounted when it is freed (a weakref finalizer on the storage).
    """

    def __init__(self, resident: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self._resident_storages = [tensor.untyped_storage() for tensor in resident]  # kept alive while tracking
        self._resident_ids = {id(storage) for storage in self._resident_storages}
        self._tracked: dict[int, weakref.finalize] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        outputs = func(*args, **(kwargs or {}))
        for value in tree_flatten(outputs)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value.untyped_storage())
        return outputs

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._resident_ids or key in self._tracked:
            return
        size = storage.nbytes()
        self._tracked[key] = weakref.finalize(storage, self._release, key, size)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, key: int, size: int) -> None:
        self._tracked.pop(key, None)
        self.live_bytes -= size


def _cpu_transient_peak(runnable: nn.Module, batch: torch.Tensor, options: RuntimeOptions) -> int:
    resident = (*runnable.parameters(), *runnable.buffers(), batch)
    with inference_context(options), LiveTensorTracker(resident) as tracker:
        runnable(batch)
    return tracker.peak_bytes


def _cuda_transient_peak(runnable: nn.Module, batch: torch.Tensor, options: RuntimeOptions) -> int:
    device = options.torch_device
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    with inference_context(options):
        runnable(batch)
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - allocated_before


_TRANSIENT_PEAK_BY_DEVICE_TYPE = {"cuda": _cuda_transient_peak}


def measure_peak_memory(model: nn.Module, input_size: InputSize, batch_size: int,
                        options: RuntimeOptions = RuntimeOptions()) -> int:
    """Peak tensor bytes of one `(batch_size, *input_size)` inference forward (see the module docstring).

    Moves `model` in place to the options' device and memory format and sets eval mode. One untimed forward runs
    first so lazily created state (autocast caches aside) does not count as activation memory.
    """
    runnable = prepare_model(model, options, allow_compile=False)
    batch = example_batch(input_size, batch_size, options)
    with inference_context(options):
        runnable(batch)
    measure_transient_peak = _TRANSIENT_PEAK_BY_DEVICE_TYPE.get(options.torch_device.type, _cpu_transient_peak)
    return resident_bytes(runnable, batch) + measure_transient_peak(runnable, batch, options)
