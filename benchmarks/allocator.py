"""The C allocator's setting side by side: how much freed memory the process keeps for reuse.

glibc's malloc hands every block above its mmap threshold to the kernel on free and takes fresh,
zeroed pages for the next one. `coopsynth.accel.keep_freed_memory(threshold)` raises that
threshold so freed activations are reused (the command-line tool sets it at start). This script
runs the big workloads in fresh processes, one per threshold and workload, the thresholds taking
turns round by round, and prints each workload's seconds (median over rounds), its speed-up
against the first setting and the process's peak resident memory.

    python benchmarks/allocator.py                     # 64 MiB (the baseline), glibc's default, 256 MiB, 1 GiB
    python benchmarks/allocator.py --keep 0,64,1024 --rounds 3 --no-write
    python benchmarks/allocator.py --keep 256,1024 --precision fp32   # sampling in fp32 (CPUs without bf16 units)

Workloads (the default presets' networks with fresh weights; timing only):
  sample 1024 / 4096: one side x side texture with 6 refinements, as `coopsynth sample`;
  train 512: training iterations on 512 px crops (a `--preset` with larger crops, or `video`);
  complete 1024: a 1024x1024 image with a 400x400 hole, 20 latent inference steps then 6
  refinements, as `coopsynth complete --model` (the inference is the generator's forward and
  backward over the whole image, the part that allocates the most);
  video 200: a 200-frame 256x256 video with 4 refinements (the video preset's generator; a fitted
  refinement count of a trained model), as `coopsynth sample --frames 200 --size 256`.
Samples are drawn in the precision the command-line tool picks (bf16 on a CPU with bf16 units),
or in `--precision`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, header, median, publish  # noqa: E402

WORKLOADS = ("sample 1024", "sample 4096", "train 512", "complete 1024", "video 200")


def worker(work: str, keep_mib: int, precision: str) -> None:
    """One workload in this (fresh) process: prints its seconds and peak resident GiB."""
    import torch

    from coopsynth.accel import Accel, keep_freed_memory

    if keep_mib:
        assert keep_freed_memory(keep_mib << 20), "not glibc: nothing to compare"
    from dataclasses import replace

    from coopsynth.completion import complete
    from coopsynth.model import CoopModel
    from coopsynth.trainer import CoopTrainer, preset

    cfg = preset("default")
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    kind, side = work.split()
    side = int(side)
    t0 = time.perf_counter()
    sampling = Accel.for_device(cpu, precision).for_sampling(cpu)  # "auto": as the command-line tool samples
    if kind == "sample":
        m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), cpu, sampling)
        t0 = time.perf_counter()
        m.sample(1, (side, side), refine=cfg.langevin_steps, langevin=cfg.langevin())
    elif kind == "video":
        vcfg = preset("default", dims=3)
        m = CoopModel(vcfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), cpu, sampling)
        t0 = time.perf_counter()
        m.sample(1, (side, 256, 256), refine=4, langevin=vcfg.langevin())
    elif kind == "train":
        tr = CoopTrainer(torch.rand(3, side, side), replace(cfg, crop=side), seed=0)
        tr.step()  # the first iteration packs weights and warms caches
        t0 = time.perf_counter()
        for _ in range(3):
            tr.step()
    else:
        m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), cpu, Accel.for_device(cpu))
        missing = torch.zeros(side, side, dtype=torch.bool)
        missing[side // 4 : side // 4 + 400, side // 4 : side // 4 + 400] = True
        t0 = time.perf_counter()
        complete(m, torch.rand(3, side, side), missing, langevin=cfg.langevin(), infer_steps=20, refine=cfg.langevin_steps)
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(seconds, hwm / 2**20)


def run(work: str, keep_mib: int, precision: str) -> tuple[float, float]:
    args = [sys.executable, __file__, "--worker", work, str(keep_mib), precision]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    seconds, gib = r.stdout.split()
    return float(seconds), float(gib)


def label(keep_mib: int) -> str:
    if not keep_mib:
        return "glibc's default"
    return f"{keep_mib >> 10} GiB" if keep_mib >= 1024 and keep_mib % 1024 == 0 else f"{keep_mib} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default="64,0,256,1024", help="thresholds in MiB, 0 = glibc's default; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated workloads, e.g. 'train 512,complete 1024'")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--precision", default="auto", help="of the samples: auto (as the command-line tool), fp32 or bf16")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    if not sys.platform.startswith("linux"):
        print("allocator.py: skipped (glibc's malloc settings; this is not Linux)")
        return
    keeps = [int(k) for k in args.keep.split(",")]
    works = args.only.split(",") if args.only else list(WORKLOADS)
    secs: dict[tuple[str, int], list[float]] = {(w, k): [] for w in works for k in keeps}
    peak: dict[tuple[str, int], float] = {(w, k): 0.0 for w in works for k in keeps}
    for r in range(args.rounds):
        for w in works:
            for k in keeps if r % 2 == 0 else reversed(keeps):  # alternate the order round by round
                s, g = run(w, k, args.precision)
                secs[(w, k)].append(s)
                peak[(w, k)] = max(peak[(w, k)], g)
                print(f"round {r + 1}: {w}, {label(k)}: {s:.2f} s, peak {g:.2f} GiB", flush=True)
    base = keeps[0]
    lines = [
        f"Freed memory kept for reuse (`keep_freed_memory(threshold)`), in fresh processes, the thresholds taking turns "
        f"round by round ({args.rounds} rounds; seconds: the median), samples in {args.precision} precision"
        f"{' (as the command-line tool picks)' if args.precision == 'auto' else ''}. Speed-up against {label(base)}.\n",
        "| workload | threshold | seconds | speed-up | peak resident GiB |",
        "|---|---|---|---|---|",
    ]
    for w in works:
        b = median(secs[(w, base)])
        for k in keeps:
            s = median(secs[(w, k)])
            lines.append(f"| {w} | {label(k)} | {fmt(s)} | {fmt(b / s)}x | {fmt(peak[(w, k)])} |")
    publish(header("Allocator") + "\n".join(lines) + "\n", not args.no_write)


if __name__ == "__main__":
    main()
