"""Speed benchmark: where a training iteration's time goes, Langevin throughput against the
machine's matrix-product peak (the roofline ratio), sampling speed, and the Langevin revision's
speed paths side by side (plain code vs ours on a CPU; eager vs CUDA graph, fp32/tf32/bf16 and
channels-last on a GPU), as ratios measured in the same run.

    python benchmarks/speed.py                 # CPU, sizes 64..512, default preset networks
    python benchmarks/speed.py --device cuda   # on a GPU (also run by default when one is present)

Everything is measured in this one run, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, publish  # noqa: E402

from coopsynth.accel import Accel  # noqa: E402
from coopsynth.langevin import descriptor_langevin  # noqa: E402
from coopsynth.model import CoopModel  # noqa: E402
from coopsynth.networks import Descriptor, pad  # noqa: E402
from coopsynth.trainer import CoopTrainer, preset  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, repeat: int = 3, min_time: float = 0.3) -> float:
    """Best mean seconds per call over `repeat` rounds of at least `min_time` each."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            sync(device)
            if time.perf_counter() - t0 >= min_time:
                break
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_peak(device: torch.device, dtype=torch.float32) -> float:
    """GFLOP/s of a large square matrix product: the arithmetic peak we compare against."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timeit(lambda: a @ b, device) / 1e9


def conv_flops(module: nn.Module, x: torch.Tensor, fn) -> float:
    """FLOPs (2 x multiply-adds) of every convolution that `fn(x)` runs, from the layer shapes."""
    total = 0.0

    def hook(m, inp, out):
        nonlocal total
        k = 1
        for s in m.kernel_size:
            k *= s
        total += 2.0 * out.numel() * (m.in_channels // m.groups) * k

    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    try:
        with torch.no_grad():
            fn(x)
    finally:
        for h in hs:
            h.remove()
    return total


def peak_memory(device: torch.device, fn) -> str:
    """Peak GPU memory in MiB while running fn (the CUDA allocator's peak); "–" on a CPU, where a
    process's resident peak cannot be reset (see the large-sample line for a CPU memory figure)."""
    if device.type != "cuda":
        return "–"
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"


BIG = """
import sys, time, torch
from coopsynth.model import CoopModel
from coopsynth.trainer import preset
cfg = preset("default")
m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), sys.argv[1])
t = time.perf_counter()
y = m.sample(1, (int(sys.argv[2]),) * 2, refine=cfg.langevin_steps, langevin=cfg.langevin())
assert torch.isfinite(y).all()
print(time.perf_counter() - t)
"""


def big_sample(device: torch.device, side: int) -> str:
    """One side x side sample with the default refinement in a fresh process: seconds and the
    process's peak resident memory (the windowed generator and Langevin keep it bounded)."""
    import resource
    import subprocess

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", BIG, device.type, str(side)], capture_output=True, text=True, cwd=root)
    if r.returncode != 0:
        return f"{side}x{side} sample: failed ({(r.stderr.strip().splitlines() or ['?'])[-1]})\n"
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return f"{side}x{side} sample with {preset('default').langevin_steps} refinements: {float(r.stdout.split()[-1]):.0f} s, peak resident memory {peak:.1f} GiB.\n"


def plain_energy(d: Descriptor, y: torch.Tensor) -> torch.Tensor:
    """The descriptor as first written: module convs throughout, 1x1 read-outs as convolutions."""
    h, e = y, y.new_zeros(y.shape[0])
    for layer, head in zip(d.layers, d.heads, strict=True):
        h = F.leaky_relu(layer(pad(h, d._pads(layer), (False,) * d.cfg.dims)), d.cfg.slope)
        e = e + head(h).flatten(1).sum(1)
    return e


def variants(device: torch.device) -> list[tuple[str, Accel | None]]:
    """(name, accel) of the Langevin paths compared; accel None = the plain code."""
    if device.type == "cpu":
        return [("plain code", None), ("coopsynth (default)", Accel()), ("+ channels-last", Accel(channels_last=True))]
    tf32 = Accel.for_device(device, "tf32")  # also sets the global tf32 switches
    return [
        ("eager fp32", Accel(precision="fp32")),
        ("eager tf32", Accel(precision="tf32")),
        ("eager tf32 channels-last", Accel(precision="tf32", channels_last=True)),
        ("graph tf32 channels-last (default)", tf32),
        ("graph tf32", Accel(precision="tf32", graphs=True)),
        ("graph bf16 channels-last", Accel(precision="bf16", channels_last=True, graphs=True)),
    ]


def langevin_paths(device: torch.device, sizes: list[int], cfg, peak: float) -> list[str]:
    """Langevin steps/s of each path at the default batch; ratios to the first path of the run."""
    lines = [
        f"\nLangevin revision paths, batch {cfg.batch}, L = {cfg.langevin_steps} (ratio: to the first row of the same size)\n",
        "| size | path | Langevin steps/s | achieved GFLOP/s | roofline | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lang = cfg.langevin()
    for size in sizes:
        torch.manual_seed(0)
        base = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device)
        y0 = torch.randn(cfg.batch, 3, size, size, device=device)
        flops = 2 * conv_flops(base.descriptor, y0, base.descriptor)
        first = None
        for name, accel in variants(device):
            if accel is None:
                d = base.descriptor.requires_grad_(False)
                gen = torch.Generator(device=device).manual_seed(0)

                def fn():
                    return descriptor_langevin(lambda y: plain_energy(d, y), y0, steps=cfg.langevin_steps, generator=gen, **lang)
            else:
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = accel.precision != "fp32"
                m = CoopModel(cfg.net, base.mean, base.std, device, accel)
                m.descriptor.load_state_dict(base.descriptor.state_dict())
                gen = torch.Generator(device=device).manual_seed(0)

                def fn(m=m, gen=gen):
                    return m.revise(y0, steps=cfg.langevin_steps, generator=gen, **lang)

            try:
                t = timeit(fn, device)
            except Exception as e:  # a path this machine cannot run: say so, go on
                lines.append(f"| {size} | {name} | failed: {type(e).__name__} | | | |")
                continue
            sps = cfg.langevin_steps / t
            first = first or sps
            note = ""
            if accel is not None and accel.fallbacks:
                note = " (fell back to eager: " + "; ".join(accel.fallbacks) + ")"
            lines.append(
                f"| {size} | {name}{note} | {sps:.1f} | {flops * sps / 1e9:.1f} | {flops * sps / 1e9 / peak:.0%} | {sps / first:.2f}x |"
            )
            print(lines[-1], flush=True)
    return lines


def bench_device(device: torch.device, sizes: list[int], preset_name: str, big: int = 0) -> str:
    cfg = preset(preset_name)
    peak = matmul_peak(device)
    lines = [
        f"### {device.type.upper()}: preset `{preset_name}`, batch {cfg.batch}, L = {cfg.langevin_steps}; matrix-product peak {peak:.0f} GFLOP/s\n",
        "| size | iteration ms | generator pass | Langevin revision | descriptor update | generator update | Langevin steps/s | GFLOP per step | achieved GFLOP/s | roofline | sampling MP/s (no refine) | sampling MP/s (refine L) | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        data = torch.rand(3, max(size, 64) * 2, max(size, 64) * 2)
        c = type(cfg)(**{**cfg.__dict__, "crop": size})
        tr = CoopTrainer(data, c, device=device, seed=0)
        m = tr.model
        crop = tr.crop_size
        z = m.latent(c.batch, crop, tr.gen)

        t_gen = timeit(lambda: m.generator(z), device)
        y0 = m.generate(z, crop)
        lang = c.langevin()
        t_lang = timeit(lambda: m.revise(y0, steps=c.langevin_steps, generator=tr.gen, **lang), device)
        y = m.revise(y0, steps=c.langevin_steps, generator=tr.gen, **lang)
        obs, _ = tr.observed_batch()

        def d_update():
            loss = m.descriptor(y).mean() - m.descriptor(obs).mean()
            tr.opt_d.zero_grad()
            loss.backward()

        def g_update():
            loss = (m.generator(z) - y).pow(2).mean()
            tr.opt_g.zero_grad()
            loss.backward()

        t_d = timeit(d_update, device)
        t_g = timeit(g_update, device)
        t_iter = timeit(tr.step, device, repeat=2)
        flops_step = 2 * conv_flops(m.descriptor, y0, m.descriptor)  # forward + input-gradient backward
        steps_per_s = c.langevin_steps / t_lang
        achieved = flops_step * steps_per_s / 1e9
        mp = crop[0] * crop[1] / 1e6
        sm = CoopModel(c.net, m.mean, m.std, device)
        sm.generator.load_state_dict(m.generator.state_dict())
        sm.descriptor.load_state_dict(m.descriptor.state_dict())
        t_s0 = timeit(lambda: sm.sample(1, crop, refine=0, langevin=lang), device, repeat=2)
        t_sl = timeit(lambda: sm.sample(1, crop, refine=c.langevin_steps, langevin=lang), device, repeat=2)
        mem = peak_memory(device, tr.step)
        lines.append(
            f"| {size} | {t_iter * 1e3:.0f} | {t_gen * 1e3:.0f} | {t_lang * 1e3:.0f} | {t_d * 1e3:.0f} | {t_g * 1e3:.0f} | {steps_per_s:.1f} | "
            f"{flops_step / 1e9:.2f} | {achieved:.1f} | {achieved / peak:.0%} | {mp / t_s0:.2f} | {mp / t_sl:.2f} | {mem} |"
        )
        print(lines[-1], flush=True)
    # the headline sampling figure: one 1024x1024 texture inside the process
    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device)
    t1024 = timeit(lambda: m.sample(1, (1024, 1024), refine=0, langevin=cfg.langevin()), device, repeat=2, min_time=0.0)
    t1024r = timeit(
        lambda: m.sample(1, (1024, 1024), refine=cfg.langevin_steps, langevin=cfg.langevin()), device, repeat=1, min_time=0.0
    )
    lines.append(
        f"\n1024x1024 sample: {t1024:.2f} s generator only (`--refine 0`), {t1024r:.2f} s with the default {cfg.langevin_steps} Langevin refinements.\n"
    )
    if big:
        lines.append(big_sample(device, big))
    lines += langevin_paths(device, sizes, cfg, peak)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda too when present)")
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--big", type=int, default=8192, help="side of the large-sample check (0: skip)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    devices = [args.device] if args.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    text = header("Speed")
    for d in devices:
        if d == "cuda" and not torch.cuda.is_available():
            print("cuda: skipped (no CUDA device)")
            continue
        text += bench_device(torch.device(d), sizes, args.preset, args.big) + "\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
