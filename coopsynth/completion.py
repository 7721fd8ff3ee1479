"""Completion (inpainting) of a texture image or video from its own visible pixels.

1. Learn a model from the visible pixels only (the trainer's mask: masked descriptor data term and
   masked generator loss), or take an already trained model.
   Steps 2-5 run on each of the `pieces` in turn: the missing pixels' regions (their bounding box
   widened by the networks' reach and `context` visible pixels; far-apart holes get one each),
   long videos' in time windows; each is pasted back before the next.
2. Infer Z for the piece by Langevin on the generator's posterior over its visible pixels (videos
   with `smooth`: under a prior correlated over time, by inferring the white noise behind Z); the
   gradient window by window for large pieces (`windowed_likelihood`).
3. Seam g(Z) into the visible pixels: g(Z) misses them by a residual (it cannot reproduce every
   detail), and the fill would start with a jump at the hole's edge. The residual, extended into
   the hole by a screened Poisson equation (`seam_fill`), bends g(Z) to meet its neighbours and
   fades within `seam` pixels, so a big hole's interior stays the generator's.
4. Start from the seamed g(Z) and run descriptor Langevin with the visible pixels held fixed.
5. Put the visible pixels back exactly as they were: only missing pixels change.

Masks are bool tensors, True = missing: (H, W) for images, (T, H, W) for videos.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import CoopsynthError
from .io import read_image, read_image_rgba, read_video
from .langevin import generator_posterior_langevin
from .model import CoopModel, frozen, smooth_over_time, smoothing_white
from .networks import Descriptor, Generator, NetConfig, window_slices

Tensor = torch.Tensor
INFER_STEPS = 60  # latent inference: Langevin steps on the generator's posterior
INFER_MAX_DRIFT = 0.5  # latent inference: the largest gradient move of one element of Z per step (Z ~ N(0, 1))
SEAM_LENGTH = 8.0  # pixels (frames too, for videos) over which g(Z) bends to meet the visible pixels; 0 = off
SMOOTH_MISSING_FRAMES = 4.0  # videos: the latent's time correlation (latent frames) for a mean over whole missing frames
INFER_WINDOW = 128  # latent cells per side of one window of the latent inference's gradient (1024 px)
INFER_VOXELS = 2**20  # videos: output voxels per window of the latent inference's gradient (a 1024x1024 image's pixels)
CONTEXT = 64  # visible pixels (frames) kept around the missing ones beyond the networks' reach; None = all
VIDEO_VOXELS = 2**24  # videos: the most voxels (times --average) completed at once; longer regions go in time windows


# ----------------------------------------------------------------------------------------------
# masks


def parse_key_color(text: str) -> tuple[int, int, int]:
    """--key-color as R,G,B (0-255 each) or as hex, #RRGGBB (the # optional, as colour pickers copy it)."""
    hexa = text.strip().removeprefix("#")
    if len(hexa) == 6 and all(c in "0123456789abcdefABCDEF" for c in hexa):
        return int(hexa[:2], 16), int(hexa[2:4], 16), int(hexa[4:], 16)
    try:
        r, g, b = (int(v) for v in text.split(","))
    except ValueError:
        raise CoopsynthError(f"--key-color '{text}': expected R,G,B such as 255,0,255 or hex such as #ff00ff") from None
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise CoopsynthError(f"--key-color '{text}': each value must be 0-255")
    return r, g, b


def mask_from_alpha(alpha: Tensor | None, path: Path) -> Tensor:
    if alpha is None:
        raise CoopsynthError(
            f"{path}: has no alpha channel; give --mask MASK or --key-color R,G,B to say which pixels are missing"
        )
    return alpha < 0.5 / 255


def mask_from_key_color(image: Tensor, rgb: tuple[int, int, int]) -> Tensor:
    """Pixels equal to the key colour (to 8-bit precision) are missing."""
    key = torch.tensor(rgb, dtype=torch.float32) / 255.0
    img = image if image.shape[0] == 3 else image.expand(3, *image.shape[1:])
    return ((img - key.view(3, *([1] * (img.dim() - 1)))).abs() < 0.5 / 255).all(0)


def read_mask_image(path: Path, size: tuple[int, int]) -> Tensor:
    """A mask image (white = missing) as bool (H, W); one line if it is not an image or not `size`."""
    m = read_image(path).mean(0) > 0.5
    if tuple(m.shape) != tuple(size):
        raise CoopsynthError(f"{path}: the mask is {m.shape[1]}x{m.shape[0]} but the input is {size[1]}x{size[0]}")
    return m


def read_mask_video(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """A mask video (white = missing) as bool (T, H, W)."""
    v, _ = read_video(path)
    m = v.mean(0) > 0.5  # (T, H, W)
    if tuple(m.shape) != tuple(shape):
        t, h, w = m.shape
        raise CoopsynthError(
            f"{path}: the mask video is {w}x{h}x{t} frames but the input is {shape[2]}x{shape[1]}x{shape[0]} frames"
        )
    return m


def parse_frame_range(text: str, frames: int) -> tuple[int, int]:
    """'A:B' (B exclusive, Python style; either may be empty) -> (a, b) within [0, frames]."""
    try:
        a_s, b_s = text.split(":")
        a = int(a_s) if a_s else 0
        b = int(b_s) if b_s else frames
    except ValueError:
        raise CoopsynthError(f"--missing-frames '{text}': expected A:B, such as 16:32") from None
    if not 0 <= a < b <= frames:
        raise CoopsynthError(f"--missing-frames '{text}': must satisfy 0 <= A < B <= {frames}")
    return a, b


def check_mask(missing: Tensor, path: Path) -> None:
    n = int(missing.sum())
    if n == 0:
        raise CoopsynthError(f"{path}: nothing is masked; there is nothing to complete")
    if n == missing.numel():
        raise CoopsynthError(f"{path}: everything is masked; there is nothing to learn from")


def load_masked_image(path: Path, mask: Path | None, key_color: str | None) -> tuple[Tensor, Tensor, int]:
    """The image (C, H, W), its missing-pixel mask (H, W) by the three conventions, and its bit
    depth (8 or 16, `io.Image.bits`)."""
    image, alpha, bits = read_image_rgba(path)
    size = tuple(image.shape[1:])
    if mask is not None and key_color is not None:
        raise CoopsynthError("give either --mask or --key-color, not both")
    if mask is not None:
        missing = read_mask_image(mask, size)
    elif key_color is not None:
        missing = mask_from_key_color(image, parse_key_color(key_color))
    else:
        missing = mask_from_alpha(alpha, path)
    check_mask(missing, mask or path)
    return image, missing, bits


def parse_context(text: str) -> int | None:
    """--context: a number of pixels (`region` refuses one below 0), or 'all' (None: the whole input)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise CoopsynthError(f"--context '{text}': expected a number of pixels, such as 64, or 'all'") from None
    return n


def _reach(net: NetConfig, dims: int) -> list[tuple[int, int]]:
    """(pixels, grid) per axis of the trailing [T,] H, W: the descriptor's reach (the pixels its
    energy gradient at a pixel depends on) plus the generator's halo (the latent cells behind a
    pixel, in pixels); the grid of the descriptor's stride and the generator's up-sampling."""
    with torch.device("meta"):  # the networks' geometry, without their weights
        descriptor, generator = Descriptor(net), Generator(net)
    return [
        (descriptor.reach(a) + generator.halo(a) * u, math.lcm(descriptor.stride(a), u))
        for a, u in zip(range(-dims, 0), net.up, strict=True)
    ]


def _margins(net: NetConfig, dims: int, context: int, smooth: float) -> list[tuple[int, int]]:
    """(margin, grid) per axis: `_reach` plus `context`, and for videos with `smooth` the time
    prior's reach."""
    if context < 0:
        raise CoopsynthError(f"--context {context}: must be 0 or more (or 'all')")
    out = [(r + context, g) for r, g in _reach(net, dims)]
    if dims == 3 and smooth > 0:  # the prior's correlation: 3 standard deviations
        out[0] = (out[0][0] + math.ceil(3 * smooth) * net.up[0], out[0][1])
    return out


def _box(missing: Tensor, margins: list[tuple[int, int]]) -> tuple[slice, ...]:
    """The missing pixels' bounding box widened by each axis's margin, its start on the grid (or
    at 0); the whole input when nothing is missing."""
    where = missing.nonzero()  # (n, dims)
    if len(where) == 0:
        return tuple(slice(0, n) for n in missing.shape)
    first, last = where.min(0).values.tolist(), where.max(0).values.tolist()
    return tuple(
        slice(max(0, a - m) // g * g, min(n, b + 1 + m))
        for a, b, n, (m, g) in zip(first, last, missing.shape, margins, strict=True)
    )


def region(net: NetConfig, missing: Tensor, context: int | None = CONTEXT, smooth: float = 0.0) -> tuple[slice, ...]:
    """The box of the input ([T,] H, W) a completion of `missing` works on: the missing pixels'
    bounding box widened on every side by `_margins` (the networks' reach, `context` visible
    pixels or frames, the time smoothing's reach); None = the whole input. The box starts on a
    multiple of the descriptor's stride and the generator's up-sampling (or at 0), so the
    descriptor's refinement of the missing pixels is the whole input's; the latent inference sees
    `context` pixels of visible input beyond the cells behind the hole."""
    if context is None:
        return tuple(slice(0, n) for n in missing.shape)
    return _box(missing, _margins(net, missing.dim(), context, smooth))


def regions(net: NetConfig, missing: Tensor, context: int | None = CONTEXT, smooth: float = 0.0) -> list[tuple[slice, ...]]:
    """The boxes a completion works on, one after another: one `region` per group of missing
    pixels, the groups split wherever a band of lines (rows, columns, frames) free of missing pixels
    is wide enough that their regions cannot overlap (at least twice the margin plus the grid). So
    each box holds its own group's missing pixels alone, and far-apart holes in a large image each
    cost about the hole. One box (the whole input for None) when nothing splits."""
    if context is None:
        return [region(net, missing, None)]
    margins = _margins(net, missing.dim(), context, smooth)  # once: every group has the same
    out: list[tuple[slice, ...]] = []

    def split(mask: Tensor) -> None:  # mask: missing with the other groups' lines cleared
        for ax, (m, g) in enumerate(margins):
            others = tuple(d for d in range(mask.dim()) if d != ax)
            lines = (mask.any(dim=others) if others else mask).nonzero().flatten()  # missing lines along ax
            cuts = ((lines[1:] - lines[:-1]) >= 2 * m + g).nonzero().flatten().tolist()
            if cuts:
                bounds = [0, *(int(lines[c + 1]) for c in cuts), mask.shape[ax]]
                for a, b in itertools.pairwise(bounds):
                    part = torch.zeros_like(mask)
                    keep = (slice(None),) * ax + (slice(a, b),)
                    part[keep] = mask[keep]
                    split(part)
                return
        out.append(_box(mask, margins))

    split(missing)
    return out


def pieces(
    net: NetConfig, missing: Tensor, context: int | None = CONTEXT, smooth: float = 0.0, average: int = 1
) -> list[tuple[slice, ...]]:
    """The boxes a completion works on, in order: the `regions`, and for videos a region of more
    than VIDEO_VOXELS voxels (times `average`) cut down in time. Its visible frames on either side
    of the missing ones shrink first, to as many as fit (at least `overlap`: the descriptor's reach
    plus the generator's halo over time); missing frames that still do not fit go in time windows
    that share `overlap` frames, so memory stays bounded however long the clip. A window's shared
    frames are filled by the one before it and held as visible, so each window continues the last
    (a chain over time: only the last window sees the visible frames after the gap). Images:
    `regions`."""
    boxes = regions(net, missing, context, smooth)
    if missing.dim() != 3:
        return boxes
    overlap = _reach(net, 3)[0][0]  # frames
    out = []
    for box in boxes:
        t, *hw = box
        length = max(VIDEO_VOXELS // (math.prod(b.stop - b.start for b in hw) * average), 2 * overlap + 1)
        if t.stop - t.start <= length:
            out.append(box)
            continue
        times = missing[box].flatten(1).any(1).nonzero().flatten()  # the box's frames with missing pixels
        first, last = t.start + int(times[0]), t.start + int(times[-1]) + 1
        pad = max(overlap, (length - (last - first)) // 2)  # visible frames kept on each side
        a, stop = max(t.start, first - pad), min(t.stop, last + pad)
        final = max(a, stop - length)  # the last window ends with the visible frames after the gap
        while a < final:  # the one before it ends `overlap` into it, so it has missing frames to fill
            b = min(a + length, final + overlap)
            out.append((slice(a, b), *hw))
            a = b - overlap
        out.append((slice(final, stop), *hw))
    return out


# ----------------------------------------------------------------------------------------------
# seam


def _edge_sum(v: Tensor, dims: int) -> Tensor:
    """sum over the 2 * dims axis neighbours q of (v_p - v_q), for v (..., *S) with len(S) == dims;
    a neighbour beyond the border counts as v_p itself (no flux through the border)."""
    out = torch.zeros_like(v)
    for ax in range(v.dim() - dims, v.dim()):
        n = v.shape[ax]
        if n < 2:
            continue
        d = v.narrow(ax, 1, n - 1) - v.narrow(ax, 0, n - 1)  # v[i + 1] - v[i]
        out.narrow(ax, 0, n - 1).sub_(d)
        out.narrow(ax, 1, n - 1).add_(d)
    return out


def seam_fill(values: Tensor, missing: Tensor, length: float = SEAM_LENGTH, tol: float = 1e-4, max_iters: int = 2000) -> Tensor:
    """Extend `values` (B, C, *S) from its visible entries into the missing ones (missing: bool S):
    u solves  (1 / length^2) u - laplacian(u) = 0  on the missing entries, u = values on the visible
    ones. length = inf gives the harmonic (membrane) fill; a finite length makes the fill fade to 0
    over about `length` entries from the hole's edge. Solved by conjugate gradients (the operator
    is symmetric positive definite on the missing entries) to a relative residual of `tol`.
    The system couples the missing entries and their axis neighbours alone, so it is solved on the
    missing entries' bounding box, one entry wider: a small hole in a large image costs the hole."""
    if not length > 0:  # NaN too
        raise CoopsynthError(f"seam length {length}: must be above 0")
    dims = missing.dim()
    where = missing.nonzero()  # (n, dims)
    if len(where) == 0:
        return values
    lo = (where.min(0).values - 1).clamp_min(0).tolist()
    hi = [min(int(e) + 2, n) for e, n in zip(where.max(0).values, missing.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    if any(b - a < n for a, b, n in zip(lo, hi, missing.shape, strict=True)):
        out = values.clone()
        out[(..., *box)] = seam_fill(values[(..., *box)], missing[box], length, tol, max_iters)
        return out
    x = values.to(torch.promote_types(values.dtype, torch.float32))  # bf16 in, fp32 solve
    m = missing.to(x.device, x.dtype).expand_as(x)  # (B, C, *S) 1 = unknown
    screen = 0.0 if math.isinf(length) else 1.0 / (length * length)

    def op(u: Tensor) -> Tensor:  # the system's matrix on the unknowns (u is 0 off them)
        return (screen * u + _edge_sum(u, dims)) * m

    b = -_edge_sum(x * (1 - m), dims) * m  # the visible neighbours' pull
    u = torch.zeros_like(x)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum()
    stop = (tol * tol) * rr
    for _ in range(max_iters):
        if rr <= stop or rr == 0:
            break
        ap = op(p)
        a = rr / (p * ap).sum()
        u = u + a * p
        r = r - a * ap
        rr, rr_old = (r * r).sum(), rr
        p = r + (rr / rr_old) * p
    return torch.where(m.bool(), u, x).to(values.dtype)


# ----------------------------------------------------------------------------------------------
# recovery


def infer_windows(net: NetConfig, cells: tuple[int, ...]) -> tuple[int, ...]:
    """Latent cells per window, per axis, of the latent inference's gradient for a latent of
    `cells` ([t,] h, w): INFER_WINDOW in space; for videos as many latent frames as keep a window
    near INFER_VOXELS output voxels (at least one)."""
    if len(cells) == 2:
        return (INFER_WINDOW, INFER_WINDOW)
    up_t, up_h, up_w = net.up
    frame = min(cells[1], INFER_WINDOW) * up_h * min(cells[2], INFER_WINDOW) * up_w  # output pixels of a window's frame
    return (max(1, INFER_VOXELS // (frame * up_t)), INFER_WINDOW, INFER_WINDOW)


def windowed_likelihood(
    net: Generator,
    target: Tensor,
    visible: Tensor,
    s: float,
    window: int | tuple[int, ...] = INFER_WINDOW,
    layout: Callable[[Tensor], Tensor] | None = None,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """z -> (the log-likelihood -|m (Y - g(Z))|^2 / (2 s^2) (B,), its gradient like z), g(Z)
    cropped to Y's size, computed window by window: `window` latent cells per axis (one number:
    every axis) plus the generator's halo, so memory is bounded by the window whatever the size.
    The same numbers as one pass up to float rounding: each window's kept output depends on its
    own latent cells alone, and the kept outputs tile the output. target (B, C, [T,] H, W);
    visible (1, 1, [T,] H, W), 1 = observed. `layout(zw)` lays each window's latent out for the
    pass (`CoopModel.graph_layout`); None: as it is."""
    dims = net.cfg.dims
    size = target.shape[-dims:]
    halos = tuple(net.halo(a) for a in range(-dims, 0))
    wins = (window,) * dims if isinstance(window, int) else tuple(window)

    def fn(z: Tensor) -> tuple[Tensor, Tensor]:
        ll = z.new_zeros(z.shape[0])  # (B,)
        grad = torch.zeros_like(z)  # (B, zc, [t,] h, w)
        for src, keep, dst in window_slices(tuple(z.shape[-dims:]), wins, halos, net.cfg.up):
            # the window's own pixels inside the image: the last windows overhang it
            cut = [min(d.stop, n) - d.start for d, n in zip(dst, size, strict=True)]
            keep = tuple(slice(k.start, k.start + c) for k, c in zip(keep, cut, strict=True))
            dst = tuple(slice(d.start, d.start + c) for d, c in zip(dst, cut, strict=True))
            zw = z[(..., *src)].detach().requires_grad_(True)
            with torch.enable_grad():
                r = (target[(..., *dst)] - net(zw if layout is None else layout(zw))[(..., *keep)]) * visible[(..., *dst)]
                part = -(r * r).flatten(1).sum(1) / (2 * s * s)  # (B,)
                (g,) = torch.autograd.grad(part.sum(), zw)
            ll += part.detach()
            grad[(..., *src)] += g
        return ll, grad

    return fn


def through_smoothing(likelihood: Callable[[Tensor], tuple[Tensor, Tensor]], width: float):
    """A likelihood of Z as one of the white noise e behind Z = smooth_over_time(e, width): the
    gradient carried back through the (linear) smoothing."""

    def fn(e: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            e = e.detach().requires_grad_(True)
            z = smooth_over_time(e, width)
        ll, gz = likelihood(z.detach())
        (ge,) = torch.autograd.grad(z, e, gz)
        return ll, ge

    return fn


# Completion's peak memory on a CPU with the default networks, per pixel (voxel) of the input and
# per completion averaged (ad-hoc, 2026-11-27, peak resident memory): an image up to 1024 px a side
# takes one generator pass, 1.6 KiB a pixel; a larger one infers window by window, about 0.4 KiB a
# pixel plus 2 GiB; a video infers in windows of INFER_VOXELS: 0.63, 1.45 and 3.78 GiB above what
# the process held for 0.5, 2.1 and 8.4 million voxels of 128x128 frames
# (benchmarks/completion_memory.py, 2026-11-27 12:18 UTC), fitted by 0.39 KiB a voxel plus 0.43
# KiB a voxel of one inference window plus 0.24 GiB; taken here with a margin of about 1.2x
KIB = 1024


def memory_needed(shape: tuple[int, ...], average: int = 1) -> int:
    """About how many bytes completing an input of `shape` ([T,] H, W) takes on a CPU."""
    n = math.prod(shape) * average
    if len(shape) == 3:
        window = min(math.prod(shape), INFER_VOXELS) * average
        return int(0.45 * KIB * n + 0.55 * KIB * window + 0.5 * 2**30)
    if max(shape) <= INFER_WINDOW * 8:
        return int(1.6 * KIB * n)
    return int(0.4 * KIB * n + 2 * 2**30)


def memory_available() -> int | None:
    """Bytes this machine can hand out now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_refine(langevin_steps: int, average: int) -> int:
    """Descriptor steps after the seamed g(Z) when the user gives none: the training's L for one
    completion (they make it a plausible sample), none for a mean of several. In every case
    measured the revision raised the mean's error: it adds detail that does not average out
    (RESULTS.md, 2026-11-26)."""
    return langevin_steps if average == 1 else 0


def default_smooth(missing: Tensor, average: int) -> float:
    """`--smooth` when the user gives none: SMOOTH_MISSING_FRAMES for the mean of several
    completions of a video with whole frames missing, else 0. There it cut the mean's error over a
    missing third of the frames on both clips measured (flame 15.3 -> 4.4, foliage 13.0 -> 12.1);
    it raised one completion's error on both and the mean's over 8x8 blocks (RESULTS.md,
    2026-11-26)."""
    whole = missing.dim() == 3 and bool(missing.flatten(1).all(1).any())
    return SMOOTH_MISSING_FRAMES if whole and average > 1 else 0.0


def complete(
    model: CoopModel,
    image: Tensor,
    missing: Tensor,
    *,
    langevin: dict,
    infer_steps: int = INFER_STEPS,
    infer_delta: float = 0.05,
    infer_s: float = 1.0,
    refine: int = 6,
    average: int = 1,
    seam: float = SEAM_LENGTH,
    smooth: float = 0.0,
    context: int | None = CONTEXT,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Fill the missing pixels of `image` (C, [T,] H, W) in [0, 1]; visible pixels are returned as given.

    missing: bool ([T,] H, W), True = missing.
    average: draw this many completions at once (one batch) and return their mean: 1 gives one
    plausible completion; more give an estimate of the missing pixels' conditional mean, the
    smallest expected error but smooth where the model is unsure (a sample's expected error is
    about 1.4 times the mean's for a Gaussian conditional, whatever the model).
    seam: the length (pixels) of `seam_fill` that bends g(Z) to meet the visible pixels; 0 = off.
    smooth: videos: the latent's prior is correlated over time by a Gaussian of this many latent
    frames (as `sample --smooth`), and the inference runs on the white noise behind it, so the
    latent of missing frames follows the visible frames around them; 0 = the plain N(0, I) prior.
    context: visible pixels (frames) kept around the missing ones beyond the networks' reach: the
    completion works on the `pieces` alone (the regions; long videos' in time windows), one after
    another, and pastes them back; None = the whole input (still in time windows for long videos).
    callback(info): progress, info {"phase" ("infer", "seam", "refine"), "done", "of"}: after each
    latent inference step (done 1..infer_steps), and as the seam and the refinement end (1 of 1);
    with more than one piece also "part" (1-based), "parts" and "span": (start, size), the piece's
    share of all the pieces' pixels (voxels), for progress in proportion to the work.
    """
    if average < 1:
        raise CoopsynthError(f"--average {average}: must be at least 1")
    if not seam >= 0:
        raise CoopsynthError(f"--seam {seam:g}: must be 0 or more")
    if not smooth >= 0:
        raise CoopsynthError(f"--smooth {smooth:g}: must be 0 or more")
    kw = dict(langevin=langevin, infer_steps=infer_steps, infer_delta=infer_delta, infer_s=infer_s, refine=refine)
    kw.update(average=average, seam=seam, smooth=smooth, generator=generator)
    boxes = pieces(model.net, missing, context, smooth, average)
    if boxes == [region(model.net, missing, None)]:  # one piece: the whole input
        return _complete_piece(model, image, missing, callback=callback, **kw)
    out, todo = image.clone(), missing.clone()  # what earlier boxes filled is visible to later ones
    sizes = [math.prod(b.stop - b.start for b in box) for box in boxes]
    starts = [sum(sizes[:k]) / sum(sizes) for k in range(len(boxes))]
    for k, box in enumerate(boxes):
        if not todo[box].any():
            continue
        span = {"part": k + 1, "parts": len(boxes), "span": (starts[k], sizes[k] / sum(sizes))}
        part_callback = None if callback is None else lambda info, span=span: callback({**info, **span})
        out[(slice(None), *box)] = _complete_piece(model, out[(slice(None), *box)], todo[box], callback=part_callback, **kw)
        todo[box] = False
    return out


def _complete_piece(
    model: CoopModel,
    image: Tensor,
    missing: Tensor,
    *,
    langevin: dict,
    infer_steps: int,
    infer_delta: float,
    infer_s: float,
    refine: int,
    average: int,
    seam: float,
    smooth: float,
    generator: torch.Generator | None,
    callback: Callable[[dict], None] | None,
) -> Tensor:
    """`complete` of one piece, all of `image` (C, [T,] H, W): steps 2-5 of the module's recipe."""
    dev = model.device
    size = tuple(image.shape[1:])
    x = model.normalise(image.to(dev))[None]  # (1, C, [T,] H, W) standardised
    visible = (~missing).to(dev)[None, None].float()  # (1, 1, [T,] H, W)
    x = x * visible
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in size)

    def g(z: Tensor) -> Tensor:
        return model.generator(model.graph_layout(z))[crop]

    smoothed = smooth > 0 and len(size) == 3  # infer the white noise e behind a time-smoothed Z
    if smoothed:
        e = smoothing_white((average, *model.generator.latent_shape(size)), smooth, generator, dev)
    else:
        e = model.latent(average, size, generator)  # Z itself

    def to_z(e: Tensor) -> Tensor:
        return smooth_over_time(e, smooth) if smoothed else e

    target = x.expand(average, *x.shape[1:])
    likelihood = None  # large inputs: the gradient window by window (bounded memory, the same numbers)
    cells = model.generator.latent_shape(size)[1:]  # ([t,] h, w)
    wins = infer_windows(model.net, cells)
    if any(n > w for n, w in zip(cells, wins, strict=True)):
        likelihood = windowed_likelihood(model.generator, target, visible, infer_s, wins, layout=model.graph_layout)
        if smoothed:
            likelihood = through_smoothing(likelihood, smooth)
    with frozen(model.generator):
        e = generator_posterior_langevin(
            lambda e: g(to_z(e)),
            e,
            target=target,
            steps=infer_steps,
            delta=infer_delta,
            s=infer_s,
            mask=visible,
            max_drift=INFER_MAX_DRIFT,
            generator=generator,
            likelihood_grad=likelihood,
            callback=None
            if callback is None
            else lambda info: callback({"phase": "infer", "done": info["step"] + 1, "of": infer_steps}),
        )
    y0 = model.generate(to_z(e), size)  # (A, C, [T,] H, W)
    known = visible.bool().expand_as(y0)
    if seam > 0:
        y0 = y0 + seam_fill(torch.where(known, target - y0, 0.0), missing.to(dev), seam)  # meets the visible pixels
    if callback is not None:
        callback({"phase": "seam", "done": 1, "of": 1})
    y = model.revise(y0, steps=refine, known=target, known_mask=known, generator=generator, **langevin)
    if callback is not None:
        callback({"phase": "refine", "done": 1, "of": 1})
    if not torch.isfinite(y).all():
        raise CoopsynthError("the completion came out non-finite: the model is unusable (its training collapsed); retrain it")
    out = model.denormalise(y).clamp(0, 1).mean(0).to(image.device)  # (C, [T,] H, W)
    return torch.where(missing[None].to(image.device), out, image)  # visible pixels exactly as given
