"""One process or many under ``torchrun``, through the same code: who this process is, and sums over all of them.

``torchrun --nproc-per-node N -m blipkit finetune ...`` sets RANK, WORLD_SIZE and MASTER_ADDR/PORT; blipkit joins the
group with gloo on CPU and NCCL on CUDA. Without torchrun it is rank 0 of 1 and nothing is communicated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def total(self, value: float) -> float:
        """``value`` summed over every process."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0])

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def join(device: torch.device) -> Processes:
    """This process's place: joins torchrun's group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE says there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size())


def leave(processes: Processes) -> None:
    if processes.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(step_examples: list, processes: Processes, batch_size: int) -> list:
    """This process's part of a global batch: consecutive slices of ``batch_size``, rank by rank, so that N
    processes with ``batch_size`` B see exactly what one process with ``batch_size`` N x B sees, no example twice
    and none left out (a last, short global batch is split as evenly as it goes)."""
    if processes.world == 1:
        return step_examples
    start = processes.rank * batch_size
    return step_examples[start : start + batch_size]
