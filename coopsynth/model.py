"""A trained CoopNets model: both networks, the pixel normalisation, and sampling.

`CoopModel.sample()` is the cooperative synthesis: the generator proposes g(Z) for a latent of
any size, then `refine` steps of descriptor Langevin revise it (0 = the generator alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .accel import Accel, GraphedLangevin
from .langevin import block_noise, descriptor_langevin
from .networks import Descriptor, Generator, NetConfig

Tensor = torch.Tensor
WINDOW = 96  # latent cells per side of one generator window (768 px at 8x up-sampling)
REFINE_WINDOW = 1024  # pixels per side of one Langevin refinement window (plus its halo)
CPU_CHUNK = 2**18  # CPU Langevin: pixels per gradient pass (beyond this the caches thrash; speed.py)


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
        self._graphs: dict[tuple, GraphedLangevin] = {}  # per wrap setting, CUDA only

    # ---- the networks under the run's precision --------------------------------------------------

    def energy(self, y: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        """f(Y) (B,) in float32, whatever precision the descriptor runs in."""
        with self.accel.autocast(self.device):
            return self.descriptor(y, wrap).float()

    def propose(self, z: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        """g(Z) in float32 with the graph kept (training); `generate` is the no-graph, any-size one."""
        with self.accel.autocast(self.device):
            return self.generator(z, wrap).float()

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

    def latent(self, batch: int, size: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Z ~ N(0, I) of shape (B, zc, [t,] h, w) covering `size` ([T,] H, W)."""
        shape = (batch, *self.generator.latent_shape(size))
        return torch.randn(shape, generator=generator, device=self.device)

    def generate(self, z: Tensor, size: tuple[int, ...], wrap: tuple[bool, ...] | None = None) -> Tensor:
        """g(Z) cropped to `size`, standardised, no graph; large outputs go window by window
        (the same result, bounded memory)."""
        with torch.no_grad(), self.accel.autocast(self.device):
            y = self.generator.windowed(z, WINDOW, wrap).float()
        return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]

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
                **kw,
            )

    def max_batch(self, y: Tensor) -> int | None:
        """Chains per gradient pass: on a CPU as many as fit CPU_CHUNK pixels (at least one)."""
        if y.device.type != "cpu":
            return None
        return max(1, CPU_CHUNK // max(1, y[0, 0].numel()))

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
        window: int = REFINE_WINDOW,
    ) -> Tensor:
        """Descriptor Langevin over spatial windows of an image (1, C, H, W), each with a halo of
        `steps` x the descriptor's reach: equal to the whole-image chain up to float rounding
        (the noise is drawn per fixed block, see `block_noise`), with bounded memory."""
        if steps <= 0:
            return y
        wrap = tuple(wrap) if wrap else (False, False)
        H, W = y.shape[-2:]
        st = self.descriptor.stride()
        halo = -(-steps * self.descriptor.reach() // st) * st
        window = max(st, window // st * st)
        off = tuple(halo if w else 0 for w in wrap)
        yp = y
        for axis, o in enumerate(off):  # circular context for tileable output (may wrap many times)
            if o:
                n = y.shape[-2 + axis]
                idx = torch.arange(-o, n + o, device=y.device) % n
                yp = yp.index_select(yp.dim() - 2 + axis, idx)
        size = (H, W)

        def segments(a: int, b: int, axis: int) -> list[tuple[int, int, int]]:
            """(src_start, src_stop, dst_start) pieces of padded range [a, b) in image coordinates."""
            n, o, out, pos = size[axis], off[axis], [], a
            while pos < b:
                src = (pos - o) % n
                run = min(b - pos, n - src)
                out.append((src, src + run, pos - a))
                pos += run
            return out

        def noise_for(a0: int, a1: int, b0: int, b1: int):
            def fn(step: int) -> Tensor:
                out = torch.empty(y.shape[0], y.shape[1], a1 - a0, b1 - b0, device=y.device)
                for rs, re, rd in segments(a0, a1, 0):
                    for cs, ce, cd in segments(b0, b1, 1):
                        out[:, :, rd : rd + re - rs, cd : cd + ce - cs] = block_noise(
                            y.shape, (slice(rs, re), slice(cs, ce)), step, seed, device=y.device
                        )
                return out

            return fn

        out = torch.empty_like(y)
        with frozen(self.descriptor):
            for i0 in range(0, H, window):
                for j0 in range(0, W, window):
                    i1, j1 = min(i0 + window, H), min(j0 + window, W)
                    a0, a1 = max(i0 - halo, -off[0]) + off[0], min(i1 + halo, H + off[0]) + off[0]
                    b0, b1 = max(j0 - halo, -off[1]) + off[1], min(j1 + halo, W + off[1]) + off[1]
                    r = descriptor_langevin(
                        self.energy,
                        yp[..., a0:a1, b0:b1],
                        steps=steps,
                        delta=delta,
                        sigma=sigma,
                        noise=noise,
                        noise_fn=noise_for(a0, a1, b0, b1),
                        bounds=self.bounds(y),
                    )
                    ti, tj = i0 + off[0] - a0, j0 + off[1] - b0
                    out[..., i0:i1, j0:j1] = r[..., ti : ti + i1 - i0, tj : tj + j1 - j0]
        return out

    def sample(
        self,
        n: int,
        size: tuple[int, ...],
        *,
        refine: int,
        langevin: dict,
        wrap: tuple[bool, ...] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """n samples (n, C, [T,] H, W) in [0, 1] of any `size`.

        With `wrap` set on an axis the result is periodic along it (tileable texture, looping
        video): the generator and descriptor pad circularly on a latent grid, and a size that is
        not a multiple of the generator's up-sampling is reached by Fourier resampling, which keeps
        the periodicity exact.
        """
        wrap = tuple(wrap) if wrap else (False,) * self.net.dims
        grid = tuple(-(-s // u) * u if w else s for s, u, w in zip(size, self.net.up, wrap, strict=True))
        out = []
        for _ in range(n):
            z = self.latent(1, grid, generator)
            y = self.generate(z, grid, wrap)  # (1, C, [T,] H', W')
            if self.net.dims == 2:  # windowed, so any size fits in memory; same result as one pass
                seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
                y = self.revise_windowed(y, steps=refine, wrap=wrap, seed=seed, **langevin)
            else:
                y = self.revise(y, steps=refine, wrap=wrap, generator=generator, **langevin)
            if grid != tuple(size):
                y = periodic_resize(y, size, wrap)
            out.append(self.denormalise(y))
        return torch.cat(out)


def periodic_resize(y: Tensor, size: tuple[int, ...], wrap: tuple[bool, ...]) -> Tensor:
    """Resize the trailing axes of y to `size`: Fourier resampling on wrapped axes (exactly
    periodic), cropping on the others (they were never enlarged)."""
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
