"""Helpers for torch.distributed that do nothing without a process group.

torchrun describes the process group in environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and
``init_from_environment`` joins it. On a machine with CUDA the group routes
CUDA tensors through NCCL and CPU tensors through gloo, so small CPU-side
exchanges (metrics, assignment results, barriers) need no GPU copy. Without
CUDA everything goes through gloo.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 1800.0

# Timeout of the process group joined by init_from_environment.
_timeout_seconds = DEFAULT_TIMEOUT_SECONDS


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """Return this process's index on its machine (torchrun's LOCAL_RANK), 0 without a group."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def timeout_seconds() -> float:
    """Return how long a collective operation may wait for the other processes."""
    return _timeout_seconds


# Joining and leaving


def init_from_environment(timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Join the process group that torchrun describes in the environment, if any.

    Does nothing for a plain single-process run. ``timeout`` (seconds) bounds
    every collective operation, so a process whose peer died or hangs
    raises an error instead of waiting forever.

    Raises:
        ValueError: if ``timeout`` is not positive.
    """
    global _timeout_seconds
    if not timeout > 0:
        raise ValueError(f"the distributed timeout must be a positive number of seconds, got {timeout!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return

    _timeout_seconds = float(timeout)
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
        # 3 ends this process when an NCCL operation fails or outlasts the
        # timeout, so torchrun detects the failure and stops the other
        # processes. PyTorch's page on the ProcessGroupNCCL environment
        # variables gives 3 as the default. A value the user set wins.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))


def shutdown() -> None:
    """Leave the process group once every process has finished its collectives."""
    if is_initialized():
        # Without this barrier, two-process gloo runs sometimes ended with one
        # process aborting at exit (SIGABRT) although every step had succeeded.
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the process with exit status ``code``, also when a failed collective left the group open.

    After a peer died or timed out, a normal interpreter exit with the group
    still open often aborts in gloo's teardown ("terminate called without an
    active exception", SIGABRT) instead of returning ``code``. So a process
    whose group is still open flushes its output and leaves with ``os._exit``.
    """
    if not is_initialized():
        raise SystemExit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def local_device(device: torch.device) -> torch.device:
    """Return ``device`` pinned to this process's GPU (index LOCAL_RANK) when it is CUDA."""
    if device.type != "cuda" or not is_initialized():
        return device
    return torch.device("cuda", local_rank())


# Synchronisation


def barrier(extra_seconds: float = 0.0) -> None:
    """Wait until every process gets here, for the group's timeout plus ``extra_seconds``.

    Raises:
        RuntimeError: naming the processes that did not arrive in time.
    """
    if world_size() == 1:
        return
    wait = datetime.timedelta(seconds=_timeout_seconds + extra_seconds)
    dist.monitored_barrier(timeout=wait, wait_all_ranks=True)


@contextmanager
def main_process_first(extra_seconds: float = 0.0) -> Iterator[None]:
    """Run the body on the main process first, then on the others.

    Use it for work whose result the other processes then reuse, such as
    building a file cache. The others wait for the group's timeout plus
    ``extra_seconds``, which should cover the main process's work.
    """
    if not is_main_process():
        barrier(extra_seconds)
    yield
    if is_main_process():
        barrier(extra_seconds)


def check_shared_directory(directory: Path) -> None:
    """Check that every process can read the files that the main process writes in ``directory``.

    The main process creates ``directory`` and a marker file in it, and each
    process looks for the marker.

    Raises:
        ValueError: naming the processes that cannot see the marker.
    """
    if world_size() == 1:
        return
    token = [secrets.token_hex(8) if is_main_process() else None]
    dist.broadcast_object_list(token, src=0)
    marker = directory / f".shared-check-{token[0]}"
    if is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        marker.touch()
    barrier()

    seen = all_gather_objects(marker.exists())
    if is_main_process():
        marker.unlink()
    blind = [index for index, found in enumerate(seen) if not found]
    if blind:
        raise ValueError(
            f"processes {blind} cannot see the files that rank 0 writes in {directory}; "
            "put the run directory (--out) on storage that every node mounts at the same path"
        )


def check_same_list(items: Sequence[str], description: str) -> None:
    """Check that every process has the same ``items``, comparing SHA-256 digests.

    Raises:
        ValueError: naming the processes whose list differs from rank 0's.
    """
    if world_size() == 1:
        return
    # surrogateescape turns file names that are not UTF-8 back into their bytes.
    digest = hashlib.sha256("\n".join(items).encode("utf-8", "surrogateescape")).hexdigest()
    digests = all_gather_objects(digest)
    differing = [index for index, other in enumerate(digests) if other != digests[0]]
    if differing:
        raise ValueError(
            f"processes {differing} found a different {description} than rank 0; make sure the "
            "folder is the same on every node and is not changing while the run starts"
        )


# Reductions


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Return the element-wise sum of ``tensor`` over every process (a new tensor)."""
    total = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def max_over_processes(value: float) -> float:
    """Return the largest ``value`` of any process."""
    if world_size() == 1:
        return value
    largest = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return float(largest.item())


# Gathering


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


def all_gather_objects(value: Any) -> list[Any]:
    """Return every process's picklable ``value``, in rank order."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def shard_bounds(count: int) -> tuple[int, int]:
    """Return the [start, stop) range of this process's share of ``count`` items.

    Shares are contiguous and in rank order, and their sizes differ by at
    most one, so concatenating them in rank order restores the whole list.
    """
    base, extra = divmod(count, world_size())
    start = rank() * base + min(rank(), extra)
    return start, start + base + (1 if rank() < extra else 0)


def gather_rows(local: np.ndarray, out: np.ndarray | None, chunk_rows: int = 65536) -> None:
    """Copy every process's rows of ``local`` into ``out`` on the main process, in rank order.

    ``local`` is (rows, ...) with any row count per process. ``out`` (it may
    be a memory map) must have the sum of those counts as rows on the main
    process and is ignored elsewhere. Rows travel in chunks of
    ``chunk_rows``, so the main process keeps at most one chunk per process
    in memory besides ``out``.
    """
    if world_size() == 1:
        if out is not None:
            out[:] = local
        return
    counts = [int(count) for count in gather(torch.tensor([local.shape[0]]))]
    offsets = np.cumsum([0] + counts)
    chunk_shape = (chunk_rows,) + local.shape[1:]
    for first in range(0, max(counts), chunk_rows):
        rows = torch.from_numpy(np.array(local[first:first + chunk_rows]))
        piece = rows.new_zeros(chunk_shape)
        piece[:len(rows)] = rows
        parts = [torch.empty_like(piece) for _ in counts] if is_main_process() else None
        dist.gather(piece, parts, dst=0)
        if parts is None or out is None:
            continue
        for index, part in enumerate(parts):
            valid = max(0, min(chunk_rows, counts[index] - first))
            start = offsets[index] + first
            out[start:start + valid] = part[:valid].numpy()


def progress_bar_disabled() -> bool | None:
    """Return tqdm's ``disable`` value: hidden on processes other than the main one.

    On the main process it is None, which tqdm reads as "show only on a
    terminal", so log files receive log lines without progress bars.
    """
    return None if is_main_process() else True
