"""Everything distributed in one place: process group from torchrun's environment, device choice, rank-0 checks,
metric reduction. Single-process runs go through the same functions with world_size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vitkd.errors import ConfigError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """`auto` -> cuda:<local_rank> when available, else cpu. An explicit cuda request without CUDA, or a string torch
    does not know as a device, is a `ConfigError` naming `option` (the recipe key or command-line flag)."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"{option}={requested} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}={requested} but CUDA is not available here; use {option}=cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def set_cpu_threads(threads: int | None) -> None:
    """Intra-op CPU threads of this process (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"train.cpu_threads must be a positive integer or null, got {threads}")
    torch.set_num_threads(threads)


def init_distributed(requested_device: str = "auto", option: str = "train.device") -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process context. `option`
    names where the device came from in errors (the recipe key, or a command's flag)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank, option)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()


def reduce_sums(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Sum each value over ranks (identity in a single process)."""
    if not (context.enabled and dist.is_initialized()):
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, tensor.tolist())}


def mean_over_processes(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The mean of the float tensor `value` over processes (`value` itself in a single process); every process must
    call it. Normalising a loss sum by the mean count of what it summed makes DistributedDataParallel's average of
    the per-process gradients the gradient of the mean over the global batch."""
    value = value.detach().to(device=context.device, dtype=torch.float32)
    if context.enabled and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= context.world_size
    return value


def all_processes_agree(flag: torch.Tensor, context: DistributedContext) -> bool:
    """True when the boolean scalar `flag` is true on every process (the flag itself in a single process).

    For decisions every process must take alike, such as skipping an update: a process that skipped while another
    ran backward would leave DistributedDataParallel's gradient all-reduce waiting forever."""
    if context.enabled and dist.is_initialized():
        flag = flag.to(device=context.device, dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """`value` of every process in rank order (`[value]` in a single process); every process must call it."""
    if not (context.enabled and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def reduce_flags(flags: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Element-wise logical OR of an int32 flag vector over processes (the flags themselves in one process)."""
    if context.enabled and dist.is_initialized():
        flags = flags.to(device=context.device, dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.cpu()


def wrap_for_training(module: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """DistributedDataParallel when several processes train, else the module itself.

    Wrap the task's whole trainable module (the student and the objective's projections together): DDP then
    broadcasts rank 0's initial weights of all of them and averages all their gradients in its buckets."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
