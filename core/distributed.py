"""Helpers for torch.distributed that do nothing without a process group."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns each process the gradient of its own slice.

    The incoming gradient is summed over processes first, because every
    process computed a loss term that depends on every slice.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int) -> torch.Tensor:  # type: ignore[override]
        ctx.dim = dim
        ctx.local_size = tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_size
        return grad.narrow(ctx.dim, start, ctx.local_size), None


def gather_with_grad(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along ``dim``, keeping gradients.

    All processes must pass the same shape. Returns ``tensor`` itself when no
    process group is running.
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, dim)


@torch.no_grad()
def gather(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along ``dim``, without gradients."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def local_slice(local_size: int) -> slice:
    """Return the slice of this process's rows inside a gathered batch."""
    start = rank() * local_size
    return slice(start, start + local_size)


def init_from_environment(timeout_minutes: float = 30.0) -> None:
    """Join the process group that torchrun describes in the environment, if any.

    Uses NCCL when CUDA is available and gloo otherwise. Does nothing for a
    plain single-process run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()
