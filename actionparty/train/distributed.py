"""Distributed data parallel through torchrun: gloo on CPU, nccl on GPU.

Every rank draws the same *global* batch of indices and noise from generators seeded by
(seed, step), then keeps its own slice. With equal slices and a mean loss, the averaged DDP
gradient equals the single-process gradient of the global batch, so a 2-process run and a
1-process run of the same global batch give the same weights (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        from actionparty.device import default_device

        device = default_device()
    dev = torch.device(f"cuda:{local}") if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_slice(global_batch: int, info: DistInfo) -> slice:
    if global_batch % info.world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by {info.world_size} processes")
    per = global_batch // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, step, stream): the same on every rank and on resume."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 17 + stream)
    return g
