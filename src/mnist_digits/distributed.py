"""Data-parallel training across processes with torch.distributed, as launched by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and
training runs in one process. NCCL carries the gradients between GPUs, gloo between CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Cluster:
    rank: int = 0  # this process's index among all processes
    world_size: int = 1  # number of processes
    local_rank: int = 0  # index on this machine: picks the GPU

    @property
    def is_main(self) -> bool:
        """Only the main process prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Cluster()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> tuple[Cluster, torch.device]:
    """Join the process group torchrun set up; returns this process's place and device."""
    if not launched_by_torchrun():
        return SINGLE_PROCESS, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Cluster(dist.get_rank(), dist.get_world_size(), local_rank), device


def leave(cluster: Cluster) -> None:
    if cluster.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(cluster: Cluster) -> None:
    if cluster.distributed:
        dist.barrier()


def sum_all(values: list[float], cluster: Cluster, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes."""
    if not cluster.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_all(flag: bool, cluster: Cluster, device: torch.device) -> bool:
    """True if `flag` is true in any process: all stop at the same batch, or none does."""
    if not cluster.distributed:
        return flag
    return sum_all([float(flag)], cluster, device)[0] > 0


def sync_buffers(model: torch.nn.Module, cluster: Cluster) -> None:
    """Copy the main process's BatchNorm statistics to all (each saw only its own batches)."""
    if cluster.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
