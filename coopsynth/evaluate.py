"""`coopsynth eval` as a library call: read files, pick the right metrics, return a flat dict."""

from __future__ import annotations

from pathlib import Path

import torch

from . import metrics
from .completion import read_mask_image
from .errors import CoopsynthError
from .io import read_image, read_video
from .pipeline import input_kind

MIN_SIDE = 28  # pixels a side: 7x7 patches at the third level of the SWD's Laplacian pyramid
MIN_FRAMES = 3  # videos: the space-time patches are 3 frames long


def _read(path: Path) -> torch.Tensor:
    x = read_image(path) if input_kind(path) == "texture" else read_video(path)[0]
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise CoopsynthError(f"{path}: {w}x{h} is too small to score (at least {MIN_SIDE} px a side)")
    if x.dim() == 4 and x.shape[1] < MIN_FRAMES:
        raise CoopsynthError(f"{path}: {x.shape[1]} frames are too few to score (at least {MIN_FRAMES})")
    return x


def evaluate_files(heldout: Path, samples: list[Path], train: Path | None, mask: Path | None, seed: int = 0) -> dict:
    """Metrics of `samples` against `heldout` (see coopsynth.metrics)."""
    ho = _read(heldout)
    items = [_read(p) for p in samples]
    if mask is not None:
        if len(items) != 1:
            raise CoopsynthError("--mask scores one completed image or video against the truth (HELDOUT)")
        m = read_mask_image(mask, tuple(ho.shape[-2:]))
        done = items[0]
        if done.shape[1:] != ho.shape[1:]:
            raise CoopsynthError(f"{samples[0]}: size differs from the truth {heldout}")
        if ho.dim() == 4:
            m = m.expand(ho.shape[1], *m.shape)
        return metrics.completion_metrics(done, ho, m, seed)
    if train is None:
        raise CoopsynthError("--train TRAIN is needed: real crops and the copy index come from the training image")
    tr = _read(train)
    if ho.shape == tr.shape and torch.equal(ho, tr):
        raise CoopsynthError(f"{heldout}: the same image as --train {train}; the scores need a held-out part the model never saw")
    for p, x in zip(samples, items, strict=True):
        if x.dim() != ho.dim():
            raise CoopsynthError(f"{p}: is {'a video' if x.dim() == 4 else 'an image'}, unlike {heldout}")
    try:
        if ho.dim() == 4:
            return metrics.video_metrics(items, ho, tr, seed)
        if len(items) < 2:
            out = metrics.swd_ratio(items, ho, tr, seed)
            out["copy_index"] = metrics.copy_index(items, ho, tr, seed)
            return out
        return metrics.texture_metrics(items, ho, tr, seed)
    except CoopsynthError as e:  # a metric's own objection: say which files
        raise CoopsynthError(f"{heldout} against --train {train}: {e}") from None
