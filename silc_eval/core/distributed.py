"""torchrun for both flows: the process group (NCCL on GPUs, gloo on CPUs), and for evaluation which rank
computes what and how the pieces come back.

`torchrun --nproc_per_node N -m silc_eval run ...` starts N processes; `silc-eval run` calls
init_from_env(), which makes the process group as training does (init_distributed:
nccl with --device cuda, each rank on its LOCAL_RANK GPU; gloo on the CPU) and turns sharding
on. Until then every helper here is a no-op for one process, so code that runs on a single
rank of some other job (the trainer's evaluation on rank 0) never waits on a collective.

The unit of work is a whole batch, cut exactly where a one-process run cuts its batches, so
every forward pass sees the same inputs as it would in one process and the gathered results
are the one-process results. Image and text features: each rank encodes a contiguous block of
batches (shard_indices), and gather_in_order puts the blocks back in dataset order on every
rank. Chunks whose boundaries are only known while iterating (training windows of the
segmentation heads) go round-robin (owns) and come back with gather_chunks. Tensors travel as
raw bytes, in rounds of at most GATHER_BYTES per rank, so any dtype works on gloo and nccl
alike and a large gather never needs world_size copies of everything on a GPU at once.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from silc_eval.core.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Return whether this process logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Return whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str) -> DistEnv:
    """Return the DistEnv from torchrun's environment, initialising the process group if WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if env.distributed:
        dist.barrier()


def all_ranks_true(env: DistEnv, flag: bool) -> bool:
    """Return whether flag holds on every rank."""
    if not env.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=env.device if env.device.startswith("cuda") else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def shutdown_env(env: DistEnv) -> None:
    """Destroy the process group if one was made."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


GATHER_BYTES = 256 * 1024 * 1024  # per rank and round of a gather or broadcast

_ENV = DistEnv()  # sharding off until init_from_env finds several processes


def init_from_env(device: str) -> str:
    """Join torchrun's process group when WORLD_SIZE > 1 and turn sharding on; return this rank's device.

    The device is unchanged for one process or the CPU; for cuda under torchrun it is cuda:LOCAL_RANK.
    """
    global _ENV
    _ENV = init_distributed(device)
    return _ENV.device


@contextmanager
def session(device: str) -> Iterator[str]:
    """Context for one `silc-eval run`: init_from_env on entry, shutdown on exit; yields this rank's device."""
    try:
        yield init_from_env(device)
    finally:
        shutdown()


def shutdown() -> None:
    """Turn sharding off and destroy the process group init_from_env made (if any); returns nothing."""
    global _ENV
    env, _ENV = _ENV, DistEnv()
    shutdown_env(env)


def active() -> bool:
    """Return whether sharding is on (several processes joined by init_from_env)."""
    return _ENV.distributed


def rank() -> int:
    """Return this process's rank (0 when sharding is off)."""
    return _ENV.rank


def world_size() -> int:
    """Return the number of processes sharing the work (1 when sharding is off)."""
    return _ENV.world_size


def backend() -> str:
    """Return the process group's backend (nccl or gloo), or 'none' when sharding is off."""
    return dist.get_backend() if active() else "none"


def is_main() -> bool:
    """Return whether this process writes files and logs (rank 0, or the only process)."""
    return _ENV.is_main


def sync() -> None:
    """Wait until every rank gets here (no-op when sharding is off); returns nothing."""
    barrier(_ENV)


@contextmanager
def main_first() -> Iterator[None]:
    """Context whose body rank 0 runs first, the other ranks after it (e.g. generating data); yields nothing."""
    if active() and not is_main():
        sync()
    yield
    if active() and is_main():
        sync()


def shard_indices(n: int, batch_size: int = 1, rank_: int | None = None, world: int | None = None) -> range:
    """Return the indices of rank_'s contiguous block of whole batches of n items (this rank's by default).

    The ceil(n / batch_size) batches are split into world blocks whose sizes differ by at most
    one batch; block r holds batches [r * B // world, (r + 1) * B // world). A rank may get none.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if batch_size < 1 or not 0 <= rank_ < world:
        raise ValueError(f"shard_indices: batch_size {batch_size}, rank {rank_}, world {world}")
    batches = math.ceil(n / batch_size)
    first, last = rank_ * batches // world, (rank_ + 1) * batches // world
    return range(min(first * batch_size, n), min(last * batch_size, n))


def shard_dataset(dataset, batch_size: int):
    """Return dataset when sharding is off, else the Subset of this rank's block (shard_indices) of it."""
    if not active():
        return dataset
    return Subset(dataset, list(shard_indices(len(dataset), batch_size)))


def owns(chunk: int) -> bool:
    """Return whether this rank computes chunk number chunk of a round-robin split (always, when off)."""
    return chunk % world_size() == rank()


def comm_device() -> torch.device:
    """Return the device collectives run on: this rank's GPU under nccl, else the CPU."""
    return torch.device(_ENV.device) if _ENV.device.startswith("cuda") else torch.device("cpu")


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    rows = tensor.shape[0]
    width = math.prod(tensor.shape[1:])
    return tensor.detach().contiguous().reshape(rows, width).view(torch.uint8)


def _from_bytes(data: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return data.contiguous().view(dtype).reshape(data.shape[0], *shape)


def _all_gather_rows(local: torch.Tensor) -> list[torch.Tensor]:
    """Return every rank's tensor (rows may differ; trailing shape and dtype must agree), on the CPU."""
    metas: list = [None] * world_size()
    dist.all_gather_object(metas, (local.shape[0], tuple(local.shape[1:]), str(local.dtype)))
    shapes = {(shape, dtype) for rows, shape, dtype in metas if rows}
    if len(shapes) > 1:
        raise RuntimeError(f"ranks hold different feature shapes or dtypes: {sorted(shapes)}")
    if not shapes:
        return [local.cpu()] * world_size()
    (shape, dtype_name), = shapes
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    width = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    most = max(rows for rows, _, _ in metas)
    step = max(1, GATHER_BYTES // max(width, 1))
    mine = _as_bytes(local.to(dtype).reshape(local.shape[0], *shape)).cpu()
    pieces: list[list[torch.Tensor]] = [[] for _ in metas]
    for start in range(0, most, step):
        rows = min(step, most - start)
        send = torch.zeros(rows, width, dtype=torch.uint8)
        own = mine[start:start + rows]
        send[:len(own)] = own
        received = [torch.empty(rows, width, dtype=torch.uint8, device=comm_device()) for _ in metas]
        dist.all_gather(received, send.to(comm_device()))
        for r, (count, _, _) in enumerate(metas):
            keep = max(0, min(rows, count - start))
            pieces[r].append(received[r][:keep].cpu())
    return [_from_bytes(torch.cat(p), shape, dtype) for p in pieces]


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """Return (on every rank, on the CPU) the rows of every rank's block joined in rank order: with
    blocks from shard_indices, the n rows in dataset order. local itself when sharding is off."""
    if not active():
        return local
    joined = torch.cat(_all_gather_rows(local))
    if joined.shape[0] != n:
        raise RuntimeError(f"gathered {joined.shape[0]} rows across {world_size()} ranks, expected {n}")
    return joined


def gather_chunks(owned: Sequence[torch.Tensor], total: int) -> list[torch.Tensor]:
    """Return (on every rank, on the CPU) all total chunks in order, given this rank's owned chunks
    (chunk i belongs to rank i % world_size, see owns) in order. owned itself when sharding is off."""
    if not active():
        return list(owned)
    expected = len(range(rank(), total, world_size()))
    if len(owned) != expected:
        raise RuntimeError(f"rank {rank()} holds {len(owned)} of {total} chunks, expected {expected}")
    sizes: list = [None] * world_size()
    dist.all_gather_object(sizes, [len(chunk) for chunk in owned])
    local = torch.cat(list(owned)) if owned else torch.empty(0)
    per_rank = [list(rows.split(counts)) if counts else [] for rows, counts in zip(_all_gather_rows(local), sizes)]
    return [per_rank[i % world_size()][i // world_size()] for i in range(total)]


def broadcast_object(value):
    """Return rank 0's value (a picklable object) on every rank (value itself when off)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor | None) -> torch.Tensor:
    """Return rank 0's tensor on every rank, on the CPU; the other ranks pass None (tensor when off)."""
    if not active():
        return tensor
    shape, dtype_name = broadcast_object((tuple(tensor.shape), str(tensor.dtype)) if is_main() else None)
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    rows, trailing = (shape[0], shape[1:]) if shape else (1, ())
    width = math.prod(trailing) * torch.empty((), dtype=dtype).element_size()
    data = _as_bytes(tensor.reshape(rows, *trailing)).cpu() if is_main() else None
    step, pieces = max(1, GATHER_BYTES // max(width, 1)), []
    for start in range(0, rows, step):
        count = min(step, rows - start)
        piece = data[start:start + count].to(comm_device()) if is_main() else \
            torch.empty(count, width, dtype=torch.uint8, device=comm_device())
        dist.broadcast(piece, src=0)
        pieces.append(piece.cpu())
    joined = torch.cat(pieces) if pieces else torch.empty(0, width, dtype=torch.uint8)
    return _from_bytes(joined, trailing, dtype).reshape(shape)


def check_device(device: str) -> None:
    """Raise UserError unless device is 'cpu' or an available CUDA device; returns None."""
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
        return
    raise UserError(f"unknown device '{device}'; expected cpu or cuda[:N]")
