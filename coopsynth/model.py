"""A trained CoopNets model: both networks, the pixel normalisation, and sampling.

`CoopModel.sample()` is the cooperative synthesis: the generator proposes g(Z) for a latent of
any size, then `refine` steps of descriptor Langevin revise it (0 = the generator alone), then
(images, by default) each channel is histogram-matched to the training data (`coopsynth.histogram`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator

import torch

from .accel import Accel, GraphedLangevin
from .cpugrad import PackedGrads
from .histogram import match as match_histogram
from .langevin import block_noise, descriptor_langevin
from .networks import Descriptor, Generator, NetConfig, circular_extend

Tensor = torch.Tensor
WINDOW = 96  # latent cells per side of one generator window (768 px at 8x up-sampling)
REFINE_WINDOW = 1024  # pixels per side of one Langevin refinement window (plus its halo)
VIDEO_WINDOW_VOXELS = 2**23  # videos: output voxels per generator / Langevin time window (plus halo)
CPU_CHUNK = 2**18  # CPU Langevin: pixels per gradient pass (beyond this the caches thrash; speed.py)
# Device types whose sampling runs the generator channels-last (images) or channels-last-3d
# (videos), in every precision: benchmarks/speed.py, "Generator memory layout". bf16 stayed
# contiguous until a CPU with bf16 units could measure it: on one with AMX a 1024x1024 sample
# without refinement took 2.5x less time channels-last, 1.3x less with it (2026-11-28). Videos
# joined once their folded blocks wrote the interleave channels-last-3d (networks._interleave_last)
SAMPLE_CHANNELS_LAST = {"cpu"}
# Device types whose image training runs the generator channels-last too (a channels-last Z, so
# every block; in bf16 too: the generator's pass 1.3-1.45x faster at 64-128 px crops on AMX).
# Where not, the output conv alone may (networks.OUTPUT_CHANNELS_LAST).
# Every block channels-last made the generator's backward slower until the channels-last
# interleave got its own backward; since, a training iteration is 1.04x faster than contiguous at
# a 64 px crop and 1.08x at 128 (speed.py --only layouts, 2026-11-27 07:32 UTC), 1.03x faster than
# with the output conv alone at 64-256 px (ad-hoc). Videos stay contiguous: channels-last-3d made
# a default video iteration 1.17x faster (ad-hoc), but the flame clip scored worse on each of three
# seeds (spatial SWD ratio 1.40-1.44 against 1.15-1.31; RESULTS.md, the note after the 2026-11-27
# 08:20 UTC video run). Their last block writes channels-last-3d for the output conv alone, which
# holds most of that speed (networks.OUTPUT_CHANNELS_LAST, since 2026-11-28)
TRAIN_CHANNELS_LAST = {"cpu"}
# Histogram matching of samples by default, per dims. Images: on the same trained models the
# median SWD ratio over 14 textures went from 1.42 to 1.25 (RESULTS.md, "Histogram matching").
# Videos: off; on the two clips it moved the spatial SWD ratio both ways (1.44 -> 1.08, 1.03 ->
# 1.22) and raised the motion ratio (1.12 -> 1.53, 1.04 -> 2.19): frame differences get the
# stretched contrast too
MATCH_HISTOGRAM = {2: True, 3: False}


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Weights need no gradient inside (Langevin reads only the input's); restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


class CoopModel:
    """Descriptor + generator + per-channel mean/std of the training data."""

    def __init__(self, net: NetConfig, mean: Tensor, std: Tensor, device: str | torch.device = "cpu", accel: Accel | None = None):
        self.net = net
        self.device = torch.device(device)
        self.accel = accel or Accel.for_device(self.device)
        fmt = self.accel.memory_format(net.dims)
        self.descriptor = Descriptor(net).to(self.device, memory_format=fmt)
        self.generator = Generator(net).to(self.device, memory_format=fmt)
        self.mean = mean.detach().float().cpu()  # (C,)
        self.std = std.detach().float().cpu()  # (C,)
        self.quantiles: Tensor | None = None  # (C, n) the training data's quantile function per channel, if known
        self._graphs: dict[tuple, GraphedLangevin] = {}  # per wrap setting, CUDA only
        self._packed = PackedGrads(self.descriptor, self.energy, lambda reason: self.accel.note(reason))  # CPU only

    @contextlib.contextmanager
    def using(self, accel: Accel) -> Iterator[CoopModel]:
        """Run with other speed settings (a sampling precision, say); the model's own come back after."""
        saved, self.accel = self.accel, accel
        try:
            yield self
        finally:
            self.accel = saved

    # ---- the networks under the run's precision --------------------------------------------------

    def energy(self, y: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        """f(Y) (B,) in float32, whatever precision the descriptor runs in."""
        with self.accel.autocast(self.device):
            return self.descriptor(y, wrap).float()

    def energies(self, *ys: Tensor) -> tuple[Tensor, ...]:
        """`energy` of each batch (B_i,): in one pass over all of them (each chain's energy is its
        own), except on a CPU beyond CPU_CHUNK pixels, where the caches thrash. In a training step
        (the data crops and the chains) one pass made the descriptor update 1.2x faster at 64 px
        crops, 1.00x at 128, 0.92x at 256 and 0.83x at 512 (CPU, ad-hoc, 2026-11-27)."""
        if self.device.type == "cpu" and sum(y[:, 0].numel() for y in ys) > CPU_CHUNK:
            return tuple(self.energy(y) for y in ys)
        return self.energy(torch.cat(ys)).split([y.shape[0] for y in ys])

    def propose(self, z: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        """g(Z) in float32 with the graph kept (training); `generate` is the no-graph, any-size one."""
        with self.accel.autocast(self.device):
            return self.generator(self.graph_layout(z), wrap).float()

    def graph_layout(self, z: Tensor) -> Tensor:
        """Z laid out for a generator pass with a graph (training, completion's latent inference):
        channels-last for images on device types in TRAIN_CHANNELS_LAST, so that every block runs
        so; as it is elsewhere (videos train contiguous). The same numbers up to rounding."""
        if self.device.type in TRAIN_CHANNELS_LAST and self.net.dims == 2:
            return z.contiguous(memory_format=torch.channels_last)  # (B, zc, h, w), stored (B, h, w, zc)
        return z

    # ---- pixels --------------------------------------------------------------------------------

    def _shape(self) -> tuple[int, ...]:
        return (-1,) + (1,) * self.net.dims

    def normalise(self, x: Tensor) -> Tensor:
        """[0, 1] pixels (..., C, [T,] H, W) -> standardised."""
        return (x - self.mean.to(x).view(self._shape())) / self.std.to(x).view(self._shape())

    def denormalise(self, y: Tensor) -> Tensor:
        """Standardised -> [0, 1] pixels, clamped."""
        return (y * self.std.to(y).view(self._shape()) + self.mean.to(y).view(self._shape())).clamp(0, 1)

    def bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The standardised values of pixel 0 and pixel 1 per channel: where real images live."""
        mean, std = self.mean.to(like).view(self._shape()), self.std.to(like).view(self._shape())
        return (0 - mean) / std, (1 - mean) / std

    # ---- synthesis -----------------------------------------------------------------------------

    def latent(
        self,
        batch: int,
        size: tuple[int, ...],
        generator: torch.Generator | None = None,
        smooth: float = 0.0,
        loop: bool = False,
    ) -> Tensor:
        """Z ~ N(0, I) of shape (B, zc, [t,] h, w) covering `size` ([T,] H, W).

        Videos: `smooth` > 0 correlates Z over latent time (a Gaussian of that width, in latent
        frames; every element stays N(0, 1)), which slows the generator's motion; `loop` makes
        the correlation circular, for a looping video. 0 draws exactly the plain Z."""
        shape = (batch, *self.generator.latent_shape(size))
        if smooth <= 0 or self.net.dims != 3:
            return torch.randn(shape, generator=generator, device=self.device)
        return time_smoothed_noise(shape, smooth, loop, generator, self.device)

    def generate(
        self,
        z: Tensor,
        size: tuple[int, ...],
        wrap: tuple[bool, ...] | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """g(Z) cropped to `size`, standardised, no graph; large outputs go window by window
        (the same result, bounded memory; `callback(done, windows)` after each)."""
        time_window = None
        if self.net.dims == 3:  # long videos: windows over time too, in latent frames
            up_t, up_h, up_w = self.net.up
            time_window = max(1, video_window_frames(z.shape[-2] * up_h, z.shape[-1] * up_w) // up_t)
        if self.device.type in SAMPLE_CHANNELS_LAST:
            z = z.contiguous(memory_format=torch.channels_last if self.net.dims == 2 else torch.channels_last_3d)
        with torch.no_grad(), self.accel.autocast(self.device):
            y = self.generator.windowed(z, WINDOW, wrap, time_window, callback)
        y = y[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
        if y.dtype != torch.float32 or not y.is_contiguous():  # float32, contiguous (what the refinement reads): one copy
            y = torch.empty(y.shape, dtype=torch.float32, device=y.device).copy_(y)
        return y

    def revise(
        self,
        y: Tensor,
        *,
        steps: int,
        delta: float,
        sigma: float,
        noise: float,
        wrap: tuple[bool, ...] | None = None,
        generator: torch.Generator | None = None,
        **kw,
    ) -> Tensor:
        """Descriptor Langevin from y (standardised); the weights get no gradient. On CUDA (with
        `accel.graphs`) the whole revision replays as one captured graph; see `coopsynth.accel`."""
        if steps <= 0:
            return y
        y = y.contiguous(memory_format=self.accel.memory_format(self.net.dims))
        with frozen(self.descriptor):
            if self.accel.graphs and y.is_cuda and set(kw) <= {"noise_fn"}:  # not completion or callbacks
                graphed = self._graphs.get(tuple(wrap or ()))
                if graphed is None:
                    graphed = self._graphs[tuple(wrap or ())] = GraphedLangevin(lambda x: self.energy(x, wrap), self.accel)
                noise_fn = kw.get("noise_fn") or (lambda i: torch.randn(y.shape, generator=generator, device=y.device))
                out = graphed(y, steps=steps, delta=delta, sigma=sigma, noise=noise, noise_fn=noise_fn, bounds=self.bounds(y))
                if out is not None:
                    return out
            return descriptor_langevin(
                lambda x: self.energy(x, wrap),
                y,
                steps=steps,
                delta=delta,
                sigma=sigma,
                noise=noise,
                generator=generator,
                bounds=self.bounds(y),
                max_batch=self.max_batch(y),
                energy_grad=self.closed_form(y, wrap),
                **kw,
            )

    def max_batch(self, y: Tensor) -> int | None:
        """Chains per gradient pass: on a CPU as many as fit CPU_CHUNK pixels (at least one)."""
        if y.device.type != "cpu":
            return None
        return max(1, CPU_CHUNK // max(1, y[0, 0].numel()))

    def closed_form(self, y: Tensor, wrap: tuple[bool, ...] | None = None):
        """The CPU closed-form energy gradient for chains like y (`coopsynth.cpugrad`), computed in
        bf16 under bf16 precision and in float32 otherwise, or None where autograd runs: on CUDA,
        channels-last, or with `closed_form` off."""
        a = self.accel
        if y.device.type != "cpu" or not a.closed_form or a.channels_last:
            return None
        return self._packed.for_input(y, wrap, torch.bfloat16 if a.precision == "bf16" else torch.float32)

    def revise_windowed(
        self,
        y: Tensor,
        *,
        steps: int,
        delta: float,
        sigma: float,
        noise: float,
        seed: int,
        wrap: tuple[bool, ...] | None = None,
        window: int | tuple[int | None, ...] = REFINE_WINDOW,
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Descriptor Langevin over windows of an image (1, C, H, W) or video (1, C, T, H, W), each
        with a halo of `steps` x the descriptor's reach along every split axis: equal to the
        whole-field chain up to float rounding (the noise is drawn per fixed block, see
        `block_noise`), with bounded memory. `window`: one side for every axis, or one per axis
        (None = that axis whole). `callback(done, windows)` after each window."""
        if steps <= 0:
            return y
        d = self.net.dims
        wrap = tuple(wrap) if wrap else (False,) * d
        size = tuple(y.shape[2:])
        wins = (window,) * d if isinstance(window, int) else tuple(window)
        wins = tuple(n if w is None else w for n, w in zip(size, wins, strict=True))
        axes = [d - a for a in range(d, 0, -1)]  # -d .. -1: the descriptor's per-axis geometry
        st = tuple(self.descriptor.stride(a) for a in axes)
        wins = tuple(n if n <= w else max(s, w // s * s) for n, w, s in zip(size, wins, st, strict=True))
        split = tuple(n > w for n, w in zip(size, wins, strict=True))
        halo = tuple(-(-steps * self.descriptor.reach(a) // s) * s if sp else 0 for a, s, sp in zip(axes, st, split, strict=True))
        off = tuple(h if w else 0 for h, w in zip(halo, wrap, strict=True))
        yp = circular_extend(y, off)  # circular context for split wrapped axes
        inner = tuple(w and not sp for w, sp in zip(wrap, split, strict=True))  # the network wraps whole axes

        def segments(a: int, b: int, axis: int) -> list[tuple[int, int, int]]:
            """(src_start, src_stop, dst_start) pieces of padded range [a, b) in field coordinates."""
            n, o, out, pos = size[axis], off[axis], [], a
            while pos < b:
                src = (pos - o) % n
                run = min(b - pos, n - src)
                out.append((src, src + run, pos - a))
                pos += run
            return out

        def noise_for(lo: tuple[int, ...], hi: tuple[int, ...]):
            def fn(step: int) -> Tensor:
                out = torch.empty(*y.shape[:2], *(b - a for a, b in zip(lo, hi, strict=True)), device=y.device)
                pieces = [segments(a, b, axis) for axis, (a, b) in enumerate(zip(lo, hi, strict=True))]
                for combo in itertools.product(*pieces):
                    region = tuple(slice(s0, s1) for s0, s1, _ in combo)
                    dst = tuple(slice(t, t + s1 - s0) for s0, s1, t in combo)
                    block_noise(y.shape, region, step, seed, out=out[(..., *dst)])
                return out

            return fn

        out = torch.empty_like(y)
        bounds = self.bounds(y)
        energy_grad = self.closed_form(y, inner)  # once: every window sees the same weights
        corners = list(itertools.product(*(range(0, n, w) for n, w in zip(size, wins, strict=True))))
        with frozen(self.descriptor):
            for k, corner in enumerate(corners):
                ends = tuple(min(c + w, n) for c, w, n in zip(corner, wins, size, strict=True))
                lo = tuple(max(c - h, -o) + o for c, h, o in zip(corner, halo, off, strict=True))
                hi = tuple(min(e + h, n + o) + o for e, h, n, o in zip(ends, halo, size, off, strict=True))
                r = descriptor_langevin(
                    lambda x: self.energy(x, inner),
                    yp[(..., *(slice(a, b) for a, b in zip(lo, hi, strict=True)))],
                    steps=steps,
                    delta=delta,
                    sigma=sigma,
                    noise=noise,
                    noise_fn=noise_for(lo, hi),
                    bounds=bounds,
                    max_batch=self.max_batch(y),
                    energy_grad=energy_grad,
                )
                keep = tuple(slice(c + o - a, c + o - a + e - c) for c, o, a, e in zip(corner, off, lo, ends, strict=True))
                out[(..., *(slice(c, e) for c, e in zip(corner, ends, strict=True)))] = r[(..., *keep)]
                if callback is not None:
                    callback(k + 1, len(corners))
        return out

    def matches(self, match: bool | None = None) -> bool:
        """Whether `sample(match=match)` histogram-matches its output: None means MATCH_HISTOGRAM
        of the dims; never without stored quantiles."""
        return (MATCH_HISTOGRAM[self.net.dims] if match is None else match) and self.quantiles is not None

    def sample(
        self,
        n: int,
        size: tuple[int, ...],
        *,
        refine: int,
        langevin: dict,
        wrap: tuple[bool, ...] | None = None,
        generator: torch.Generator | None = None,
        smooth: float = 0.0,
        match: bool | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> Tensor:
        """n samples (n, C, [T,] H, W) in [0, 1] of any `size`. Videos: `smooth` correlates the
        latents over time (see `latent`): slower motion. `match`: map each sample's channels onto
        the training data's distribution (`histogram.match`; None: MATCH_HISTOGRAM of the dims;
        nothing where `quantiles` is None). `callback(info)` after every window of each phase:
        info {"sample", "samples", "phase" ("generator" or "refine"), "done", "windows"}.

        With `wrap` set on an axis the result is periodic along it (tileable texture, looping
        video): the generator and descriptor pad circularly on a latent grid, and a size that is
        not a multiple of the generator's up-sampling is reached by Fourier resampling, which keeps
        the periodicity exact.
        """
        wrap = tuple(wrap) if wrap else (False,) * self.net.dims
        d = self.net.dims
        floor = [self.descriptor.stride(a) if refine > 0 else 1 for a in range(-d, 0)]  # the descriptor's smallest input
        # wrapped axes: a whole number of latent cells; others: at least the descriptor's smallest
        # input (a smaller sample is cropped from a larger one)
        grid = tuple(-(-s // u) * u if w else max(s, f) for s, u, w, f in zip(size, self.net.up, wrap, floor, strict=True))
        match = self.matches(match)
        out = []
        for i in range(n):

            def report(phase: str, i: int = i) -> Callable[[int, int], None] | None:
                if callback is None:
                    return None
                return lambda done, windows: callback(
                    {"sample": i, "samples": n, "phase": phase, "done": done, "windows": windows}
                )

            z = self.latent(1, grid, generator, smooth, loop=wrap[0] and self.net.dims == 3)
            y = self.generate(z, grid, wrap, report("generator"))  # (1, C, [T,] H', W')
            # windowed (images: space; videos: time), so any size fits in memory; same result as one pass
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
            window = REFINE_WINDOW
            if self.net.dims == 3:
                window = (video_window_frames(*y.shape[-2:]), None, None)
            y = self.revise_windowed(y, steps=refine, wrap=wrap, seed=seed, window=window, callback=report("refine"), **langevin)
            if grid != tuple(size):
                y = periodic_resize(y, size, wrap)
            y = self.denormalise(y)  # (1, C, [T,] H, W) in [0, 1]
            if match:
                y = match_histogram(y[0], self.quantiles)[None]
            out.append(y)
        return torch.cat(out)


def time_smoothed_noise(
    shape: tuple[int, ...], width: float, loop: bool, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """N(0, 1) noise of `shape` (B, C, t, h, w) correlated over axis 2 by a Gaussian of `width`
    frames: white noise convolved with a unit-norm kernel, so each element keeps variance 1 and
    neighbouring frames share most of their draws. `loop`: circular over t (the last frame
    correlates with the first as with its other neighbour); else t + 2r frames are drawn and the
    valid part kept, so no frame sees an edge."""
    t, r = shape[2], time_smoothing_margin(width)
    if loop:  # fold the kernel onto t taps (a short loop wraps it more than once), then circular
        taps = _gaussian_taps(width, r)
        folded = torch.zeros(t, dtype=torch.float64).index_add_(0, torch.arange(-r, r + 1) % t, taps)
        folded = (folded / folded.norm()).float()
        white = torch.randn(shape, generator=generator, device=device)
        return sum(folded[k] * white.roll(-k, dims=2) for k in range(t))  # z_i = sum_k w_k n_(i+k)
    return smooth_over_time(smoothing_white(shape, width, generator, device), width)


def time_smoothing_margin(width: float) -> int:
    """Extra white-noise frames on each side that a smoothing of `width` latent frames reads."""
    return max(1, math.ceil(3 * width))


def smoothing_white(
    shape: tuple[int, ...], width: float, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """The white noise (B, C, t + 2r, h, w) behind a latent of `shape` (B, C, t, h, w) smoothed over
    time by `width` frames: `smooth_over_time` of it has `shape`."""
    t, r = shape[2], time_smoothing_margin(width)
    return torch.randn((*shape[:2], t + 2 * r, *shape[3:]), generator=generator, device=device)


def _gaussian_taps(width: float, r: int) -> Tensor:
    return torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / width) ** 2)  # (2r+1,)


def smooth_over_time(white: Tensor, width: float) -> Tensor:
    """(B, C, t + 2r, h, w) white noise -> (B, C, t, h, w), each frame a unit-norm Gaussian blend
    of its 2r + 1 neighbours (r = time_smoothing_margin(width)): N(0, 1) per element, correlated
    over time. Differentiable in `white`, so a latent can be inferred in the white-noise space."""
    r = time_smoothing_margin(width)
    t = white.shape[2] - 2 * r
    taps = _gaussian_taps(width, r)
    taps = (taps / taps.norm()).to(white.dtype)
    return sum(taps[k] * white[:, :, k : k + t] for k in range(2 * r + 1))


def video_window_frames(height: int, width: int) -> int:
    """Frames per time window of a long video of this size: VIDEO_WINDOW_VOXELS of output."""
    return max(1, VIDEO_WINDOW_VOXELS // (height * width))


def periodic_resize(y: Tensor, size: tuple[int, ...], wrap: tuple[bool, ...]) -> Tensor:
    """Resize the trailing axes of y to `size`: Fourier resampling on wrapped axes (exactly
    periodic), cropping on the others (only ever enlarged, to the descriptor's smallest input)."""
    dims = len(size)
    axes = [y.dim() - dims + i for i in range(dims) if wrap[i] and y.shape[y.dim() - dims + i] != size[i]]
    crop = (slice(None),) * (y.dim() - dims) + tuple(slice(0, s) for s in size)
    if not axes:
        return y[crop]
    spec = torch.fft.fftn(y, dim=axes)
    for ax in axes:
        n_old, n_new = y.shape[ax], size[ax - (y.dim() - dims)]
        spec = _resize_spectrum(spec, ax, n_old, n_new) * (n_new / n_old)
    out = torch.fft.ifftn(spec, dim=axes).real
    return out[crop]


def _resize_spectrum(spec: Tensor, ax: int, n_old: int, n_new: int) -> Tensor:
    """Keep the lowest frequencies of one axis of an FFT spectrum for a new length."""
    keep = min(n_old, n_new)
    pos = (keep + 1) // 2  # frequencies 0 .. pos-1
    neg = keep - pos  # frequencies -neg .. -1
    parts = [spec.narrow(ax, 0, pos)]
    shape = list(spec.shape)
    shape[ax] = n_new - keep
    parts.append(spec.new_zeros(shape))
    if neg:
        parts.append(spec.narrow(ax, n_old - neg, neg))
    return torch.cat(parts, dim=ax)
