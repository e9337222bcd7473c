"""Process-group setup for torchrun: NCCL on GPUs, gloo on CPUs; a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def shutdown(env: DistEnv) -> None:
    """Destroy the process group if one was made."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
