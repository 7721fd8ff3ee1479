"""Quality metrics of ../shared/EVALUATION.md: SWD ratio, copy index, diversity, motion ratio,
recovery error and hole SWD ratio.

Every function takes float tensors in [0, 1]. Images are (C, H, W), videos (C, T, H, W); a set of
them is a list (sizes may differ) or one stacked tensor. Grey inputs are repeated to 3 channels.
Every random choice comes from a `torch.Generator` seeded by the caller, so a number repeats
exactly. Nothing here needs network weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CoopsynthError

Tensor = torch.Tensor
TensorSet = Sequence[Tensor] | Tensor

# --------------------------------------------------------------------------------------------
# Laplacian pyramid (5-tap binomial filter, reflect padding, down-sample by 2)

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    """Separable binomial blur of (N, C, H, W) with reflect padding."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    kh = k.view(1, 1, 5, 1).expand(c, 1, 5, 1)
    kw = k.view(1, 1, 1, 5).expand(c, 1, 1, 5)
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode=mode), kh, groups=c)
    return F.conv2d(F.pad(x, (2, 2, 0, 0), mode=mode), kw, groups=c)


def laplacian_pyramid(x: Tensor, levels: int = 3) -> list[Tensor]:
    """Laplacian pyramid of (N, C, H, W): `levels - 1` band-pass levels, then the low-pass residual."""
    out = []
    for _ in range(levels - 1):
        low = _blur(x)[..., ::2, ::2]  # (N, C, ceil(H/2), ceil(W/2))
        up = torch.zeros_like(x)
        up[..., ::2, ::2] = low
        out.append(x - 4.0 * _blur(up))
        x = low
    out.append(x)
    return out


# --------------------------------------------------------------------------------------------
# Random patches and the sliced Wasserstein distance


def _as_list(images: TensorSet) -> list[Tensor]:
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        raise ValueError("empty image set")
    return [to_rgb(t) for t in items]


def to_rgb(x: Tensor) -> Tensor:
    """(C, ...) with C in {1, 3, 4} -> (3, ...): grey repeated, alpha dropped."""
    if x.shape[0] == 1:
        return x.expand(3, *x.shape[1:])
    return x[:3]


def _counts(n: int, parts: int) -> list[int]:
    """Split n into `parts` near-equal counts."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def random_patches(images: Sequence[Tensor], n: int, size: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """n random patches spread evenly over `images`, each (C, *dims) with trailing dims >= size.

    `size` gives the patch extent over the trailing dims ((7, 7) for images, (3, 7, 7) for videos).
    Returns (n, C * prod(size)).
    """
    out = []
    for img, k in zip(images, _counts(n, len(images)), strict=True):
        if k == 0:
            continue
        dims = img.shape[1:]
        if any(d < s for d, s in zip(dims, size, strict=True)):
            raise ValueError(f"image of size {tuple(dims)} is smaller than a {size} patch")
        starts = [torch.randint(0, d - s + 1, (k,), generator=gen) for d, s in zip(dims, size, strict=True)]
        index: list[Tensor] = [slice(None)]  # type: ignore[list-item]
        for axis, (st, s) in enumerate(zip(starts, size, strict=True)):
            shape = [1] * (1 + len(size))
            shape[1 + axis] = s
            index.append(st.view(-1, *([1] * len(size))) + torch.arange(s).view(shape))
        p = img[tuple(index)]  # (C, k, *size)
        out.append(p.movedim(1, 0).reshape(k, -1))
    return torch.cat(out)


def sliced_wasserstein(a: Tensor, b: Tensor, gen: torch.Generator, projections: int = 512, repeats: int = 4) -> float:
    """SWD between two equal-size point sets (n, D), normalised by their union's mean and std."""
    if a.shape != b.shape:
        raise ValueError(f"patch sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.float().cpu(), b.float().cpu()
    both = torch.cat([a, b])
    mean, std = both.mean(0), both.std(0).clamp_min(1e-8)
    a, b = (a - mean) / std, (b - mean) / std
    total = 0.0
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], projections, generator=gen)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa = np.sort((dirs.T @ a.T).numpy(), axis=1)  # (projections, n); NumPy sorts ~3x faster here
        pb = np.sort((dirs.T @ b.T).numpy(), axis=1)
        total += float(np.abs(pa - pb).mean())
    return total / repeats


def swd(set_a: TensorSet, set_b: TensorSet, seed: int = 0, patches: int = 4096, levels: int = 3, temporal: int = 0) -> float:
    """SWD on Laplacian-pyramid 7x7x3 patches (Karras et al. 2018), mean over `levels` levels.

    Images (C, H, W), or videos (C, T, H, W) whose frames are taken as images when `temporal`
    is 0, or whose (temporal, 7, 7) space-time patches are used when `temporal` > 0 (the pyramid
    is over space only).
    """
    gen = torch.Generator().manual_seed(seed)
    pyr_a = [_pyramid_any(x, levels) for x in _as_list(set_a)]
    pyr_b = [_pyramid_any(x, levels) for x in _as_list(set_b)]
    size = (7, 7) if temporal == 0 else (temporal, 7, 7)
    dists = []
    for lev in range(levels):
        la = _level_items(pyr_a, lev, temporal)
        lb = _level_items(pyr_b, lev, temporal)
        pa = random_patches(la, patches, size, gen)
        pb = random_patches(lb, patches, size, gen)
        dists.append(sliced_wasserstein(pa, pb, gen))
    return sum(dists) / len(dists)


def _pyramid_any(x: Tensor, levels: int) -> list[Tensor]:
    """Pyramid levels of one image (3, H, W) -> [(3, h, w)], or one video (3, T, H, W) -> [(3, T, h, w)]."""
    if x.dim() == 3:
        return [lev[0] for lev in laplacian_pyramid(x[None], levels)]
    frames = x.movedim(1, 0)  # (T, 3, H, W)
    return [lev.movedim(0, 1) for lev in laplacian_pyramid(frames, levels)]


def _level_items(pyrs: list[list[Tensor]], lev: int, temporal: int) -> list[Tensor]:
    items = [p[lev] for p in pyrs]
    if temporal == 0 and items[0].dim() == 4:  # videos scored frame by frame
        items = [f for v in items for f in v.unbind(1)]
    return items


# --------------------------------------------------------------------------------------------
# Held-out texture metrics


def random_crops(image: Tensor, size: tuple[int, int], k: int, gen: torch.Generator) -> list[Tensor]:
    """k random crops (C, h, w) of image (C, H, W) (or of video (C, T, H, W) over space)."""
    H, W = image.shape[-2:]
    h, w = min(size[0], H), min(size[1], W)
    out = []
    for _ in range(k):
        y = int(torch.randint(0, H - h + 1, (1,), generator=gen))
        x = int(torch.randint(0, W - w + 1, (1,), generator=gen))
        out.append(image[..., y : y + h, x : x + w])
    return out


def swd_ratio(samples: TensorSet, heldout: Tensor, train: Tensor, seed: int = 0, temporal: int = 0) -> dict[str, float]:
    """SWD(samples, held-out) / SWD(k real crops of `train` as large as a sample, held-out)."""
    samples = _as_list(samples)
    gen = torch.Generator().manual_seed(seed + 1)
    crops = random_crops(to_rgb(train), tuple(samples[0].shape[-2:]), len(samples), gen)
    s = swd(samples, [to_rgb(heldout)], seed=seed, temporal=temporal)
    r = swd(crops, [to_rgb(heldout)], seed=seed, temporal=temporal)
    return {"swd_samples": s, "swd_real": r, "swd_ratio": s / max(r, 1e-12)}


def _frames(x: Tensor) -> Tensor:
    """(3, H, W) -> (1, 3, H, W); (3, T, H, W) -> (T, 3, H, W)."""
    return x[None] if x.dim() == 3 else x.movedim(1, 0)


def nn_distances(queries: Tensor, reference: Tensor, patch: int = 16, chunk: int = 128) -> Tensor:
    """Distance from each query patch (n, C, p, p) to its nearest stride-1 patch of `reference`
    frames (N, C, H, W), by convolution: |q - r|^2 = |q|^2 + |r|^2 - 2 q.r (per-pixel RMS)."""
    ones = torch.ones(1, reference.shape[1], patch, patch)
    r2 = F.conv2d(reference * reference, ones)  # (N, 1, H-p+1, W-p+1)
    best = []
    for q in queries.split(chunk):
        qr = F.conv2d(reference, q)  # (N, n, H-p+1, W-p+1)
        d2 = r2 - 2 * qr + (q * q).sum((1, 2, 3)).view(1, -1, 1, 1)
        best.append(d2.amin(dim=(0, 2, 3)))
    d2 = torch.cat(best).clamp_min(0)
    return (d2 / queries[0].numel()).sqrt()


def _query_patches(images: list[Tensor], n: int, patch: int, gen: torch.Generator) -> Tensor:
    frames = [f for x in images for f in _frames(x).unbind(0)]
    flat = random_patches(frames, n, (patch, patch), gen)
    return flat.view(n, frames[0].shape[0], patch, patch)


def copy_index(samples: TensorSet, heldout: Tensor, train: Tensor, seed: int = 0, queries: int = 512, patch: int = 16) -> float:
    """Median NN distance of the samples' 16x16 patches to all of `train`'s patches, over the same
    median for the held-out patches. ~1: as new as unseen texture; ~0: copied from `train`.

    The queries are `queries` random patches per set (seeded); the reference is every stride-1
    patch of `train`, so the search is exact for the queries drawn.
    """
    gen = torch.Generator().manual_seed(seed)
    items = list(samples.unbind(0)) if isinstance(samples, Tensor) else list(samples)
    grey = all(x.shape[0] == 1 for x in [*items, heldout, train])  # distances are the same on 1 channel
    conv = (lambda x: x) if grey else to_rgb
    ref = _frames(conv(train)).contiguous()
    qs = _query_patches([conv(x) for x in items], queries, patch, gen)
    qh = _query_patches([conv(heldout)], queries, patch, gen)
    ds = nn_distances(qs, ref, patch).median().item()
    dh = nn_distances(qh, ref, patch).median().item()
    if dh <= 1e-6:  # the ratio's yardstick is gone
        raise CoopsynthError(
            "the held-out texture's patches occur in the training image (the same image, or a crop of it): "
            "the copy index needs texture the model never saw"
        )
    return ds / dh


def _mean_pairwise_sq(items: list[Tensor]) -> float:
    if len(items) < 2:
        raise ValueError("diversity needs at least 2 samples")
    h = min(x.shape[-2] for x in items)
    w = min(x.shape[-1] for x in items)
    items = [x[..., :h, :w] for x in items]  # per-pixel comparison needs a common size
    vals = [((a - b) ** 2).mean().item() for i, a in enumerate(items) for b in items[i + 1 :]]
    return sum(vals) / len(vals)


def diversity(samples: TensorSet, train: Tensor, seed: int = 0) -> float:
    """Mean pairwise per-pixel squared difference of the samples over that of k real crops of
    `train`. The crops are at most half of `train` per side so that they differ even when a sample
    is as large as `train` (the per-pixel mean does not depend on the size)."""
    samples = _as_list(samples)
    gen = torch.Generator().manual_seed(seed + 2)
    t = to_rgb(train)
    H, W = t.shape[-2:]
    size = (min(samples[0].shape[-2], max(H // 2, 1)), min(samples[0].shape[-1], max(W // 2, 1)))
    crops = random_crops(t, size, len(samples), gen)
    real = _mean_pairwise_sq(crops)
    return _mean_pairwise_sq(samples) / max(real, 1e-12)


def texture_metrics(samples: TensorSet, heldout: Tensor, train: Tensor, seed: int = 0) -> dict[str, float]:
    """SWD ratio (with both SWDs), copy index and diversity of `samples` (k >= 2)."""
    out = swd_ratio(samples, heldout, train, seed)
    out["copy_index"] = copy_index(samples, heldout, train, seed)
    out["diversity"] = diversity(samples, train, seed)
    return out


# --------------------------------------------------------------------------------------------
# Videos


def mean_motion(video: Tensor) -> float:
    """Mean |frame t+1 - frame t| of (C, T, H, W)."""
    if video.shape[1] < 2:
        raise ValueError("motion needs at least 2 frames")
    return (video[:, 1:] - video[:, :-1]).abs().mean().item()


def video_metrics(samples: TensorSet, heldout: Tensor, train: Tensor, seed: int = 0) -> dict[str, float]:
    """Spatial and spatio-temporal SWD ratios, motion ratio, copy index and diversity of videos
    (C, T, H, W) against a held-out video, with real crops from `train`."""
    samples = _as_list(samples)
    sp = swd_ratio(samples, heldout, train, seed)
    st = swd_ratio(samples, heldout, train, seed, temporal=3)
    motion = sum(mean_motion(s) for s in samples) / len(samples)
    out = {
        "spatial_swd_ratio": sp["swd_ratio"],
        "st_swd_ratio": st["swd_ratio"],
        "motion_ratio": motion / max(mean_motion(to_rgb(heldout)), 1e-12),
        "copy_index": copy_index(samples, heldout, train, seed),
    }
    if len(samples) >= 2:
        out["diversity"] = diversity(samples, train, seed)
    return out


# --------------------------------------------------------------------------------------------
# Completion


def recovery_error(completed: Tensor, truth: Tensor, missing: Tensor) -> float:
    """Mean |completed - truth| over the missing pixels on the 0-255 scale.

    `missing` is a bool tensor broadcastable to the images, True where pixels were missing.
    """
    m = missing.expand_as(truth)
    if not bool(m.any()):
        raise ValueError("the mask has no missing pixels")
    return ((completed - truth).abs()[m].mean() * 255.0).item()


def _masked_patches(image: Tensor, region: Tensor, n: int, gen: torch.Generator, size: int = 7, strict: bool = False) -> Tensor:
    """n random size x size patches of (3, H, W) lying wholly inside bool region (H, W). A region
    too thin for a whole patch gives patches that start in it instead, or an error when `strict`."""
    inside = F.conv2d(region[None, None].float(), torch.ones(1, 1, size, size))[0, 0] >= size * size - 0.5
    ys, xs = inside.nonzero(as_tuple=True)
    if len(ys) == 0 and strict:
        raise ValueError(f"no whole {size}x{size} patch fits in the region")
    if len(ys) == 0:
        # the region is too thin for whole patches: take patches centred in it instead
        ys, xs = region[: -size + 1, : -size + 1].nonzero(as_tuple=True)
    if len(ys) == 0:
        raise ValueError("region too small for a patch")
    pick = torch.randint(0, len(ys), (n,), generator=gen)
    ys, xs = ys[pick], xs[pick]
    off = torch.arange(size)
    rows = (ys[:, None] + off)[:, :, None]
    cols = (xs[:, None] + off)[:, None, :]
    return image[:, rows, cols].movedim(1, 0).reshape(n, -1)


def hole_swd(image: Tensor, missing: Tensor, seed: int = 0, patches: int = 4096) -> float:
    """SWD between 7x7 patches inside the hole and patches of the visible region of one image."""
    gen = torch.Generator().manual_seed(seed)
    img = to_rgb(image)
    a = _masked_patches(img, missing, patches, gen)
    b = _masked_patches(img, ~missing, patches, gen)
    return sliced_wasserstein(a, b, gen)


def pyramid_hole_swd(image: Tensor, missing: Tensor, seed: int = 0, patches: int = 4096, levels: int = 3) -> list[float]:
    """`hole_swd` at each level of a Laplacian pyramid (as the texture SWD), the mask pooled to the
    level: a patch is in the hole where every pixel it stands for is missing, and visible where
    none is. The pixel patches see 7 pixels across, so a fill of wrong strokes or blobs a few times
    that size can match their statistics; level l sees structure 7 * 2^l pixels across. Raises
    ValueError when a level's hole or visible region holds no whole patch (small holes, thin
    blocks, a thin visible ring)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for lev, band in enumerate(laplacian_pyramid(to_rgb(image)[None], levels)):
        frac = F.avg_pool2d(missing[None, None].float(), 2**lev, ceil_mode=True)[0, 0]  # missing share per level pixel
        a = _masked_patches(band[0], frac > 1 - 1e-6, patches, gen, strict=True)
        b = _masked_patches(band[0], frac < 1e-6, patches, gen, strict=True)
        out.append(sliced_wasserstein(a, b, gen))
    return out


def completion_metrics(completed: Tensor, truth: Tensor, missing: Tensor, seed: int = 0) -> dict[str, float | None]:
    """Recovery error and hole SWD ratios of an image (C, H, W) or video (C, T, H, W) completion.

    `missing`: bool (H, W) for images, (T, H, W) for videos. For videos the hole SWD is taken over
    the frames that have missing pixels and averaged. `hole_swd_ratio` is EVALUATION.md's (7x7
    pixel patches); `pyramid_swd_ratio` is the mean over the 3 levels of a Laplacian pyramid of
    each level's ratio (`pyramid_hole_swd`), None where the hole is too small for it (8x8 blocks).
    With whole frames missing both are the pyramid SWD against the visible frames.
    """
    out = {"recovery_error": recovery_error(completed, truth, missing)}
    if completed.dim() == 3:
        pairs = [(completed, truth, missing)]
    else:
        pairs = [(c, t, m) for c, t, m in zip(completed.unbind(1), truth.unbind(1), missing.unbind(0), strict=True) if m.any()]
    if all(m.all() for _, _, m in pairs):
        # whole frames missing: compare with the neighbouring visible frames' patches instead (a
        # pyramid SWD already, so both ratios are this one)
        vis = [t for t, m in zip(truth.unbind(1), missing.unbind(0), strict=True) if not m.any()]
        s = swd([c for c, _, _ in pairs], vis, seed=seed)
        r = swd([t for _, t, _ in pairs], vis, seed=seed)
        pyramid = s / max(r, 1e-12)
    else:
        s = sum(hole_swd(c, m, seed) for c, _, m in pairs) / len(pairs)
        r = sum(hole_swd(t, m, seed) for _, t, m in pairs) / len(pairs)
        try:  # the mean over levels of each level's ratio: every scale counts alike
            fill = [pyramid_hole_swd(c, m, seed) for c, _, m in pairs]  # per frame: per level
            true = [pyramid_hole_swd(t, m, seed) for _, t, m in pairs]
            per_level = [sum(f[i] for f in fill) / max(sum(t[i] for t in true), 1e-12) for i in range(len(fill[0]))]
            pyramid = sum(per_level) / len(per_level)
        except ValueError:  # a hole too small for whole patches at the coarse levels
            pyramid = None
    out["hole_swd"] = s
    out["hole_swd_truth"] = r
    out["hole_swd_ratio"] = s / max(r, 1e-12)
    out["pyramid_swd_ratio"] = pyramid
    return out


def split_halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split an image (C, H, W) along its longer side (width when square) into the training half
    (left or top) and the held-out half (right or bottom). A video (C, T, H, W) is split left/right."""
    H, W = x.shape[-2:]
    if x.dim() == 3 and H > W:
        return x[:, : H // 2], x[:, H // 2 : 2 * (H // 2)]
    return x[..., : W // 2], x[..., W // 2 : 2 * (W // 2)]


__all__ = [
    "completion_metrics",
    "copy_index",
    "diversity",
    "hole_swd",
    "laplacian_pyramid",
    "mean_motion",
    "pyramid_hole_swd",
    "recovery_error",
    "split_halves",
    "swd",
    "swd_ratio",
    "texture_metrics",
    "video_metrics",
]
