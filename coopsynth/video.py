"""Video input for dynamic textures: read, then scale and trim to what a default run can learn."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import CoopsynthError
from .histogram import match as match_histogram
from .io import read_video, scale_down
from .metrics import mean_motion

Tensor = torch.Tensor

DEFAULT_MAX_SIZE = 64  # longer side after scaling, pixels: keeps a default CPU run near 10 minutes
DEFAULT_MAX_FRAMES = 48  # frames kept from the start of the clip


def prepare_video(
    path: str | Path, max_size: int | None = None, max_frames: int | None = None
) -> tuple[Tensor, float, list[str]]:
    """Read a clip and scale/trim it: (C, T, H, W) in [0, 1], fps, and the messages saying what changed."""
    max_size = DEFAULT_MAX_SIZE if max_size is None else max_size
    max_frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
    if max_frames < 2:
        raise CoopsynthError(f"--max-frames {max_frames}: must be at least 2")
    video, fps = read_video(path, max_frames=None)
    notes = []
    c, t, h, w = video.shape
    if t > max_frames:
        video = video[:, :max_frames]
        notes.append(f"kept the first {max_frames} of {t} frames (--max-frames)")
    frames, note = scale_down(video.movedim(1, 0), max_size)  # (T, C, H, W)
    return frames.movedim(0, 1).contiguous(), fps, notes + [note] * bool(note)


SMOOTH_WIDTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # latent-time correlations tried when the generator moves too much


def motion_matched_sampling(
    model,
    data: Tensor,
    *,
    max_steps: int,
    langevin: dict,
    samples: int = 2,
    seed: int = 0,
    widths: tuple[float, ...] = SMOOTH_WIDTHS,
    match: bool = False,
) -> tuple[int, float, dict]:
    """The sampling settings whose videos move most like the input clip (mean |frame t+1 - frame t|
    closest to the clip's own, as a ratio): a refinement of 0..max_steps descriptor Langevin steps
    after the generator, each of which adds frame-to-frame change, or, when the generator's own
    videos already move more than the clip, a latent correlation over time (`CoopModel.latent`'s
    `smooth`, one of `widths`), which slows them.

    model: a CoopModel; data: the training clip (C, T, H, W) in [0, 1]; `match`: measure the videos
    histogram-matched to the model's quantiles, as `CoopModel.sample(match=True)` writes them
    (a model without quantiles: raw). Returns the refinement, the smoothing width (0 = none) and
    the measured ratios: {"refine": [after 0, 1, ..., max_steps steps], "smooth": {width: ratio}}
    (smoothing is tried only when the first refine ratio is above 1)."""
    target = mean_motion(data)
    if target <= 0:
        return 0, 0.0, {"refine": [], "smooth": {}}
    size = tuple(data.shape[1:])
    gen = torch.Generator(device=model.device).manual_seed(seed)
    y = model.generate(model.latent(samples, size, gen), size)  # (S, C, T, H, W) standardised

    def ratio(x: Tensor) -> float:
        v = model.denormalise(x).clamp(0, 1)  # (S, C, T, H, W)
        if model.matches(match):
            v = torch.stack([match_histogram(s, model.quantiles) for s in v])
        return mean_motion(v.flatten(0, 1)) / target  # (S*C, T, H, W): all samples

    refine = [ratio(y)]
    model.revise(y, steps=max_steps, generator=gen, callback=lambda info: refine.append(ratio(info["x"])), **langevin)
    smooth = {}
    if refine[0] > 1:
        for w in widths:
            g = torch.Generator(device=model.device).manual_seed(seed)
            smooth[w] = ratio(model.generate(model.latent(samples, size, g, smooth=w), size))
    options = [(abs(math.log(max(r, 1e-6))), k, 0.0) for k, r in enumerate(refine)]
    options += [(abs(math.log(max(r, 1e-6))), 0, w) for w, r in smooth.items()]
    _, steps, width = min(options)
    return steps, width, {"refine": refine, "smooth": smooth}
