"""Data-parallel training on PyTorch's own engine (torch.distributed), started by torchrun.

    torchrun --nproc-per-node 2 -m coopsynth train texture.png -o out

Each process runs its own Langevin chains on its own crops from its own random stream (shard);
gradients are averaged with all_reduce, so every process takes the same optimiser step; only rank
0 writes files. A single process with `shards=N` draws exactly what N processes draw together, so
the two runs agree up to float rounding (tests/test_distributed.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process: from torch.distributed when initialised, else torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); no-op for one process."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world()


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of every gradient over the processes (in place)."""
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all_reduce instead of one per tensor
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process if `flag` is True on any (a collective: all must call it)."""
    _, size = world()
    if size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every process's RNG state (a uint8 tensor), in rank order, on every process."""
    _, size = world()
    if size == 1:
        return [state]
    out: list = [None] * size
    dist.all_gather_object(out, state)
    return out


def mean_scalar(x: float, device: torch.device | str = "cpu") -> float:
    """The mean of a number over every process (the number itself without torchrun)."""
    rank, size = world()
    if size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / size


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
