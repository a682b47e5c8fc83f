"""Everything distributed in one place: process group from torchrun's environment, device choice, rank-0 checks,
metric reduction. Single-process runs go through the same functions with world_size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:<local_rank> when available, else cpu. An explicit cuda request without CUDA is an error."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={requested} but CUDA is not available here; use train.device=cpu or auto")
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


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
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


def wrap_for_training(module: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """DistributedDataParallel when several processes train, else the module itself."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def broadcast_parameters(module: torch.nn.Module, context: DistributedContext, source: int = 0) -> None:
    """Copy rank `source`'s parameters and buffers of `module` to every process (no-op in a single process).

    For trainable modules that live outside DistributedDataParallel (the objective's projections, mask token,
    generation block): DDP broadcasts the student itself when it wraps it, nothing does this for them.
    """
    if not (context.enabled and dist.is_initialized()):
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=source)


def average_gradients(module: torch.nn.Module, context: DistributedContext) -> None:
    """Average the gradients of `module`'s trainable parameters over processes: sum, then divide by world size.

    Call it right after `backward()` (before gradient unscaling and clipping) for trainable modules outside
    DistributedDataParallel, so every process applies the same update and their copies stay identical. All
    gradients travel in one flat buffer (one collective per step). A parameter without a gradient on this process
    counts as a zero gradient, so processes never disagree on what they reduce. No-op in a single process.
    """
    if not (context.enabled and dist.is_initialized()):
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= context.world_size
    offset = 0
    for param in params:
        count = param.numel()
        averaged = flat[offset:offset + count].view_as(param)
        if param.grad is None:
            param.grad = averaged.clone()
        else:
            param.grad.copy_(averaged)
        offset += count
