"""Data-parallel scaling: iterations per second of N processes (torchrun-style, gloo on CPU or NCCL
on GPUs) against one process with the same total batch, measured in one run.

    python benchmarks/scaling.py                # 1 vs 2 processes, CPU, default preset networks
    python benchmarks/scaling.py --procs 1,2,4 --device cuda

Each process gets threads = cores / processes, so the comparison uses the whole machine both ways.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, publish  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, batch: int, steps: int, device: str, crop: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from coopsynth import distributed
    from coopsynth.trainer import CoopTrainer, preset

    dev = torch.device(device)
    rank_, size = distributed.init(dev)
    cfg = preset("default")
    cfg = type(cfg)(**{**cfg.__dict__, "batch": batch, "crop": crop})
    data = torch.rand(3, 256, 256)
    tr = CoopTrainer(data, cfg, device=dev, seed=0, shards=(rank_,) if size > 1 else (0,))
    for _ in range(3):  # warm-up
        tr.step()
    distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    if rank_ == 0:
        q.put(steps / (time.perf_counter() - t0))
    distributed.shutdown()


def measure(procs: int, total_batch: int, steps: int, device: str, crop: int) -> float:
    cores = os.cpu_count() or 1
    threads = max(1, cores // procs)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.spawn(_worker, args=(procs, _port(), threads, total_batch // procs, steps, device, crop, q), nprocs=procs, join=True)
    return q.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--batch", type=int, default=4, help="total chains per iteration (split over the processes)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    rates = {p: measure(p, args.batch, args.steps, args.device, args.crop) for p in procs}
    base = rates[procs[0]]
    text = header(f"Data-parallel scaling ({args.device}, total batch {args.batch}, crop {args.crop})")
    text += "| processes | threads each | iterations/s | speed-up |\n|---|---|---|---|\n"
    for p, r in rates.items():
        text += f"| {p} | {max(1, (os.cpu_count() or 1) // p)} | {r:.2f} | {r / base:.2f}x |\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
