"""Speed settings: arithmetic precision, memory format, and the Langevin revision as a CUDA graph.

`Accel` is chosen once per run (`Accel.for_device`) and held by the CoopModel:

    precision     fp32 | tf32 | bf16, or auto (the default). tf32 lets CUDA matrix units round
                  inputs to 10-bit mantissas; on a CPU it is plain fp32. bf16 runs the networks
                  under autocast (the Langevin state, the losses and the optimiser stay fp32).
                  auto: tf32, and for sampling on a CPU with bf16 units (AVX512-BF16, AMX) bf16,
                  which measured the same SWD ratios as fp32 sampling from the same model and
                  latents, 1.6x faster (textures) and 1.6-2.2x (videos; benchmarks/RESULTS.md);
                  see `Accel.for_sampling`.
    channels_last NHWC / NDHWC tensors for both networks. Off by default: slower with these small
                  networks on an H200 (graph tf32 Langevin 0.80-0.93x of contiguous at 64-512 px)
                  and no consistent gain on a CPU (benchmarks/RESULTS.md, Speed).
    closed_form   on a CPU, compute the Langevin step's input gradient in closed form with weights
                  packed for oneDNN instead of through autograd (`coopsynth.cpugrad`), in float32,
                  or in bf16 under bf16 precision on a CPU with bf16 units: the same numbers up to
                  rounding, faster (benchmarks/RESULTS.md). Checked against autograd on each
                  shape's first use; falls back to autograd when it fails.
    graphs        capture the whole L-step Langevin revision (L descriptor forwards, input
                  gradients, updates, noise and projections) as one CUDA graph and replay it: no
                  Python and no kernel launches per step. Falls back to eager code when capture
                  fails or one of the first two replays disagrees with eager code.

cuDNN's autotuning (`torch.backends.cudnn.benchmark`) is left off: on an H100 it picked the same
kernels as cuDNN's rules at 128 and 512 px (benchmarks/cuda_profile.py), and the one capture seen
failing (512 px) failed with it on (benchmarks/RESULTS.md, CUDA on an H100).

The graph reads the descriptor's weights where they live, so optimiser steps (in place) are seen
by every replay; its noise is drawn before the replay into a static buffer, from the same stream
the eager code would use, so both paths give the same numbers up to float rounding.

One process-wide setting lives here too: `keep_freed_memory`, which the command-line tool calls
at start so that the C allocator reuses freed activations instead of paging them in afresh.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import CoopsynthError
from .langevin import descriptor_langevin

Tensor = torch.Tensor
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
MAX_GRAPHS = 8  # captured shapes kept per model (training uses one; previews another)
# bytes: freed blocks up to this size stay in the process for reuse (keep_freed_memory). 256 MiB
# covers the biggest activations of training on 512 px crops, of a 768 px sampling window and of
# completing a 1024x1024 image: against 64 MiB 1.07-1.19x faster training and sampling and 1.64x
# faster completion, peak memory -3% to +27% (benchmarks/allocator.py, 2026-11-27 09:39 UTC). A long
# video's activations are bigger (a 200-frame 256x256 sample's last block: 400 MiB in bf16, 800 in
# fp32), but 1 GiB gained only 1.15x (bf16) and 1.04x (fp32) there, at up to 1.7x the peak memory
# in fp32 (medians of 3 noisy rounds; 2026-11-28 09:50 and 09:54 UTC), and nothing elsewhere
MALLOC_KEEP = 256 << 20


def keep_freed_memory(threshold: int = MALLOC_KEEP) -> bool:
    """Let this process's C allocator keep freed blocks of up to `threshold` bytes for reuse.

    glibc's malloc serves every block above its mmap threshold (128 KiB, raised by itself to at
    most 32 MiB) with fresh pages from the kernel and returns them on free, so each new activation
    of a big window is paged in and zeroed again: a 1024x1024 sample took about 700,000 page
    faults. With the threshold (and the heap's trim threshold, twice it) set here, freed blocks
    are reused. Process-wide, so only the command-line tool calls it; a library user may call it
    once. Returns whether it took effect: glibc only (elsewhere a no-op, False)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl has a mallopt that does nothing)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    trim = min(2 * threshold, 2**31 - 1)  # mallopt takes a C int
    return mallopt(m_mmap_threshold, min(threshold, 2**31 - 1)) == 1 and mallopt(m_trim_threshold, trim) == 1


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Does this CPU have bfloat16 arithmetic units (x86 AVX512-BF16 or AMX)? Read from the Linux
    CPU flags (this machine's once per process); anywhere they cannot be read, no (bf16 emulated
    in software is slower than fp32)."""
    if cpuinfo is None:
        return _this_cpu_has_bf16()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


@functools.cache
def _this_cpu_has_bf16() -> bool:
    """cpu_has_bf16 for this machine: asked once per Langevin revision under bf16, and the CPU
    does not change while the process runs."""
    try:
        return cpu_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def precision_warning(device: torch.device, precision: str, cpuinfo: str | None = None) -> str | None:
    """A one-line warning where the asked-for precision runs slowly on this device, or None: bf16
    on a CPU without bf16 units is emulated in software (a 1024x1024 sample with refinement took
    3.3 s against 1.0 s in fp32 on such a CPU, an AVX-512 Xeon; benchmarks/RESULTS.md, Speed,
    2026-11-27). `cpuinfo`: the Linux CPU flags to judge by (default: this machine's)."""
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16(cpuinfo):
        return "--precision bf16: this CPU has no bf16 units, so bf16 is emulated and slower than fp32 here (auto picks fp32)"
    return None


@dataclass
class Accel:
    precision: str = "tf32"  # fp32 | tf32 | bf16 (see the module docstring)
    channels_last: bool = False  # NHWC memory format for both networks
    graphs: bool = False  # CUDA graph capture of the Langevin revision
    closed_form: bool = True  # CPU: the Langevin gradient in closed form with packed weights, fp32 or bf16 (coopsynth.cpugrad)
    fallbacks: list[str] = field(default_factory=list)  # why a CUDA graph or the CPU closed form was not used, once each
    auto: bool = False  # the precision was left to coopsynth (`--precision auto`): see for_sampling

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "auto", graphs: bool | None = None) -> Accel:
        """The defaults for a device: on CUDA the graphs on; channels-last off everywhere (measured)."""
        if precision not in PRECISIONS:
            raise CoopsynthError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
        auto = precision == "auto"
        precision = "tf32" if auto else precision
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
            torch.backends.cudnn.allow_tf32 = precision != "fp32"
        return cls(precision=precision, channels_last=False, graphs=cuda if graphs is None else graphs, auto=auto)

    def for_sampling(self, device: torch.device) -> Accel:
        """The settings to sample with: the same, except that an automatic precision samples in
        bf16 on a CPU with bf16 units. Measured against fp32 from the same models and latents:
        textures scored the same SWD ratios, 1.6x faster; videos (2 clips, 2026-11-28) the same
        spatial, spatio-temporal and motion ratios to 0.01, 1.6-2.2x faster."""
        if self.auto and device.type == "cpu" and cpu_has_bf16():
            return replace(self, precision="bf16", fallbacks=self.fallbacks)
        return self

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Around network forwards: bf16 autocast when asked for, else nothing. The weight cache
        is off so that a captured graph never holds a stale bf16 copy of the weights."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)

    def memory_format(self, dims: int) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if dims == 2 else torch.channels_last_3d

    def note(self, reason: str) -> None:
        """Record why the eager path was taken (once per reason); the pipeline logs these."""
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)


def replay_agrees(out: Tensor, ref: Tensor, start: Tensor, precision: str) -> bool:
    """Does a replay `out` agree with the eager chain `ref` from the same `start` and noise? The
    difference is measured against how far the chain moved, ||ref - start||: rounding (and
    non-deterministic kernels) leave a small fraction of that; a graph that reads the wrong
    memory or skips work is off by about the whole revision. Element-wise tolerances (the first
    version) rejected sound fp32 replays at 256-512 px over a few elements among millions."""
    return agrees_in_norm(out, ref, (ref - start).double().norm(), 0.1 if precision == "bf16" else 0.02)


def agrees_in_norm(out: Tensor, ref: Tensor, scale: Tensor | float, tol: float) -> bool:
    """A fast path's result `out` against the reference `ref`: finite, and ||out - ref|| within
    tol x scale (the size of what is compared; see replay_agrees and cpugrad.grad_agrees)."""
    if not bool(torch.isfinite(out).all()):
        return False
    return bool((out - ref).double().norm() <= tol * scale + 1e-6)


class GraphedLangevin:
    """`descriptor_langevin` for one (shape, settings), captured as a CUDA graph on first use.

    Call it like the eager function with a `noise_fn`; returns None when the graph cannot be
    used (the caller then runs the eager code), after recording why in `accel.fallbacks`.
    """

    def __init__(self, energy: Callable[[Tensor], Tensor], accel: Accel):
        self.energy = energy
        self.accel = accel
        self.cache: dict[tuple, _Captured] = {}
        self.broken: set[tuple] = set()

    def __call__(
        self,
        y: Tensor,
        *,
        steps: int,
        delta: float,
        sigma: float,
        noise: float,
        noise_fn: Callable[[int], Tensor],
        bounds: tuple[Tensor, Tensor] | None,
    ) -> Tensor | None:
        key = (tuple(y.shape), y.dtype, y.device, steps, delta, sigma, noise, bounds is not None)
        if key in self.broken:
            return None
        entry = self.cache.get(key)
        if entry is None:
            try:
                entry = self._capture(y, steps, delta, sigma, noise, bounds)
            except Exception as e:  # any capture failure: eager code from now on for this shape
                self.broken.add(key)
                self.accel.note(f"CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
                return None
            if len(self.cache) >= MAX_GRAPHS:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = entry
        entry.static_y.copy_(y)
        for i in range(steps):  # the eager code's draws, in its order, without a host sync
            entry.static_noise[i].copy_(noise_fn(i))
        entry.graph.replay()
        out = entry.static_out.clone()
        if entry.checks_left:  # the first replays of a shape are checked against eager code: the
            # second one runs after the allocator has moved on, which is when a tensor the graph
            # reads but nobody holds would show up (it did once: the projection bounds)
            entry.checks_left -= 1
            ref = self._chain(entry.static_y.clone(), entry.static_noise, steps, delta, sigma, noise, bounds)
            if not replay_agrees(out, ref, entry.static_y, self.accel.precision):
                self.broken.add(key)
                self.cache.pop(key, None)
                self.accel.note("a CUDA graph replay disagreed with eager code")
                return ref
        return out

    def _chain(self, y: Tensor, noise_buf: Tensor, steps, delta, sigma, noise, bounds) -> Tensor:
        """The eager chain reading its N(0, I) draws from noise_buf (steps, *y.shape)."""
        return descriptor_langevin(
            self.energy, y, steps=steps, delta=delta, sigma=sigma, noise=noise, noise_fn=lambda i: noise_buf[i], bounds=bounds
        )

    def _capture(self, y: Tensor, steps, delta, sigma, noise, bounds) -> _Captured:
        """Capture the chain. The graph reads and writes raw addresses, so every tensor it touches
        outside its own memory pool (input, noise, bounds) is kept alive by the returned entry."""
        static_y = torch.empty_like(y)
        static_y.copy_(y)
        static_noise = torch.zeros((steps, *y.shape), device=y.device, dtype=y.dtype)
        static_bounds = None if bounds is None else tuple(b.clone() for b in bounds)

        def run() -> Tensor:
            return self._chain(static_y, static_noise, steps, delta, sigma, noise, static_bounds)

        side = torch.cuda.Stream(device=y.device)
        side.wait_stream(torch.cuda.current_stream(y.device))
        with torch.cuda.stream(side):  # warm-up: cuDNN picks its algorithms outside the capture
            for _ in range(2):
                run()
        torch.cuda.current_stream(y.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        rng = torch.cuda.default_generators[y.device.index if y.device.index is not None else torch.cuda.current_device()]
        kept, stream = rng.clone_state(), torch.cuda.current_stream(y.device)
        try:
            with torch.cuda.graph(graph):
                static_out = run()
        except Exception:
            # a capture that fails half-way leaves the device's default generator marked as
            # capturing, so that every later random draw on the device fails ("Offset increment
            # outside graph capture"): give it back its state from before (the chain draws
            # none), and the stream the failed exit may have left current
            rng.graphsafe_set_state(kept)
            torch.cuda.set_stream(stream)
            raise
        return _Captured(graph, static_y, static_noise, static_bounds, static_out)


@dataclass
class _Captured:
    """A captured chain and every tensor its replays read or write."""

    graph: torch.cuda.CUDAGraph
    static_y: Tensor  # the chain's start, copied in before each replay
    static_noise: Tensor  # (steps, *y.shape) N(0, I) draws, copied in before each replay
    static_bounds: tuple[Tensor, Tensor] | None  # read by every replay: must outlive the capture
    static_out: Tensor  # the result, in the graph's own pool
    checks_left: int = 2  # replays still to be compared with eager code
