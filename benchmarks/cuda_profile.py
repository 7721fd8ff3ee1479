"""Where a CUDA Langevin step's time goes, and what a compiler makes of it.

1. The GPU kernels of eager Langevin revisions at the default batch, per setting, from
   torch.profiler, summed by kernel name: each kernel's share of GPU time, its microseconds per
   Langevin step, and the GPU's busy time against the wall time per step (the rest is the host
   launching work, which the CUDA graph removes).
2. With --compile, instead: the descriptor compiled by torch.compile (Inductor, max-autotune without its
   own CUDA graphs; the revision is still captured as our graph), timed against the default
   graph path in interleaved rounds, with its compile time and its agreement with the default.

    python benchmarks/cuda_profile.py --sizes 128,512
    python benchmarks/cuda_profile.py --sizes 512 --compile   # the compiler instead (minutes)

CUDA only: without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, publish  # noqa: E402
from speed import conv_flops, descriptor_form, sync, timeit_all  # noqa: E402

from coopsynth.accel import Accel, agrees_in_norm  # noqa: E402
from coopsynth.model import CoopModel  # noqa: E402
from coopsynth.trainer import preset  # noqa: E402

SETTINGS = (  # (name, precision, channels-last, cuDNN autotuning (torch.backends.cudnn.benchmark), speed.descriptor_form)
    ("tf32 (default)", "tf32", False, False, ""),
    ("tf32, first layer on 16 channels + replicate padding by copies", "tf32", False, False, "first16+pad_copies"),
    ("tf32, cuDNN autotuning", "tf32", False, True, ""),
    ("bf16", "bf16", False, False, ""),
    ("bf16 channels-last", "bf16", True, False, ""),
)
TOP = 10  # kernels listed per setting


def switches(precision: str, autotune: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.benchmark = autotune


def model(cfg, accel: Accel) -> CoopModel:
    torch.manual_seed(0)
    return CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), "cuda", accel)


def kernel_table(cfg, size: int) -> list[str]:
    lang, steps = cfg.langevin(), cfg.langevin_steps
    y0 = torch.randn(cfg.batch, 3, size, size, device="cuda")
    lines = []
    for name, precision, cl, autotune, form in SETTINGS:
        switches(precision, autotune)
        m = model(cfg, Accel(precision=precision, channels_last=cl))
        gen = torch.Generator(device="cuda").manual_seed(0)

        def run(m=m, gen=gen, form=form):
            with descriptor_form(form):
                return m.revise(y0, steps=steps, generator=gen, **lang)

        rounds = 3
        wall = timeit_all({"r": run}, torch.device("cuda"))["r"] / steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(rounds):
                run()
            sync(torch.device("cuda"))
        per_kernel: dict[str, float] = defaultdict(float)
        for evt in prof.events():
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                per_kernel[evt.name] += evt.time_range.elapsed_us() / (rounds * steps)
        busy = sum(per_kernel.values())
        flops = 2 * conv_flops(m.descriptor, y0)
        lines += [
            f"\n#### {size} px, {name}: {wall * 1e6:.0f} us per Langevin step (wall), GPU busy {busy:.0f} us "
            f"({busy / (wall * 1e6):.0%}); {flops / wall / 1e12:.1f} TFLOP/s at the wall time, "
            f"{flops / (busy * 1e-6) / 1e12:.1f} TFLOP/s at the busy time\n",
            "| kernel | us per step | share of GPU time |",
            "|---|---|---|",
        ]
        for k, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:TOP]:
            short = k if len(k) <= 90 else k[:87] + "..."
            lines.append(f"| `{short}` | {us:.1f} | {us / busy:.1%} |")
        print("\n".join(lines[-TOP - 4 :]), flush=True)
    return lines


def compiled_rows(cfg, size: int) -> list[str]:
    """The default graph path against the same with the descriptor compiled by Inductor."""
    lang, steps = cfg.langevin(), cfg.langevin_steps
    switches("tf32", False)
    y0 = torch.randn(cfg.batch, 3, size, size, device="cuda")
    ref = model(cfg, Accel(precision="tf32", graphs=True))
    comp = model(cfg, Accel(precision="tf32", graphs=True))
    comp.descriptor.forward = torch.compile(comp.descriptor.forward, mode="max-autotune-no-cudagraphs", dynamic=False)

    def run(m: CoopModel, seed: int = 0) -> torch.Tensor:
        return m.revise(y0, steps=steps, generator=torch.Generator(device="cuda").manual_seed(seed), **lang)

    t0 = time.perf_counter()
    out = run(comp)
    sync(torch.device("cuda"))
    compile_s = time.perf_counter() - t0
    want = run(ref)
    ok = agrees_in_norm(out, want, (want - y0).double().norm(), 0.02)
    t = timeit_all({"default": lambda: run(ref), "compiled": lambda: run(comp)}, torch.device("cuda"))
    flops = 2 * conv_flops(ref.descriptor, y0)
    rows = []
    for name, key in (
        ("graph tf32 (default)", "default"),
        ("the same, descriptor compiled (max-autotune)", "compiled"),
    ):
        sps = steps / t[key]
        rows.append(f"| {size} | {name} | {sps:.1f} | {flops * sps / 1e12:.1f} | {t['default'] / t[key]:.2f}x |")
    fallbacks = "; ".join(comp.accel.fallbacks) or "none"
    rows.append(
        f"\nCompiling took {compile_s:.0f} s (first revision); the compiled revision agrees with the default "
        f"(difference within 2% of the revision, in norm): {'yes' if ok else 'NO'}; fallbacks: {fallbacks}.\n"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,512")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--compile", action="store_true", help="time the descriptor compiled by torch.compile instead")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("cuda_profile: skipped (no CUDA device)")
        return
    cfg = preset(args.preset)
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.compile:
        text = header("CUDA kernels of a Langevin step") + (
            f"Preset `{args.preset}`, batch {cfg.batch}, L = {cfg.langevin_steps}; eager revisions (the graph runs the same "
            "kernels without the host's gaps). Kernel times from torch.profiler, summed by kernel name, per Langevin step.\n"
        )
        for size in sizes:
            text += "\n".join(kernel_table(cfg, size)) + "\n"
    else:
        text = header("torch.compile of the descriptor on CUDA")
        rows = [
            "\n### torch.compile of the descriptor, in interleaved rounds\n",
            "| size | path | Langevin steps/s | achieved TFLOP/s | vs default |",
            "|---|---|---|---|---|",
        ]
        for size in sizes:
            try:
                rows += compiled_rows(cfg, size)
            except Exception as e:  # the compiler failing is a finding, not the end of the run
                rows.append(f"| {size} | compile failed: {type(e).__name__}: {str(e).splitlines()[0][:100]} | | | |")
            print("\n".join(rows), flush=True)
        text += "\n".join(rows) + "\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
