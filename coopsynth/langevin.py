"""Langevin samplers: small pure functions with one shared signature.

    sampler(fn, x, *, steps, delta, ..., generator=None, callback=None) -> x

`fn` is the model as a callable; `callback(info)` is called after every step with a dict
{"step", "x", "energy"}; `generator` is an optional `torch.Generator` for the noise. No progress
bars here. Gradients come from `torch.autograd.grad`, so the weights' .grad is never touched.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

Tensor = torch.Tensor
Callback = Callable[[dict], None] | None
EnergyGrad = Callable[[Tensor, bool], tuple[Tensor | None, Tensor]]  # (y, want f) -> (f (B,) or None, df/dy)

SCALAR_CLAMP_MIN = 1 << 16  # langevin_update clamps a CPU tensor of at least this many values channel by channel
PARALLEL_NOISE_MIN = 1 << 18  # block_noise draws a region of at least this many numbers on all of torch's threads


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def descriptor_langevin(
    energy: Callable[[Tensor], Tensor],
    y: Tensor,
    *,
    steps: int,
    delta: float,
    sigma: float,
    noise: float = 1.0,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_fn: Callable[[int], Tensor] | None = None,
    bounds: tuple[Tensor, Tensor] | None = None,
    max_batch: int | None = None,
    energy_grad: EnergyGrad | None = None,
    callback: Callback = None,
) -> Tensor:
    """L steps of  y <- y - (delta^2 / 2) (y / sigma^2 - df/dy) + noise * delta * N(0, I).

    energy: y (B, ...) -> f (B,), the descriptor. `noise` scales the Brownian term (1 is exact
    Langevin). Where `known_mask` is True, y is held at `known` (completion). `noise_fn(step)`, if
    given, supplies the N(0, I) draw of each step instead of `generator` (windowed sampling).
    `bounds` (lo, hi), broadcastable to y, projects every step back onto the valid pixel range.
    `max_batch` computes the gradient over at most that many chains at a time: the same numbers
    (each chain's energy depends on it alone) with a working set that stays in a CPU's caches.
    `energy_grad(y, want_f) -> (f, df/dy)`, if given, replaces autograd on `energy` (a closed form
    that must agree with it, such as `cpugrad.PackedDescriptor`); f is asked for only when there
    is a callback to read it, and may be None otherwise.
    """
    half = 0.5 * delta * delta
    y = y.detach()
    if known_mask is not None:
        y = torch.where(known_mask, known, y)
    want_f = callback is not None
    for i in range(steps):
        f, grad = _energy_grad(energy, y, max_batch, energy_grad, want_f)  # (B,) or None, like y
        with torch.no_grad():
            draw = None
            if noise:
                draw = _noise(y, generator) if noise_fn is None else noise_fn(i)
            y = langevin_update(y, grad, draw, half=half, sigma=sigma, scale=noise * delta, bounds=bounds)
            if known_mask is not None:
                y = torch.where(known_mask, known, y)
        if callback is not None:
            callback({"step": i, "x": y, "energy": f})
    return y


def langevin_update(
    y: Tensor,
    grad: Tensor,
    draw: Tensor | None,
    *,
    half: float,
    sigma: float,
    scale: float,
    bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One step's move, a new tensor like y (y itself is not written):

        y - half (y / sigma^2 - grad) + scale * draw, then clamped to bounds (lo, hi).

    Written as y (1 - half / sigma^2) + half grad + scale draw, in place on one fresh tensor: four
    passes over memory instead of the eight of the plain expression; bounds of one value a channel
    clamp channel by channel (SCALAR_CLAMP_MIN). A large field's update is memory-bound: see
    benchmarks/speed.py `--only refinement`.
    """
    out = torch.mul(y, 1.0 - half / (sigma * sigma))
    out.add_(grad, alpha=half)
    if draw is not None:
        out.add_(draw, alpha=scale)
    if bounds is not None:
        lo, hi = bounds
        if out.device.type == "cpu" and out.numel() >= SCALAR_CLAMP_MIN and _one_a_channel(lo, hi, out):
            # one bound a channel (the model's pixel range): a clamp by numbers, channel by
            # channel, is 6x faster on a CPU than one that broadcasts bound tensors
            for k, (a, b) in enumerate(zip(lo.flatten().tolist(), hi.flatten().tolist(), strict=True)):
                out[:, k].clamp_(a, b)
        else:
            torch.clamp(out, lo, hi, out=out)
    return out


def _one_a_channel(lo: Tensor, hi: Tensor, like: Tensor) -> bool:
    """Do bounds lo, hi hold one value per channel of like (B, C, ...), as (C, 1, ...) or (1, C, 1, ...)?"""
    want = (1, like.shape[1], *(1,) * (like.dim() - 2)) if like.dim() > 1 else None
    return lo.shape == hi.shape and (1,) * (like.dim() - lo.dim()) + tuple(lo.shape) == want


def _energy_grad(
    energy: Callable[[Tensor], Tensor],
    y: Tensor,
    max_batch: int | None,
    energy_grad: EnergyGrad | None = None,
    want_f: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """f(y) (B,) and df/dy, over slices of at most max_batch chains. f may be None where not
    `want_f` (autograd computes it anyway)."""
    if max_batch is None or y.shape[0] <= max_batch:
        if energy_grad is not None:
            return energy_grad(y, want_f)
        y = y.detach().requires_grad_(True)
        f = energy(y)
        (grad,) = torch.autograd.grad(f.sum(), y)
        return f.detach(), grad
    parts = [_energy_grad(energy, part, None, energy_grad, want_f) for part in y.split(max_batch)]
    fs = [f for f, _ in parts]
    f = None if any(f is None for f in fs) else torch.cat(fs)
    return f, torch.cat([g for _, g in parts])


def block_noise(
    shape: tuple[int, ...],
    region: tuple[slice, ...],
    step: int,
    seed: int,
    block: int = 64,
    device: torch.device | str | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """N(0, I) over `region` (one slice per trailing axis: rows, cols, or frames, rows, cols) of a
    (B, C, ...) field, drawn block by block: block (i, j, ...) of step s always gets the same
    numbers, whatever region asks for it. This makes a windowed Langevin chain draw exactly the
    noise a whole-field chain draws. `out`, if given, is the region's buffer to fill (any layout).

    The blocks have a generator each, so on a CPU a region of PARALLEL_NOISE_MIN numbers or more
    is drawn on all of torch's threads at once: PyTorch's CPU `normal_` runs on one thread, and was
    about an eighth of a long video's refinement. The numbers are the same either way."""
    b, c = shape[0], shape[1]
    if out is None:
        out = torch.empty(b, c, *(r.stop - r.start for r in region), device=device)
    ranges = [range(r.start // block, (r.stop - 1) // block + 1) for r in region]

    def fill(idx: tuple[int, ...]) -> None:
        g = torch.Generator().manual_seed(hash((seed, step, *idx)) & 0x7FFFFFFFFFFFFFFF)
        blk = torch.randn(b, c, *(block,) * len(region), generator=g)  # (B, C, block, ...)
        take, put = [], []
        for r, i in zip(region, idx, strict=True):
            lo, hi = max(r.start, i * block), min(r.stop, (i + 1) * block)
            take.append(slice(lo - i * block, hi - i * block))
            put.append(slice(lo - r.start, hi - r.start))
        out[(..., *put)] = blk[(..., *take)].to(out.device)

    def fill_all(blocks: list[tuple[int, ...]]) -> None:
        for idx in blocks:
            fill(idx)

    blocks = list(itertools.product(*ranges))
    threads = min(torch.get_num_threads(), len(blocks))
    if out.device.type == "cpu" and threads > 1 and len(blocks) * b * c * block ** len(region) >= PARALLEL_NOISE_MIN:
        # a share of the blocks per thread (they write disjoint parts of out)
        list(_pool(threads).map(fill_all, [blocks[k::threads] for k in range(threads)]))
    else:
        fill_all(blocks)
    return out


_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's workers: it makes its own
    os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of `threads` workers, made once per size (torch's thread count can change)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="coopsynth-noise")
    return _POOLS[threads]


def generator_posterior_langevin(
    generate: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    target: Tensor,
    steps: int,
    delta: float,
    s: float,
    noise: float = 1.0,
    mask: Tensor | None = None,
    max_drift: float | None = None,
    generator: torch.Generator | None = None,
    likelihood_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    callback: Callback = None,
) -> Tensor:
    """Infer Z for `target` by Langevin on log p(Z | Y) = -|m (Y - g(Z))|^2 / (2 s^2) - |Z|^2 / 2:

        z <- z + (delta^2 / 2) d/dz log p(Z | Y) + noise * delta * N(0, I)

    `mask` (broadcastable to target, 1 = observed) restricts the likelihood to visible pixels.
    `max_drift` caps each element's gradient move per step: a generator with a steep Jacobian (a
    collapsed model) otherwise throws Z to 1e8 in ten steps and then to NaN.
    `likelihood_grad(z) -> (log-likelihood (B,), its gradient like z)`, if given, replaces autograd
    through `generate` for the likelihood term (a windowed form with bounded memory that must
    agree with it, such as `completion.windowed_likelihood`).
    """
    half = 0.5 * delta * delta
    z = z.detach()
    for i in range(steps):
        if likelihood_grad is not None:
            ll, grad = likelihood_grad(z)
            logp = ll - 0.5 * (z * z).flatten(1).sum(1)  # (B,)
            grad = grad - z
        else:
            z.requires_grad_(True)
            r = target - generate(z)
            if mask is not None:
                r = r * mask
            logp = -(r * r).flatten(1).sum(1) / (2 * s * s) - 0.5 * (z * z).flatten(1).sum(1)  # (B,)
            (grad,) = torch.autograd.grad(logp.sum(), z)
        with torch.no_grad():
            drift = half * grad
            if max_drift is not None:
                drift = drift.clamp(-max_drift, max_drift)
            z = z + drift
            if noise:
                z = z + (noise * delta) * _noise(z, generator)
        if callback is not None:
            callback({"step": i, "x": z, "energy": logp.detach()})
    return z
