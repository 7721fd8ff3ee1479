"""Video input for dynamic textures: read, then scale and trim to what a default run can learn."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import CoopsynthError
from .io import read_video
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
    if max_size < 16:
        raise CoopsynthError(f"--max-size {max_size}: must be at least 16")
    if max_frames < 2:
        raise CoopsynthError(f"--max-frames {max_frames}: must be at least 2")
    video, fps = read_video(path, max_frames=None)
    notes = []
    c, t, h, w = video.shape
    if t > max_frames:
        video = video[:, :max_frames]
        notes.append(f"kept the first {max_frames} of {t} frames (--max-frames)")
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
        frames = video.movedim(1, 0)  # (T, C, H, W)
        frames = F.interpolate(frames, size=(nh, nw), mode="area")
        video = frames.movedim(0, 1).contiguous()
        notes.append(f"scaled {w}x{h} to {nw}x{nh} (--max-size)")
    return video, fps, notes


def motion_matched_refine(
    model, data: Tensor, *, max_steps: int, langevin: dict, samples: int = 2, seed: int = 0
) -> tuple[int, list[float]]:
    """The sampling refinement (0..max_steps descriptor Langevin steps after the generator) whose
    samples move most like the input clip: mean |frame t+1 - frame t| closest to the clip's own,
    as a ratio. Each refinement step adds frame-to-frame change, so a generator whose videos move
    too little gets steps and one whose videos already move enough gets none.

    model: a CoopModel; data: the training clip (C, T, H, W) in [0, 1]. Returns the step count and
    the motion ratio (samples over input) after 0, 1, ..., max_steps steps."""
    target = mean_motion(data)
    if target <= 0:
        return 0, []
    size = tuple(data.shape[1:])
    gen = torch.Generator(device=model.device).manual_seed(seed)
    y = model.generate(model.latent(samples, size, gen), size)  # (S, C, T, H, W) standardised

    def ratio(x: Tensor) -> float:
        return mean_motion(model.denormalise(x).clamp(0, 1).flatten(0, 1)) / target  # (S*C, T, H, W): all samples

    ratios = [ratio(y)]
    model.revise(y, steps=max_steps, generator=gen, callback=lambda info: ratios.append(ratio(info["x"])), **langevin)
    best = min(range(len(ratios)), key=lambda r: abs(math.log(max(ratios[r], 1e-6))))
    return best, ratios
