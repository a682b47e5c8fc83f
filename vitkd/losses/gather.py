"""Batch gathers across torchrun processes that keep gradients, for losses over the global batch.

`gather_batch(x)` concatenates every process's `(B_r, ...)` tensor along dim 0 into `(sum_r B_r, ...)` (rank order).
Its backward sums the incoming gradients over processes and hands each process the slice of its own rows: every
process's loss depends on every row, so row i's gradient is the sum over all processes' losses. When each process
computes the same global-batch loss L, that sum is `world_size * dL/dx_i`, and DDP's averaging over processes then
gives exactly the gradient of L for any per-process batch sizes. Works with any backend (all_gather + all_reduce)
and uneven batches (padded to the largest, trimmed after).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> bool:
    """True when torch.distributed is initialised with more than one process (gathers are no-ops otherwise)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_sizes(local_batch: int, device: torch.device) -> list[int]:
    """Every process's batch size, in rank order (a collective)."""
    local = torch.tensor([local_batch], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(size.item()) for size in sizes]


class GatherBatch(torch.autograd.Function):
    """`(B_r, ...)` on each process -> `(sum_r B_r, ...)`, keeping gradients (see the module docstring)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # noqa: D102
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
        padded[:local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        return torch.cat([part[:size] for part, size in zip(gathered, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_batch(local: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """(B_r, ...) -> (sum_r B_r, ...) over all processes, gradients kept; `local` itself without a process group.
    `sizes` (from `batch_sizes`) saves a collective when several tensors of one batch are gathered."""
    if not distributed_world():
        return local
    return GatherBatch.apply(local, sizes if sizes is not None else batch_sizes(local.shape[0], local.device))
