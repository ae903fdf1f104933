"""Data-parallel training under torchrun (DDP, Li et al. 2020): gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class ProcessGroup:
    """This process's rank among `world_size` training processes (rank 0 writes files)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True for the one process that writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when gradients are averaged across more than one process."""
        return self.world_size > 1


def init_from_environment(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...).

    Without those variables, or when a group is already initialised, nothing is started.
    """
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return ProcessGroup()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return ProcessGroup(dist.get_rank(), dist.get_world_size())


def wrap_module(module: nn.Module, group: ProcessGroup, device: torch.device) -> nn.Module:
    """The module in DistributedDataParallel when training on several processes, else itself."""
    if not group.is_distributed:
        return module
    if device.type != "cuda":
        return DistributedDataParallel(module)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(module, device_ids=[index])


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op on one process)."""
    if group.is_distributed:
        dist.barrier()
