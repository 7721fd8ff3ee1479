"""Speed benchmark: where a training iteration's time goes, Langevin throughput against the
machine's matrix-product peak (the roofline ratio), sampling speed, and the Langevin revision's
speed paths side by side (plain code, autograd and the closed-form gradient on a CPU; eager vs
CUDA graph, fp32/tf32/bf16 and channels-last on a GPU), as ratios measured in the same run.

    python benchmarks/speed.py                 # CPU, sizes 64..512, default preset networks
    python benchmarks/speed.py --device cuda   # on a GPU (also run by default when one is present)
    python benchmarks/speed.py --only threads  # CPU: the revision at 1 thread and at all, against the product
    python benchmarks/speed.py --only forms    # the generator's blocks, folded or not, and linear against nearest
    python benchmarks/speed.py --only layouts  # the generator, contiguous against channels-last
    python benchmarks/speed.py --only interleave  # the generator's interleave: its own backward against autograd's
    python benchmarks/speed.py --only sampling  # the 1024x1024 sample (matched and not), a long video, the 8192x8192 one
    python benchmarks/speed.py --only outconv  # the video generator's output conv: layout, and whole against split

Everything is measured in this one run, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, publish  # noqa: E402

from coopsynth import (
    cpugrad,  # noqa: E402
    networks,  # noqa: E402
)
from coopsynth import langevin as langevin_module  # noqa: E402
from coopsynth import model as model_module  # noqa: E402
from coopsynth.accel import Accel, cpu_has_bf16, keep_freed_memory  # noqa: E402
from coopsynth.completion import complete  # noqa: E402
from coopsynth.cpugrad import unpad  # noqa: E402
from coopsynth.histogram import quantile_function  # noqa: E402
from coopsynth.langevin import descriptor_langevin  # noqa: E402
from coopsynth.model import CoopModel  # noqa: E402
from coopsynth.networks import Descriptor, pad  # noqa: E402
from coopsynth.trainer import CoopTrainer, preset  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit_all(
    fns: dict[str, Callable[[], object]], device: torch.device, repeat: int = 10, min_time: float = 0.1
) -> dict[str, float]:
    """Best mean seconds per call of each function over `repeat` rounds of at least `min_time`
    each, the rounds of all the functions interleaved (in turn, the order reversed every other
    round). One synchronisation per round, not per call: on a GPU the calls queue up as they would
    in a run. On a shared machine another tenant's work comes in bursts of seconds: timed one
    after another, two functions can land in different bursts (the same Langevin revision, timed
    twice in one run, once differed by 1.4x), while interleaved rounds see the same machine, so the
    ratios between them hold."""
    calls = {}
    for name, fn in fns.items():
        fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        calls[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    best = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, n = fns[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def timeit(fn: Callable[[], object], device: torch.device, repeat: int = 10, min_time: float = 0.1) -> float:
    """Best mean seconds per call of one function (see timeit_all)."""
    return timeit_all({"fn": fn}, device, repeat, min_time)["fn"]


def matmul(device: torch.device, precision: str) -> tuple[Callable[[], object], float]:
    """A large square matrix product in one precision, as (the call, its FLOPs): the arithmetic
    peak a path of that precision is compared with. The tf32 switch is set inside the call, so
    the product can be interleaved with paths of other precisions."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def call() -> None:
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            a @ b
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved

    return call, 2.0 * n**3


def precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions with a matrix-product peak of their own: on a CPU fp32 (tf32 is fp32 there),
    and bf16 where the CPU has bf16 units (elsewhere no bf16 path runs)."""
    if device.type == "cpu":
        return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)
    return ("fp32", "tf32", "bf16")


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """GFLOP/s of a large square matrix product in each precision a path can run in (on a CPU
    fp32 stands in for tf32, and for bf16 without bf16 units), measured together at the start of
    the run."""
    calls = {p: matmul(device, p) for p in precisions(device)}
    t = timeit_all({p: call for p, (call, _) in calls.items()}, device)
    peaks = {p: calls[p][1] / t[p] / 1e9 for p in calls}
    return {p: peaks.get(p, peaks["fp32"]) for p in ("fp32", "tf32", "bf16")}


def conv_flops(d: Descriptor, x: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of the descriptor's convolutions on x, from the layer shapes.
    Counted on the plain formulation, whose layers are module calls (the fast path computes the
    first layer with F.conv2d, which hooks would miss); the 1x1 read-outs are not counted."""
    total = 0.0

    def hook(m, inp, out):
        nonlocal total
        k = 1
        for s in m.kernel_size:
            k *= s
        total += 2.0 * out.numel() * (m.in_channels // m.groups) * k

    hs = [m.register_forward_hook(hook) for m in d.layers]
    try:
        with torch.no_grad():
            plain_energy(d, x)
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
import resource, sys, time, torch
from coopsynth.accel import Accel, keep_freed_memory
from coopsynth.histogram import quantile_function
from coopsynth.model import CoopModel
from coopsynth.trainer import preset
device, side, keep, repeat = torch.device(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "keep", int(sys.argv[4])
if keep:
    keep_freed_memory()
cfg = preset("default")
accel = Accel.for_device(device).for_sampling(device)  # what `coopsynth sample` uses
m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, accel)
m.quantiles = quantile_function(torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0)) ** 2)  # histogram-matched
times = []
for _ in range(repeat):
    t = time.perf_counter()
    y = m.sample(1, (side, side), refine=cfg.langevin_steps, langevin=cfg.langevin())
    assert torch.isfinite(y).all()
    times.append(time.perf_counter() - t)
try:  # this process's own peak: ru_maxrss would count the parent's resident memory at the fork
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(accel.precision, hwm / 2**20, *times)
"""


def fresh_sample(device: torch.device, side: int, keep: bool, repeat: int = 1) -> tuple[str, float, list[float]]:
    """side x side samples with the default refinement in a fresh process, as `coopsynth sample`
    makes them (its precision; `keep`: freed memory kept for reuse, as the CLI sets it): the
    precision, the process's peak resident memory in GiB, and the seconds of each sample."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-c", BIG, device.type, str(side), "keep" if keep else "default", str(repeat)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=root)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    precision, rss, *times = r.stdout.split()
    return precision, float(rss), [float(t) for t in times]


def with_quantiles(m: CoopModel) -> CoopModel:
    """The model with a training image's quantiles, as a trained model has: its image samples are
    histogram-matched, as `coopsynth sample` writes them."""
    m.quantiles = quantile_function(torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0)) ** 2)
    return m


LONG_VIDEO = (200, 256, 256)  # frames, height, width of the long video `sampling` times


def sampling(device: torch.device, cfg, big: int) -> list[str]:
    """The headline sampling figures: one 1024x1024 texture inside the process in each precision
    (`--precision`; bf16 on a CPU needs AVX512-BF16 or AMX to pay off), histogram-matched as the
    CLI writes it and, the same sample, unmatched; one long video (LONG_VIDEO, in time windows);
    then the large sample in a fresh process."""
    lines = [""]
    for precision in ("tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16"):
        m = with_quantiles(
            CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel.for_device(device, precision))
        )
        lang, steps = cfg.langevin(), cfg.langevin_steps
        t = timeit_all(
            {
                "0": lambda: m.sample(1, (1024, 1024), refine=0, langevin=lang),
                "L": lambda: m.sample(1, (1024, 1024), refine=steps, langevin=lang),
                "L unmatched": lambda: m.sample(1, (1024, 1024), refine=steps, langevin=lang, match=False),
            },
            device,
            repeat=3,
        )
        lines.append(
            f"1024x1024 sample, `--precision {precision}`: {t['0']:.2f} s generator only (`--refine 0`), "
            f"{t['L']:.2f} s with the default {steps} Langevin refinements; {t['L unmatched']:.2f} s of the same without "
            "histogram matching (`--no-match-histogram`).\n"
        )
    for precision in ("tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16"):
        mv = CoopModel(
            preset("default", dims=3).net,
            torch.full((3,), 0.5),
            torch.full((3,), 0.2),
            device,
            Accel.for_device(device, precision),
        )
        t = timeit_all({"v": lambda: mv.sample(1, LONG_VIDEO, refine=0, langevin=cfg.langevin())}, device, repeat=2, min_time=0.0)
        frames, h, w = LONG_VIDEO
        lines.append(
            f"{frames}-frame {h}x{w} video sample (the video preset's generator; no refinement, its default), "
            f"`--precision {precision}`: {t['v']:.2f} s.\n"
        )
    if device.type == "cpu":
        lines.append(allocator_sides(device))
    if big:
        lines.append(big_sample(device, big))
    return lines


def big_sample(device: torch.device, side: int) -> str:
    """One side x side sample in a fresh process, as the CLI makes it: seconds and the process's
    peak resident memory (the windowed generator and Langevin keep it bounded)."""
    try:
        precision, rss, (t,) = fresh_sample(device, side, keep=True)
    except RuntimeError as e:
        return f"{side}x{side} sample: failed ({e})\n"
    steps = preset("default").langevin_steps
    return f"{side}x{side} sample with {steps} refinements ({precision}, as `coopsynth sample`): {t:.0f} s, peak resident memory {rss:.1f} GiB.\n"


def allocator_sides(device: torch.device, side: int = 1024, pairs: int = 2) -> str:
    """The C allocator's setting side by side: side x side samples (two per process, the first is
    what one `coopsynth sample` pays) in fresh processes with glibc's defaults and with freed
    memory kept for reuse (`accel.keep_freed_memory`, which the CLI sets), the processes
    alternating; the best of `pairs` processes each."""
    best: dict[bool, list[float]] = {False: [float("inf")] * 2, True: [float("inf")] * 2}
    rss: dict[bool, float] = {False: 0.0, True: 0.0}
    precision = "?"
    try:
        for _ in range(pairs):
            for keep in (False, True):
                precision, r, times = fresh_sample(device, side, keep, repeat=2)
                best[keep] = [min(a, b) for a, b in zip(best[keep], times, strict=True)]
                rss[keep] = max(rss[keep], r)
    except RuntimeError as e:
        return f"{side}x{side} sample, allocator settings: failed ({e})\n"
    d, k = best[False], best[True]
    return (
        f"{side}x{side} sample with refinement ({precision}) in a fresh process, first / second sample: glibc's defaults "
        f"{d[0]:.2f} / {d[1]:.2f} s ({rss[False]:.2f} GiB); freed memory kept for reuse, as the CLI runs "
        f"{k[0]:.2f} / {k[1]:.2f} s ({rss[True]:.2f} GiB); {d[0] / k[0]:.2f}x / {d[1] / k[1]:.2f}x.\n"
    )


def plain_energy(d: Descriptor, y: torch.Tensor) -> torch.Tensor:
    """The descriptor as first written: module convs throughout, 1x1 read-outs as convolutions."""
    h, e = y, y.new_zeros(y.shape[0])
    for layer, head in zip(d.layers, d.heads, strict=True):
        h = F.leaky_relu(layer(pad(h, d._pads(layer), (False,) * d.cfg.dims)), d.cfg.slope)
        e = e + head(h).flatten(1).sum(1)
    return e


@dataclass
class LangevinPath:
    name: str
    accel: Accel | None  # None: the plain code (CPU only)
    twin: str | None = None  # CUDA: the eager path with the same precision and memory format; CPU: autograd
    form: str = ""  # another formulation of the descriptor, the same numbers (see descriptor_form)


def variants(device: torch.device) -> list[LangevinPath]:
    """The Langevin paths compared; the first one of a size is the baseline of the ratio column."""
    if device.type == "cpu":
        paths = [
            LangevinPath("plain code", None),
            LangevinPath("autograd", Accel(closed_form=False)),
            LangevinPath("coopsynth (default): closed-form gradient", Accel(), "autograd"),
            LangevinPath("autograd, channels-last", Accel(channels_last=True), "autograd"),
        ]
        if cpu_has_bf16():  # what sampling runs on this CPU (Accel.for_sampling)
            bf = "bf16 autograd (autocast)"
            paths += [
                LangevinPath(bf, Accel(precision="bf16", closed_form=False)),
                LangevinPath("bf16 closed-form gradient (sampling default here)", Accel(precision="bf16"), bf),
            ]
        return paths
    # CUDA: eager and graph twins per setting. The first row, the ratios' baseline, is PyTorch's
    # defaults (tf32 convolutions, no graph), which is also coopsynth's eager path
    e_tf, e32, e_bf = "eager tf32 (PyTorch's defaults)", "eager fp32", "eager bf16"
    e_tf_cl = "eager tf32 channels-last"
    return [
        LangevinPath(e_tf, Accel(precision="tf32")),
        LangevinPath("graph tf32 (default)", Accel(precision="tf32", graphs=True), e_tf),
        LangevinPath("graph tf32, every layer space-to-depth", Accel(precision="tf32", graphs=True), e_tf, "depth_all"),
        LangevinPath("graph tf32, first layer on 16 channels", Accel(precision="tf32", graphs=True), e_tf, "first16"),
        LangevinPath("graph tf32, replicate padding by copies", Accel(precision="tf32", graphs=True), e_tf, "pad_copies"),
        LangevinPath("graph tf32, first16 + padding by copies", Accel(precision="tf32", graphs=True), e_tf, "first16+pad_copies"),
        LangevinPath(e32, Accel(precision="fp32")),
        LangevinPath("graph fp32", Accel(precision="fp32", graphs=True), e32),
        LangevinPath(e_tf_cl, Accel(precision="tf32", channels_last=True)),
        LangevinPath("graph tf32 channels-last", Accel(precision="tf32", channels_last=True, graphs=True), e_tf_cl),
        LangevinPath(
            "graph tf32 channels-last, first16 + padding by copies",
            Accel(precision="tf32", channels_last=True, graphs=True),
            e_tf_cl,
            "first16+pad_copies",
        ),
        LangevinPath(e_bf, Accel(precision="bf16")),
        LangevinPath("graph bf16", Accel(precision="bf16", graphs=True), e_bf),
        LangevinPath("graph bf16, first16 + padding by copies", Accel(precision="bf16", graphs=True), e_bf, "first16+pad_copies"),
    ]


def peak_text(device: torch.device, peaks: dict[str, float]) -> str:
    if device.type == "cpu":
        bf = f", bf16 {peaks['bf16']:.0f} GFLOP/s" if "bf16" in precisions(device) else ""
        return f"{peaks['fp32']:.0f} GFLOP/s (fp32; tf32 is fp32 on a CPU){bf}"
    return ", ".join(f"{k} {v / 1e3:.1f} TFLOP/s" for k, v in peaks.items()) + " (fp32: no tensor cores)"


class _PadByCopies(torch.autograd.Function):
    """Replicate padding of the trailing axes as one copy into the padded tensor plus copies of
    its edges, and its gradient as one copy plus border sums folded onto the edges (cpugrad.unpad).
    F.pad's CUDA backward scatters with atomics: 16% of a 512 px Langevin step on an H100
    (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, amounts: tuple[tuple[int, int], ...]) -> torch.Tensor:
        n, sizes = len(amounts), x.shape[-len(amounts) :]
        shape = (*x.shape[:-n], *(s + lo + hi for s, (lo, hi) in zip(sizes, amounts, strict=True)))
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        keep = fmt is not None and n == x.dim() - 2 and x.is_contiguous(memory_format=fmt) and not x.is_contiguous()
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt if keep else torch.contiguous_format)
        inner = tuple(slice(lo, lo + s) for s, (lo, _) in zip(sizes, amounts, strict=True))
        out[(..., *inner)] = x
        for i, ((lo, hi), s) in enumerate(zip(amounts, sizes, strict=True)):  # axis by axis: corners too
            before, after = (slice(None),) * i, inner[i + 1 :]
            if lo:
                out[(..., *before, slice(0, lo), *after)] = out[(..., *before, slice(lo, lo + 1), *after)]
            if hi:
                out[(..., *before, slice(lo + s, None), *after)] = out[(..., *before, slice(lo + s - 1, lo + s), *after)]
        ctx.amounts = amounts
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        # padding's adjoint, as the CPU closed form folds it (in place, hence on a copy of g)
        return unpad(g.clone(), ctx.amounts, (False,) * len(ctx.amounts)), None


def pad_by_copies(x: torch.Tensor, amount: tuple, wrap: tuple[bool, ...]) -> torch.Tensor:
    """networks.pad with its replicated axes padded by _PadByCopies (circular ones as before)."""
    pairs = [a if isinstance(a, tuple) else (a, a) for a in amount]
    x = networks_pad(x, tuple(p if w else (0, 0) for p, w in zip(pairs, wrap, strict=True)), wrap)
    rep = tuple((0, 0) if w else p for p, w in zip(pairs, wrap, strict=True))
    return _PadByCopies.apply(x, rep) if any(lo or hi for lo, hi in rep) else x


def first_layer_16(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """networks._strided_conv with the space-to-depth input's channels (12 for colour) padded with
    zeros to a multiple of 16, weights likewise. On an H100, cuDNN ran three of a 512 px step's
    convolutions in plain fp32, not on tensor cores (27% of its GPU time, benchmarks/RESULTS.md).
    The 12-channel first layer is the likely one; this form tests that."""
    if x.dim() != 4 or not networks.folds_to_depth(layer, x.shape):
        return networks_strided_conv(layer, x)
    xs, w = networks.space_to_depth(x), networks.depth_weight(layer.weight)  # (B, 4C, h, w), (O, 4C, k/2, k/2)
    extra = -xs.shape[1] % 16
    xs, w = F.pad(xs, (0, 0, 0, 0, 0, extra)), F.pad(w, (0, 0, 0, 0, 0, extra))
    return F.conv2d(xs, w, layer.bias)


networks_pad, networks_strided_conv, networks_folds_to_depth = networks.pad, networks._strided_conv, networks.folds_to_depth


@contextlib.contextmanager
def descriptor_form(form: str):
    """The descriptor computed another way, with the same numbers up to rounding:
    depth_all   every stride-2 layer through space-to-depth, not only the first
    first16     the first layer's space-to-depth input padded with zero channels to 16 (first_layer_16)
    pad_copies  replicate padding by copies (pad_by_copies)
    several joined by "+" apply together."""
    forms = set(form.split("+")) - {""}  # "first16+pad_copies": both
    if forms - {"depth_all", "first16", "pad_copies"}:
        raise ValueError(form)
    if "depth_all" in forms:
        networks.folds_to_depth = lambda layer, shape: (
            layer.stride[-2:] == (2, 2)
            and not (layer.kernel_size[-2] % 2 or layer.kernel_size[-1] % 2 or shape[-2] % 2 or shape[-1] % 2)
        )
    if "first16" in forms:
        networks._strided_conv = first_layer_16
    if "pad_copies" in forms:
        networks.pad = pad_by_copies
    try:
        yield
    finally:
        networks.pad, networks._strided_conv, networks.folds_to_depth = (
            networks_pad,
            networks_strided_conv,
            networks_folds_to_depth,
        )


def path_call(device: torch.device, path: LangevinPath, fn: Callable[[], object]) -> Callable[[], object]:
    """fn under the path's process-wide settings (the tf32 switches, the layers' formulation), set
    at every call so that paths can take turns."""
    tf32 = path.accel is not None and path.accel.precision != "fp32"

    def call() -> object:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        with descriptor_form(path.form):
            return fn()

    return call


def langevin_paths(device: torch.device, sizes: list[int], cfg) -> list[str]:
    """Langevin steps/s of each path at the default batch; each path's roofline against the
    matrix-product peak of its own precision; speed-ups against the first path of the size and
    against the path's twin (on CUDA the eager path of the same precision and memory format, on a
    CPU the autograd formulation of the same precision). Per size, the paths and the
    matrix products take turns round by round (`timeit_all`)."""
    lines = [
        f"\nLangevin revision paths, batch {cfg.batch}, L = {cfg.langevin_steps}. Per size, the paths and the matrix products "
        "take turns round by round. Roofline: against the matrix-product peak of the path's precision measured in those "
        "rounds. Ratios: to the first path of the size, and to the path's twin (CUDA: the eager path of the same precision and layout; "
        "CPU: the same precision through autograd).\n",
        "| size | path | Langevin steps/s | achieved GFLOP/s | peak GFLOP/s | roofline | vs first | vs twin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lang = cfg.langevin()
    for size in sizes:
        torch.manual_seed(0)
        base = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel(precision="fp32"))
        y0 = torch.randn(cfg.batch, 3, size, size, device=device)
        flops = 2 * conv_flops(base.descriptor, y0)  # forward + input gradient
        runs: dict[str, tuple[LangevinPath, Callable[[], object]]] = {}
        for path in variants(device):
            accel = path.accel
            gen = torch.Generator(device=device).manual_seed(0)
            if accel is None:
                d = base.descriptor.requires_grad_(False)

                def fn(d=d, gen=gen):
                    return descriptor_langevin(lambda y: plain_energy(d, y), y0, steps=cfg.langevin_steps, generator=gen, **lang)
            else:
                m = CoopModel(cfg.net, base.mean, base.std, device, accel)
                m.descriptor.load_state_dict(base.descriptor.state_dict())

                def fn(m=m, gen=gen):
                    return m.revise(y0, steps=cfg.langevin_steps, generator=gen, **lang)

            call = path_call(device, path, fn)
            try:
                call()  # the first call captures a graph path's CUDA graph
                sync(device)
            except Exception as e:  # a path this machine cannot run: say so, go on
                lines.append(f"| {size} | {path.name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | | |")
                print(lines[-1], flush=True)
                continue
            runs[path.name] = (path, call)
        products = {p: matmul(device, p) for p in precisions(device)}
        try:
            t = timeit_all(
                {**{k: c for k, (_, c) in runs.items()}, **{f"matmul {p}": c for p, (c, _) in products.items()}}, device
            )
        except Exception as e:  # a fault while the paths take turns: say so, go on with the next size
            lines.append(f"| {size} | timing failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | | | |")
            print(lines[-1], flush=True)
            continue
        peak = {p: f / t[f"matmul {p}"] / 1e9 for p, (_, f) in products.items()}
        del products
        speed = {name: cfg.langevin_steps / t[name] for name in runs}
        first = next(iter(speed.values()), None)
        for name, (path, _) in runs.items():
            sps = speed[name]
            note = ""
            if path.accel is not None and path.accel.fallbacks:
                note = " (fell back to eager: " + "; ".join(path.accel.fallbacks) + ")"
            pk = peak.get(path.accel.precision if path.accel is not None else "fp32", peak["fp32"])
            twin = f"{sps / speed[path.twin]:.2f}x" if path.twin in speed else ""
            lines.append(
                f"| {size} | {name}{note} | {sps:.1f} | {flops * sps / 1e9:.1f} | {pk:.0f} | {flops * sps / 1e9 / pk:.1%} | {sps / first:.2f}x | {twin} |"
            )
            print(lines[-1], flush=True)
    return lines


def pair_row(
    name: str, first: Callable[[], object], second: Callable[[], object], device: torch.device, repeat: int, min_time: float
) -> str:
    """One row of a side-by-side table: two ways of doing `name`, timed in interleaved rounds
    (`timeit_all`), and the second's speed-up; a fault is said in the row, and the table goes on."""
    try:
        t = timeit_all({"first": first, "second": second}, device, repeat=repeat, min_time=min_time)
    except Exception as e:
        return f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | |"
    return f"| {name} | {ms(t['first'])} ms | {ms(t['second'])} ms | {t['first'] / t['second']:.2f}x |"


def pair_table(
    title: str, head: tuple[str, str, str], rows: list[tuple[str, Callable, Callable]], device: torch.device, repeat: int
) -> list[str]:
    """A side-by-side table: `title`, the columns of `head` (first, second, the second's speed-up)
    and a `pair_row` per (name, first, second), each printed as it is timed."""
    lines = [title, f"| what | {head[0]} | {head[1]} | {head[2]} |", "|---|---|---|---|"]
    for name, first, second in rows:
        lines.append(pair_row(name, first, second, device, repeat, 0.0))
        print(lines[-1], flush=True)
    return lines


def generator_forms(device: torch.device, sizes: list[int], cfg) -> list[str]:
    """The generator's up-sampling blocks in both formulations, in interleaved rounds: up-sampling
    (the preset's mode, nearest or linear) then the 3x3 conv (the plain form) against the conv
    folded onto the input's resolution (`networks._upsampled_conv` for nearest, from SUBPIXEL_MIN
    input positions up; `networks._linear_upsampled_conv` for linear, from LINEAR_FOLD_MIN). The
    same numbers (tested); a training iteration per crop size up to 256 px and a 1024x1024 sample.
    Then the price of the mode: a training iteration with linear against nearest up-sampling, each
    in its default form."""
    mode = cfg.net.g_upsample
    knob = "SUBPIXEL_MIN" if mode == "nearest" else "LINEAR_FOLD_MIN"
    default = getattr(networks, knob)
    cpu_min = default.get("cpu", math.inf)

    def form(threshold: float, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            setattr(networks, knob, {device.type: threshold})
            return fn()

        return call

    folds = device.type in default  # the default on this device: folded (from cpu_min positions up) or plain
    lines = [
        f"\nGenerator up-sampling blocks ({mode}, the preset's), in interleaved rounds: {mode} up-sampling then the 3x3 "
        f"conv, against the conv folded onto the input's resolution from {cpu_min} input positions per channel up (the "
        f"same numbers). The default on {device.type.upper()}: {'folded' if folds else 'up-sample then conv'}.\n",
        f"| what | up-sample then conv{'' if folds else ' (default)'} | folded{' (default)' if folds else ''} | folded's speed-up |",
        "|---|---|---|---|",
    ]
    try:
        cases: list[tuple[str, Callable[[], object]]] = []
        for size in [s for s in sizes if s <= 256]:
            c = replace(cfg, crop=size)
            tr = CoopTrainer(torch.rand(3, max(size, 64) * 2, max(size, 64) * 2), c, device=device, seed=0)
            cases.append((f"training iteration, {size} px crop", tr.step))
        m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device)
        for refine in (0, cfg.langevin_steps):
            cases.append(
                (
                    f"1024x1024 sample, refine {refine}",
                    lambda r=refine: m.sample(1, (1024, 1024), refine=r, langevin=cfg.langevin()),
                )
            )
        for name, fn in cases:
            big = name.startswith(("1024", "video"))
            lines.append(pair_row(name, form(math.inf, fn), form(cpu_min, fn), device, 3 if big else 6, 0.0 if big else 0.1))
            print(lines[-1], flush=True)
    finally:
        setattr(networks, knob, default)
    lines += [
        "\nThe price of linear up-sampling (the image preset's since 2026-11-27): a training iteration with nearest "
        "against linear up-sampling, each folded as by default, in interleaved rounds.\n",
        "| what | nearest | linear | linear's speed-up |",
        "|---|---|---|---|",
    ]
    for size in [s for s in sizes if s <= 256]:
        steps = []
        for up in ("nearest", "linear"):
            c = replace(cfg, crop=size, net=replace(cfg.net, g_upsample=up))
            steps.append(CoopTrainer(torch.rand(3, max(size, 64) * 2, max(size, 64) * 2), c, device=device, seed=0).step)
        lines.append(pair_row(f"training iteration, {size} px crop", *steps, device, 6, 0.1))
        print(lines[-1], flush=True)
    return lines


VIDEO_SAMPLE = (64, 256, 256)  # frames, height, width of the video sample timed in generator_layouts


def generator_layouts(device: torch.device, cfg) -> list[str]:
    """The generator in the contiguous layout against channels-last, in interleaved rounds: image
    and video sampling (`model.SAMPLE_CHANNELS_LAST`, the device types that sample channels-last,
    channels-last-3d for videos: VIDEO_SAMPLE frames, height, width) and, for
    training, one forward and backward pass at the preset's batch and at its crop and twice that,
    with the output conv channels-last (`networks.OUTPUT_CHANNELS_LAST`: the last block writes
    channels-last) and with every block channels-last (a channels-last Z, as training runs where
    `model.TRAIN_CHANNELS_LAST` says so), and completion's latent inference, which lays Z out as
    training does (`CoopModel.graph_layout`; a 1024x1024 image with a 400x400 hole). On a CPU with
    bf16 units, the samples and the every-block pass again in bf16 (the precision sampling picks
    there)."""
    defaults = model_module.SAMPLE_CHANNELS_LAST, networks.OUTPUT_CHANNELS_LAST, model_module.TRAIN_CHANNELS_LAST
    cl, out_cl, train_cl = (device.type in d for d in defaults)
    training = (
        "every block channels-last (images; videos contiguous)"
        if train_cl
        else "the output conv channels-last, the rest contiguous"
        if out_cl
        else "contiguous"
    )
    lines = [
        "\nGenerator memory layout, in interleaved rounds: contiguous (NCHW) against channels-last (NHWC). By default on "
        f"{device.type.upper()} image and video sampling run {'channels-last (videos: channels-last-3d)' if cl else 'contiguous'} "
        f"and training runs {training}. The same numbers up to rounding.\n",
        "| what | contiguous | channels-last | channels-last's speed-up |",
        "|---|---|---|---|",
    ]
    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel.for_device(device, "tf32"))

    def layout(sample_last: bool, output_last: bool, fn: Callable[[], object], train_last: bool = False) -> Callable[[], object]:
        def call() -> object:
            model_module.SAMPLE_CHANNELS_LAST = {device.type} if sample_last else set()
            networks.OUTPUT_CHANNELS_LAST = {device.type} if output_last else set()
            model_module.TRAIN_CHANNELS_LAST = {device.type} if train_last else set()
            return fn()

        return call

    bf16 = Accel.for_device(device, "bf16") if device.type == "cpu" and "bf16" in precisions(device) else None

    def train_pass(z: torch.Tensor, accel: Accel | None = None) -> Callable[[], object]:
        target = torch.randn(cfg.batch, 3, *(n * u for n, u in zip(z.shape[2:], cfg.net.up, strict=True)), device=device)

        def call() -> object:  # the trainer's MCMC-teaching loss: a contiguous target first
            m.generator.zero_grad(set_to_none=True)
            with m.using(accel or m.accel), m.accel.autocast(device):
                y = m.generator(z).float()
            return (target - y).pow(2).mean().backward()

        return call

    cases = []
    for accel, tag in ((None, ""), (bf16, ", bf16")) if bf16 else ((None, ""),):
        for refine in (0, cfg.langevin_steps):

            def sample(r: int = refine, a: Accel | None = accel) -> object:
                with m.using(a or m.accel):
                    return m.sample(1, (1024, 1024), refine=r, langevin=cfg.langevin())

            cases.append((f"1024x1024 sample, refine {refine}{tag}", layout(False, False, sample), layout(True, True, sample)))
    # videos: the video preset's generator (the presets differ in steps and batch only), no
    # refinement (the video preset's sample_refine); SAMPLE_CHANNELS_LAST lays Z out channels-last-3d
    mv = CoopModel(preset("default", dims=3).net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, m.accel)
    for accel, tag in ((None, ""), (bf16, ", bf16")) if bf16 else ((None, ""),):

        def video(a: Accel | None = accel) -> object:
            with mv.using(a or mv.accel):
                return mv.sample(1, VIDEO_SAMPLE, refine=0, langevin=cfg.langevin())

        name = f"video sample, {VIDEO_SAMPLE[0]} frames of {VIDEO_SAMPLE[1]}x{VIDEO_SAMPLE[2]}, refine 0{tag}"
        cases.append((name, layout(False, False, video), layout(True, True, video)))
    # completion's latent inference (the generator's forward and backward over the hole's region)
    # lays Z out as training does (CoopModel.graph_layout); its final generator pass samples as above
    missing = torch.zeros(1024, 1024, dtype=torch.bool)
    missing[256:656, 256:656] = True
    image = torch.rand(3, 1024, 1024)

    def completion() -> object:
        return complete(m, image, missing, langevin=cfg.langevin(), infer_steps=20, refine=cfg.langevin_steps)

    name = "1024x1024 completion (a 400x400 hole, 20 inference steps, refine 6): the inference's layout"
    cases.append((name, layout(True, True, completion), layout(True, True, completion, train_last=True)))
    # nearest blocks alone fold into the interleave that OUTPUT_CHANNELS_LAST lays out; elsewhere it changes nothing
    folds = device.type in networks.SUBPIXEL_MIN and cfg.net.g_upsample == "nearest"
    for crop in (cfg.crop, 2 * cfg.crop):
        z = m.latent(cfg.batch, (crop, crop))
        plain = layout(False, False, train_pass(z))
        what = f"generator forward + backward, batch {cfg.batch}, {crop} px crop"
        if folds:
            cases.append((f"{what}: the output conv channels-last", plain, layout(False, True, train_pass(z))))
        every = train_pass(z.contiguous(memory_format=torch.channels_last))
        cases.append((f"{what}: every block channels-last", plain, layout(False, True, every)))
        if bf16:
            every = train_pass(z.contiguous(memory_format=torch.channels_last), bf16)
            cases.append(
                (
                    f"{what}, bf16: every block channels-last",
                    layout(False, False, train_pass(z, bf16)),
                    layout(False, True, every),
                )
            )
        tr = CoopTrainer(torch.rand(3, 2 * crop, 2 * crop), replace(cfg, crop=crop), device=device, seed=0)
        step = tr.step
        if folds:
            name = f"training iteration, {crop} px crop: the output conv channels-last"
            cases.append((name, layout(False, False, step), layout(False, True, step)))
        # every block channels-last is TRAIN_CHANNELS_LAST's choice whichever the up-sampling mode
        name = f"training iteration, {crop} px crop: every block channels-last"
        cases.append((name, layout(False, False, step), layout(False, True, step, train_last=True)))

    try:
        for name, plain, last in cases:
            big = name.startswith(("1024", "video"))  # the completion too
            lines.append(pair_row(name, plain, last, device, 4 if big else 10, 0.0 if big else 0.1))
            print(lines[-1], flush=True)
    finally:
        model_module.SAMPLE_CHANNELS_LAST, networks.OUTPUT_CHANNELS_LAST, model_module.TRAIN_CHANNELS_LAST = defaults
    lines += padding_forms(device, cfg, m, mv, bf16)
    return lines


def padding_forms(device: torch.device, cfg, image: CoopModel, video: CoopModel, bf16: Accel | None) -> list[str]:
    """How `networks.pad` pads, in interleaved rounds; the same numbers either way (tested).
    bf16 sampling (CPUs with bf16 units): CPU autocast's border replication (in float32, a copy
    there and one back for the conv after it) against `pad`'s in bf16 without autograd (the
    default). Circular padding (tileable textures, looping videos; the closed-form Langevin
    gradient's too): F.pad's circular mode (a contiguous tensor, its centre through a strided
    copy) then the replicated axes, against `pad`'s (every border replicated, then the wrapped ones
    overwritten, in the input's layout; the default)."""
    from coopsynth import cpugrad

    own = networks.pad

    def autocast_pad(x: torch.Tensor, amount: tuple, wrap: tuple[bool, ...]) -> torch.Tensor:
        with torch.enable_grad():  # the short cut off: pad() sees a tensor that needs its graph
            return own(x.detach().requires_grad_(True), amount, wrap).detach()

    def modes_pad(x: torch.Tensor, amount: tuple, wrap: tuple[bool, ...]) -> torch.Tensor:
        n = len(amount)
        circ = [0] * (2 * n)
        for i, (a, w) in enumerate(zip(amount, wrap, strict=True)):
            if w:
                circ[2 * (n - 1 - i) : 2 * (n - i)] = a if isinstance(a, tuple) else (a, a)
        if any(circ):
            x = F.pad(x, circ, mode="circular")
        return own(x, tuple(0 if w else a for a, w in zip(amount, wrap, strict=True)), (False,) * n)

    def with_pad(fn: Callable[[], object], pad_fn: Callable) -> Callable[[], object]:
        def call() -> object:
            networks.pad = cpugrad.pad = pad_fn
            try:
                return fn()
            finally:
                networks.pad = cpugrad.pad = own

        return call

    def image_sample(refine: int, accel: Accel, wrap: tuple[bool, ...] | None = None) -> Callable[[], object]:
        def call() -> object:
            with image.using(accel):
                return image.sample(1, (1024, 1024), refine=refine, langevin=cfg.langevin(), wrap=wrap)

        return call

    def video_sample(accel: Accel, wrap: tuple[bool, ...] | None = None) -> Callable[[], object]:
        def call() -> object:
            with video.using(accel):
                return video.sample(1, VIDEO_SAMPLE, refine=0, langevin=cfg.langevin(), wrap=wrap)

        return call

    clip = f"{VIDEO_SAMPLE[0]} frames of {VIDEO_SAMPLE[1]}x{VIDEO_SAMPLE[2]}"
    lines = []

    if bf16:
        rows = []
        for r in (0, cfg.langevin_steps):
            f = image_sample(r, bf16)
            rows.append((f"1024x1024 sample, refine {r}, bf16", with_pad(f, autocast_pad), with_pad(f, own)))
        f = video_sample(bf16)
        rows.append((f"video sample, {clip}, refine 0, bf16", with_pad(f, autocast_pad), with_pad(f, own)))
        title = (
            "\nbf16 sampling's border padding, in interleaved rounds: CPU autocast's (in float32, a copy there and one "
            "back) against `networks.pad`'s (in bf16 without autograd; the default). The same numbers.\n"
        )
        lines += pair_table(title, ("autocast's float32 padding", "bf16 padding", "bf16 padding's speed-up"), rows, device, 4)
    rows = []
    for accel, tag in ((image.accel, ""), (bf16, ", bf16")) if bf16 else ((image.accel, ""),):
        for r in (0, cfg.langevin_steps):
            f = image_sample(r, accel, (True, True))
            rows.append((f"tileable 1024x1024 sample (`--tile`), refine {r}{tag}", with_pad(f, modes_pad), with_pad(f, own)))
        f = video_sample(accel, (True, False, False))
        rows.append((f"looping video sample (`--loop`), {clip}, refine 0{tag}", with_pad(f, modes_pad), with_pad(f, own)))
    title = (
        "\nCircular padding, in interleaved rounds: F.pad's circular mode (a contiguous tensor) then the replicated "
        "axes, against `networks.pad`'s (every border replicated, then the wrapped ones overwritten, in the input's "
        "layout; the default). The same numbers.\n"
    )
    lines += pair_table(
        title, ("F.pad's circular mode", "replicated, then wrapped (default)", "the default's speed-up"), rows, device, 4
    )
    return lines


OFF = 2**62  # a size threshold no tensor reaches: that setting off


def refined_sample(
    m: CoopModel, size: tuple[int, ...], cfg, module, settings: dict, repack: bool = False
) -> Callable[[], object]:
    """One sample of m with cfg's L refinements (seed 0), as `sample --refine L` draws it, under
    `settings`: attributes of `module`, restored afterwards (after a fault too). `repack`: the
    packed weights made afresh first, for settings read when packing."""

    def call() -> object:
        old = {k: getattr(module, k) for k in settings}
        for k, v in settings.items():
            setattr(module, k, v)
        try:
            if repack:
                m._packed.cache.clear()
            gen = torch.Generator(m.device).manual_seed(0)
            return m.sample(1, size, refine=cfg.langevin_steps, langevin=cfg.langevin(), generator=gen)
        finally:
            for k, v in old.items():
                setattr(module, k, v)

    return call


def plain_update(y, grad, draw, *, half, sigma, scale, bounds=None):
    """The Langevin step's move as the plain expression (coopsynth's before 2026-11-28): eight
    passes over memory where `langevin.langevin_update` makes four, and the clamp by broadcast
    bound tensors. The same numbers up to rounding."""
    y = y - half * (y / (sigma * sigma) - grad)
    if draw is not None:
        y = y + scale * draw
    if bounds is not None:
        y = torch.maximum(torch.minimum(y, bounds[1]), bounds[0])
    return y


def refinement_forms(device: torch.device, cfg) -> list[str]:
    """The refinement's element-wise work, in interleaved rounds, on models of the presets' shapes
    (random weights) sampled as `sample --refine L` runs them, at the precision sampling picks on
    the device: a 1024x1024 texture and a LONG_VIDEO video (in time windows). The update
    (`plain_update` against `langevin.langevin_update`) and, on a CPU, the block noise drawn on one
    thread against on all of torch's (`langevin.PARALLEL_NOISE_MIN`), the read-outs as conv^T's
    bias (`bias_forms`) and, in bf16, conv^T's output padding (`deconv_paddings`)."""
    own_update, own_min = langevin_module.langevin_update, langevin_module.PARALLEL_NOISE_MIN
    accel = Accel.for_device(device).for_sampling(device)
    image = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, accel)
    video = CoopModel(preset("default", dims=3).net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, accel)
    steps = cfg.langevin_steps

    def sample(m: CoopModel, size: tuple[int, ...], update: Callable, parallel_min: int) -> Callable[[], object]:
        return refined_sample(m, size, cfg, langevin_module, {"langevin_update": update, "PARALLEL_NOISE_MIN": parallel_min})

    frames, h, w = LONG_VIDEO
    cases = [
        (f"1024x1024 sample, refine {steps}, {accel.precision}", image, (1024, 1024)),
        (f"video sample, {frames} frames of {h}x{w}, refine {steps}, {accel.precision}", video, LONG_VIDEO),
    ]
    title = (
        "\nThe refinement's Langevin update, in interleaved rounds: the plain expression (eight passes over memory) "
        "against `langevin.langevin_update` (four, in place on one fresh tensor, clamped channel by channel; the default). "
        f"Samples with {steps} refinements from models of the presets' shapes (random weights). The same numbers up to "
        "rounding.\n"
    )
    rows = [(name, sample(m, size, plain_update, own_min), sample(m, size, own_update, own_min)) for name, m, size in cases]
    lines = pair_table(title, ("plain expression", "in place (default)", "in place's speed-up"), rows, device, 6)
    if device.type != "cpu":
        return lines
    title = (
        f"\nThe refinement's block noise, in interleaved rounds: drawn on one thread against on all {torch.get_num_threads()} "
        f"of torch's (regions of {own_min} numbers or more; the default). The same numbers.\n"
    )
    rows = [(name, sample(m, size, own_update, OFF), sample(m, size, own_update, own_min)) for name, m, size in cases]
    lines += pair_table(title, ("one thread", "all threads (default)", "all threads' speed-up"), rows, device, 6)
    lines += bias_forms(cases, cfg)
    if accel.precision == "bf16" and torch.bfloat16 in cpugrad.DECONV_TUNE_DTYPES:
        lines += deconv_paddings(image, cfg, accel.precision)
    return lines


def bias_forms(cases: list[tuple[str, CoopModel, tuple[int, ...]]], cfg) -> list[str]:
    """The closed-form gradient's read-outs, in interleaved rounds, for refinement_forms' samples:
    added to the gradient by a separate broadcast add at every layer (the form before 2026-11-28)
    against conv^T's fused bias with the padded border corrected (`cpugrad.BIAS_FOLD_MIN`; the
    default). The packed weights are made afresh for each sample (the choice is made there)."""
    own_min = cpugrad.BIAS_FOLD_MIN

    def sample(m: CoopModel, size: tuple[int, ...], fold_min: int) -> Callable[[], object]:
        return refined_sample(m, size, cfg, cpugrad, {"BIAS_FOLD_MIN": fold_min}, repack=True)

    title = (
        "\nThe closed-form gradient's read-outs, in interleaved rounds: a broadcast add at each layer against conv^T's "
        f"fused bias, its padded border corrected (layers of {own_min} values or more; the default). The same numbers "
        "up to rounding.\n"
    )
    rows = [(name, sample(m, size, OFF), sample(m, size, own_min)) for name, m, size in cases]
    return pair_table(title, ("separate add", "conv^T's bias (default)", "the bias's speed-up"), rows, cases[0][1].device, 6)


def deconv_paddings(image: CoopModel, cfg, precision: str) -> list[str]:
    """Refined texture samples with each layer's conv^T at its natural output padding against
    `cpugrad._pick_padding`'s choice (the default), in interleaved rounds; the packed weights are
    made afresh for each sample, the choices once per shape as in a run."""
    own_min = cpugrad.DECONV_TUNE_MIN
    steps = cfg.langevin_steps

    def sample(side: int, tune_min: int) -> Callable[[], object]:
        return refined_sample(image, (side, side), cfg, cpugrad, {"DECONV_TUNE_MIN": tune_min}, repack=True)

    lines = [
        f"\nThe refinement's transposed convolutions in {precision}, in interleaved rounds: each layer's natural output "
        "padding against `cpugrad._pick_padding`'s (one row and column more where that is under "
        f"{cpugrad.DECONV_SWITCH:g} of the time; the default). The same numbers up to {precision} rounding.\n",
        "| what | natural padding | picked (default) | picked's speed-up |",
        "|---|---|---|---|",
    ]
    for side in (512, 768, 1024, 2048):
        name = f"{side}x{side} sample, refine {steps}, {precision}"
        lines.append(pair_row(name, sample(side, OFF), sample(side, own_min), image.device, 6 if side < 2048 else 4, 0.0))
        print(lines[-1], flush=True)
    picked = sorted(f"{list(k[0])} -> {v}" for k, v in cpugrad._PADDINGS.items())
    lines.append(f"\nThe choices (a layer's output shape -> its output padding): {'; '.join(picked) or 'none'}.")
    return lines


def output_conv_forms(device: torch.device) -> list[str]:
    """The video generator's output conv (to the data's 3 channels), in interleaved rounds, at the
    video preset's crop and batch, in a video completion and in a video sample: read contiguous (video training's layout
    until 2026-11-28) against channels-last-3d (`networks.OUTPUT_CHANNELS_LAST`: the last block
    writes that layout; split where `networks.SPLIT_OUTPUT_CONV` says so, the default); then, both
    channels-last-3d, the conv whole against split (`networks._split_output_conv`)."""
    cfg = preset("default", dims=3)
    defaults = networks.OUTPUT_CHANNELS_LAST, networks.SPLIT_OUTPUT_CONV
    own = {device.type}

    def form(last: bool, split: bool, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            networks.OUTPUT_CHANNELS_LAST = own if last else set()
            networks.SPLIT_OUTPUT_CONV = own if split else set()
            return fn()

        return call

    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel.for_device(device, "fp32"))
    crop = (cfg.crop_frames, cfg.crop, cfg.crop)
    z = m.latent(cfg.batch, crop)
    target = torch.randn(cfg.batch, 3, *crop, device=device)

    def train_pass() -> object:  # the trainer's MCMC-teaching loss
        m.generator.zero_grad(set_to_none=True)
        return (target - m.propose(z)).pow(2).mean().backward()

    data = torch.rand(3, 2 * cfg.crop_frames, 2 * cfg.crop, 2 * cfg.crop)
    trainers = [CoopTrainer(data, cfg, device=device, seed=0) for _ in range(4)]  # one per form, each its own state

    def sample() -> object:
        return m.sample(1, VIDEO_SAMPLE, refine=0, langevin=cfg.langevin())

    clip = torch.rand(3, *data.shape[1:])  # (C, T, H, W): twice the crop on every axis
    t, h, w = clip.shape[1:]
    missing = torch.zeros(t, h, w, dtype=torch.bool)
    missing[:, h // 4 : h - h // 4, w // 4 : w - w // 4] = True  # the middle of every frame

    def completion() -> object:  # the latent inference runs the generator with a graph, as training does
        return complete(m, clip, missing, langevin=cfg.langevin(), infer_steps=20, refine=4)

    what = f"batch {cfg.batch}, {crop[0]} frames of {crop[1]}x{crop[2]}"
    hole = f"{h - h // 4 * 2}x{w - w // 4 * 2}"
    completion_name = f"video completion, {t} frames of {h}x{w} with the middle {hole} missing, 20 inference steps, refine 4"
    sample_name = f"video sample, {VIDEO_SAMPLE[0]} frames of {VIDEO_SAMPLE[1]}x{VIDEO_SAMPLE[2]}, refine 0, fp32"
    tables = [  # (title, head, the first column's form, the table's own last row); the second column: the default
        (
            "\nThe video generator's output conv (24 -> 3 channels, 3x3x3), fp32, in interleaved rounds: read contiguous "
            "(the last block's interleave contiguous, as video training ran until 2026-11-28) against channels-last-3d (the "
            "last block writes that layout and the conv runs split; the default on CPU). The same numbers up to rounding.\n",
            ("contiguous", "channels-last-3d, split (default)", "speed-up"),
            (False, False),
            (completion_name, completion),
        ),
        (
            "\nThe same output conv channels-last-3d, in interleaved rounds: the conv whole against split "
            "(`networks._split_output_conv`: its column taps as output channels, then three shifted sums; float32 only).\n",
            ("whole", "split (default)", "split's speed-up"),
            (True, False),
            (sample_name, sample),
        ),
    ]
    lines: list[str] = []
    try:
        for k, (title, head, first, (name, fn)) in enumerate(tables):
            a, b = trainers[2 * k], trainers[2 * k + 1]
            rows = [
                (f"generator forward + backward, {what}", form(*first, train_pass), form(True, True, train_pass)),
                (f"training iteration, {what}", form(*first, a.step), form(True, True, b.step)),
                (name, form(*first, fn), form(True, True, fn)),
            ]
            lines += pair_table(title, head, rows, device, 8)
    finally:
        networks.OUTPUT_CHANNELS_LAST, networks.SPLIT_OUTPUT_CONV = defaults
    return lines


def interleave_backward(device: torch.device, sizes: list[int], cfg) -> list[str]:
    """The gradient of the generator's channels-last interleave (every folded block in training
    where `model.TRAIN_CHANNELS_LAST` says so, else the last), in interleaved rounds: autograd's
    gradient of the strided view (it zero-fills a tensor the size of the block's conv output and
    copies the whole gradient in one piece) against the interleave's own backward (`networks.OWN_INTERLEAVE_BACKWARD`: slabs, border zeros only).
    Per crop size: the generator's forward and backward with the trainer's loss, and a training
    iteration. The same numbers (tested)."""
    default = networks.OWN_INTERLEAVE_BACKWARD
    if cfg.net.g_upsample != "nearest":
        return [
            "\nThe interleave's backward: not used (the preset's generator up-samples linearly: its blocks fold otherwise).\n"
        ]
    if device.type not in networks.SUBPIXEL_MIN or device.type not in networks.OUTPUT_CHANNELS_LAST:
        return [
            f"\nThe interleave's backward: not used on {device.type.upper()} (no block there is folded into a channels-last output).\n"
        ]
    lines = [
        "\nThe gradient of the generator's channels-last interleave (training's layout), in interleaved rounds: "
        "autograd's gradient of the strided view against the interleave's own backward (slabs of rows, border zeros only; "
        f"the default on {device.type.upper()}: {'own' if device.type in default else 'autograd'}). The same numbers.\n",
        "| what | autograd's | own | own's speed-up |",
        "|---|---|---|---|",
    ]

    def form(own: bool, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            networks.OWN_INTERLEAVE_BACKWARD = {device.type} if own else set()
            return fn()

        return call

    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel.for_device(device, "tf32"))
    try:
        for crop in sizes:
            z = m.latent(cfg.batch, (crop, crop))
            if device.type in model_module.TRAIN_CHANNELS_LAST:  # as CoopModel.propose lays it out
                z = z.contiguous(memory_format=torch.channels_last)
            target = torch.randn(cfg.batch, 3, crop, crop, device=device)

            def train_pass(z: torch.Tensor = z, target: torch.Tensor = target) -> object:
                m.generator.zero_grad(set_to_none=True)
                return (target - m.generator(z)).pow(2).mean().backward()

            rounds = 3 if crop > 256 else 10
            name = f"generator forward + backward, batch {cfg.batch}, {crop} px crop"
            lines.append(
                pair_row(name, form(False, train_pass), form(True, train_pass), device, rounds, 0.0 if crop > 256 else 0.1)
            )
            print(lines[-1], flush=True)
            tr = CoopTrainer(torch.rand(3, 2 * crop, 2 * crop), replace(cfg, crop=crop), device=device, seed=0)
            name = f"training iteration, {crop} px crop"
            lines.append(pair_row(name, form(False, tr.step), form(True, tr.step), device, rounds, 0.0 if crop > 256 else 0.1))
            print(lines[-1], flush=True)
    finally:
        networks.OWN_INTERLEAVE_BACKWARD = default
    return lines


def fused_adam(params: list[torch.Tensor], lr: float, betas: tuple[float, float]) -> torch.optim.Adam | None:
    """PyTorch's fused Adam for these parameters, or None where this PyTorch has none for their device."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return None


def adam_forms(device: torch.device, cfg) -> list[str]:
    """PyTorch's default Adam (what training uses) against fused Adam, in interleaved rounds: one
    optimiser step of each network, and a whole training iteration at the preset's crop with both
    networks' optimisers swapped. Fused Adam is not the default: on a CPU it saved about 1% of an
    iteration, and its runs scored worse on two textures (benchmarks/RESULTS.md, 2026-11-27)."""
    fused = fused_adam([torch.zeros(1, device=device, requires_grad=True)], 1e-3, (0.5, 0.999)) is not None
    lines = [
        "\nAdam, in interleaved rounds: PyTorch's default implementation (what training uses) against fused Adam "
        f"(one kernel per step; {'not the default' if fused else 'not available here'}). The same update up to rounding.\n",
        "| what | PyTorch's default Adam | fused Adam | fused's speed-up |",
        "|---|---|---|---|",
    ]
    if not fused:
        return lines[:1]
    tr = CoopTrainer(torch.rand(3, 4 * cfg.crop, 4 * cfg.crop), cfg, device=device, seed=0)
    betas = (cfg.beta1, 0.999)
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = []
    for name, net in (("descriptor", tr.model.descriptor), ("generator", tr.model.generator)):
        params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opts = {"default": torch.optim.Adam(params, lr=1e-4, betas=betas), "fused": fused_adam(params, 1e-4, betas)}
        n = sum(p.numel() for p in params)
        cases.append((f"one step, {name} ({n:,} weights in {len(params)} tensors)", opts["default"].step, opts["fused"].step))
    pairs = {
        "default": (tr.opt_d, tr.opt_g),
        "fused": (
            fused_adam(tr.opt_d.param_groups[0]["params"], cfg.lr_d, betas),
            fused_adam(tr.opt_g.param_groups[0]["params"], cfg.lr_g, betas),
        ),
    }

    def iteration(kind: str) -> Callable[[], object]:
        def call() -> object:
            tr.opt_d, tr.opt_g = pairs[kind]
            return tr.step()

        return call

    cases.append((f"training iteration, {cfg.crop} px crop", iteration("default"), iteration("fused")))
    try:
        for name, default_fn, fused_fn in cases:
            lines.append(pair_row(name, default_fn, fused_fn, device, 10 if name.startswith("one") else 6, 0.1))
            print(lines[-1], flush=True)
    finally:
        tr.opt_d, tr.opt_g = pairs["default"]
    return lines


@contextlib.contextmanager
def threads(n: int):
    """Run the body with n intra-op threads, then restore the count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def thread_scaling(sizes: list[int], cfg) -> list[str]:
    """CPU: the default Langevin revision (closed-form gradient, fp32) and the fp32 matrix product
    at one thread and at all of them, the four taking turns round by round; each roofline against
    the product at the same thread count. It tells the two halves of a roofline apart: how near one
    core comes to its own peak, and how much of that the other cores add (parallel scaling)."""
    n = torch.get_num_threads()
    lines = [
        f"\nThread scaling of the Langevin revision (CPU, batch {cfg.batch}, L = {cfg.langevin_steps}, fp32 closed form). "
        f"Per size, the revision and the fp32 matrix product at 1 and at {n} threads take turns round by round; "
        "each roofline is against the product at the same thread count. Scaling: the speed-up from 1 thread. The 8 px row has "
        "almost no arithmetic: its ms per step is the fixed cost of a step (Python, operator dispatch, oneDNN set-up per call), "
        "paid at every size.\n",
        "| size | threads | ms per step | Langevin steps/s | achieved GFLOP/s | peak GFLOP/s | roofline | revision scaling | product scaling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if n < 2:
        return lines[:1] + ["This process has one thread: nothing to compare.\n"]
    device = torch.device("cpu")
    lang = cfg.langevin()
    product, product_flops = matmul(device, "fp32")

    def at(k: int, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with threads(k):
                return fn()

        return call

    for size in [8, *sizes]:
        torch.manual_seed(0)
        m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, Accel(precision="fp32"))
        y0 = torch.randn(cfg.batch, 3, size, size)
        flops = 2 * conv_flops(m.descriptor, y0)  # forward + input gradient
        gen = torch.Generator().manual_seed(0)
        revise = lambda: m.revise(y0, steps=cfg.langevin_steps, generator=gen, **lang)  # noqa: E731
        fns = {f"{k} {what}": at(k, fn) for k in (1, n) for what, fn in (("revise", revise), ("product", product))}
        try:
            t = timeit_all(fns, device, repeat=6)
        except Exception as e:  # a fault: say so, go on with the next size
            lines.append(f"| {size} | timing failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | | | | |")
            print(lines[-1], flush=True)
            continue
        for k in (1, n):
            sps = cfg.langevin_steps / t[f"{k} revise"]
            peak = product_flops / t[f"{k} product"] / 1e9
            scale = f"{t['1 revise'] / t[f'{k} revise']:.2f}x", f"{t['1 product'] / t[f'{k} product']:.2f}x"
            lines.append(
                f"| {size} | {k} | {1e3 / sps:.3f} | {sps:.1f} | {flops * sps / 1e9:.1f} | {peak:.0f} | {flops * sps / 1e9 / peak:.1%} | {scale[0]} | {scale[1]} |"
            )
            print(lines[-1], flush=True)
    return lines


def ms(t: float) -> str:
    """Seconds as milliseconds: whole ones from 100 up, else three significant figures (GPU phases
    are fractions of one)."""
    return f"{t * 1e3:.0f}" if t >= 0.1 else f"{t * 1e3:.3g}"


def phase_row(device: torch.device, cfg, size: int, accels: list[Accel]) -> str:
    """One row of the phase table: where an iteration's time goes at one crop size. The four
    phases and the matrix product of the default precision take turns round by round, so the
    roofline compares like with like. The models' speed settings go into `accels` as they are made,
    so that their fallbacks (a failed CUDA graph capture, say) can be reported, even after a fault."""
    data = torch.rand(3, max(size, 64) * 2, max(size, 64) * 2)
    c = type(cfg)(**{**cfg.__dict__, "crop": size})
    tr = CoopTrainer(data, c, device=device, seed=0)
    m = tr.model
    accels.append(m.accel)
    crop = tr.crop_size
    z = m.latent(c.batch, crop, tr.gen)
    y0 = m.generate(z, crop)
    lang = c.langevin()
    y = m.revise(y0, steps=c.langevin_steps, generator=tr.gen, **lang)
    obs, _ = tr.observed_batch()

    def d_update():  # as the trainer does it: one pass over both batches where that pays
        f_syn, f_obs = m.energies(y, obs)
        loss = f_syn.mean() - f_obs.mean()
        tr.opt_d.zero_grad()
        loss.backward()

    def g_update():
        loss = (m.generator(z) - y).pow(2).mean()
        tr.opt_g.zero_grad()
        loss.backward()

    twin = CoopTrainer(data, c, device=device, seed=0)
    accels.append(twin.model.accel)
    product, product_flops = matmul(device, m.accel.precision)
    t = timeit_all(
        {
            "gen": lambda: m.generator(z),
            "lang": lambda: m.revise(y0, steps=c.langevin_steps, generator=tr.gen, **lang),
            "d": d_update,
            "g": g_update,
            "matmul": product,
            # a whole iteration in the same rounds, on a twin trainer so that the phases' weights stay
            # put: timed alone after them, the first size once read 1.9x the phases' sum
            "iter": twin.step,
        },
        device,
    )
    del product
    peak = product_flops / t["matmul"] / 1e9
    t_iter = t["iter"]
    flops_step = 2 * conv_flops(m.descriptor, y0)  # forward + input-gradient backward
    steps_per_s = c.langevin_steps / t["lang"]
    achieved = flops_step * steps_per_s / 1e9
    mp = crop[0] * crop[1] / 1e6
    sm = CoopModel(c.net, m.mean, m.std, device)
    accels.append(sm.accel)
    sm.generator.load_state_dict(m.generator.state_dict())
    sm.descriptor.load_state_dict(m.descriptor.state_dict())
    t_s0 = timeit(lambda: sm.sample(1, crop, refine=0, langevin=lang), device, repeat=3)
    t_sl = timeit(lambda: sm.sample(1, crop, refine=c.langevin_steps, langevin=lang), device, repeat=3)
    mem = peak_memory(device, tr.step)
    return (
        f"| {size} | {ms(t_iter)} | {ms(t['gen'])} | {ms(t['lang'])} | {ms(t['d'])} | {ms(t['g'])} | {steps_per_s:.1f} | "
        f"{flops_step / 1e9:.2f} | {achieved:.1f} | {peak:.0f} | {achieved / peak:.1%} | {mp / t_s0:.2f} | {mp / t_sl:.2f} | {mem} |"
    )


def bench_device(device: torch.device, sizes: list[int], preset_name: str, big: int = 0) -> str:
    cfg = preset(preset_name)
    peaks = matmul_peaks(device)
    default = Accel.for_device(device).precision  # the precision of the default path
    lines = [
        f"### {device.type.upper()}: preset `{preset_name}`, batch {cfg.batch}, L = {cfg.langevin_steps}, default precision {default}; "
        f"matrix-product peak at the start of the run {peak_text(device, peaks)}. Per size, a whole iteration, its four phases and the "
        f"{default if device.type == 'cuda' else 'fp32'} matrix product take turns round by round; the roofline is against that product's "
        'peak (the "peak GFLOP/s" column)\n',
        "| size | iteration ms | generator pass | Langevin revision | descriptor update | generator update | Langevin steps/s | GFLOP per step | achieved GFLOP/s | peak GFLOP/s | roofline | sampling MP/s (no refine) | sampling MP/s (refine L) | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        accels: list[Accel] = []
        try:
            lines.append(phase_row(device, cfg, size, accels))
        except Exception as e:  # one size this machine cannot run (or a fault): say so, go on
            lines.append(f"| {size} | failed: {type(e).__name__}: {str(e).splitlines()[0][:100]} |")
        fell = sorted({f for a in accels for f in a.fallbacks})
        if fell:  # a slower path taken on the way (its reason), or what led up to a fault: in the size cell
            lines[-1] = lines[-1].replace(f"| {size} |", f"| {size} (fell back: {'; '.join(fell)}) |", 1)
        print(lines[-1], flush=True)
    lines += sampling(device, cfg, big)
    lines += generator_forms(device, sizes, cfg)
    lines += generator_layouts(device, cfg)
    lines += interleave_backward(device, sizes, cfg)
    if device.type == "cpu":  # the layout and the split are CPU defaults only
        lines += output_conv_forms(device)
    lines += adam_forms(device, cfg)
    lines += refinement_forms(device, cfg)
    lines += langevin_paths(device, sizes, cfg)
    if device.type == "cpu":
        lines += thread_scaling(sizes, cfg)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda too when present)")
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--big", type=int, default=8192, help="side of the large-sample check (0: skip)")
    ap.add_argument(
        "--only",
        choices=["threads", "forms", "layouts", "interleave", "sampling", "refinement", "outconv"],
        help="one table alone: threads (CPU thread scaling), forms (the generator's blocks and up-sampling modes), "
        "layouts (the generator's), interleave (its gradient), sampling (the 1024x1024 and --big samples), "
        "refinement (the Langevin update and noise of refined samples) or outconv (the video generator's output conv)",
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    devices = [args.device] if args.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    # this process runs as the command-line tool does (the allocator's side-by-side line uses
    # fresh processes of its own)
    kept = keep_freed_memory()
    text = (
        header("Speed")
        + f"This process: freed memory {'kept for reuse, as the CLI runs' if kept else 'returned to the system (not glibc)'}.\n\n"
    )
    for d in devices:
        if d == "cuda" and not torch.cuda.is_available():
            print("cuda: skipped (no CUDA device)")
            continue
        if args.only == "threads":
            if d == "cpu":
                text += "\n".join(thread_scaling(sizes, preset(args.preset))) + "\n"
            continue
        if args.only == "forms":
            text += f"{d.upper()}:\n" + "\n".join(generator_forms(torch.device(d), sizes, preset(args.preset))) + "\n"
            continue
        if args.only == "layouts":
            text += f"{d.upper()}:\n" + "\n".join(generator_layouts(torch.device(d), preset(args.preset))) + "\n"
            continue
        if args.only == "interleave":
            text += f"{d.upper()}:\n" + "\n".join(interleave_backward(torch.device(d), sizes, preset(args.preset))) + "\n"
            continue
        if args.only == "refinement":
            text += f"{d.upper()}:\n" + "\n".join(refinement_forms(torch.device(d), preset(args.preset))) + "\n"
            continue
        if args.only == "sampling":
            text += f"{d.upper()}:\n" + "\n".join(sampling(torch.device(d), preset(args.preset), args.big)) + "\n"
            continue
        if args.only == "outconv":
            if d == "cpu":  # the layout and the split are CPU defaults only
                text += f"{d.upper()}:\n" + "\n".join(output_conv_forms(torch.device(d))) + "\n"
            continue
        text += bench_device(torch.device(d), sizes, args.preset, args.big) + "\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
