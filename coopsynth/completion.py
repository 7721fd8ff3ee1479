"""Completion (inpainting) of a texture image or video from its own visible pixels.

1. Learn a model from the visible pixels only (the trainer's mask: masked descriptor data term and
   masked generator loss), or take an already trained model.
2. Infer Z for the whole image by Langevin on the generator's posterior over the visible pixels.
3. Start from g(Z) and run descriptor Langevin with the visible pixels held fixed.
4. Put the visible pixels back exactly as they were: only missing pixels change.

Masks are bool tensors, True = missing: (H, W) for images, (T, H, W) for videos.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CoopsynthError
from .io import read_image, read_image_rgba, read_video
from .langevin import generator_posterior_langevin
from .model import CoopModel, frozen

Tensor = torch.Tensor
INFER_MAX_DRIFT = 0.5  # latent inference: the largest gradient move of one element of Z per step (Z ~ N(0, 1))


# ----------------------------------------------------------------------------------------------
# masks


def parse_key_color(text: str) -> tuple[int, int, int]:
    try:
        r, g, b = (int(v) for v in text.split(","))
    except ValueError:
        raise CoopsynthError(f"--key-color '{text}': expected R,G,B such as 255,0,255") from None
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


def load_masked_image(path: Path, mask: Path | None, key_color: str | None) -> tuple[Tensor, Tensor]:
    """The image (C, H, W) and its missing-pixel mask (H, W) by the three conventions."""
    image, alpha = read_image_rgba(path)
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
    return image, missing


# ----------------------------------------------------------------------------------------------
# recovery


def complete(
    model: CoopModel,
    image: Tensor,
    missing: Tensor,
    *,
    langevin: dict,
    infer_steps: int = 60,
    infer_delta: float = 0.05,
    infer_s: float = 1.0,
    refine: int = 6,
    average: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill the missing pixels of `image` (C, [T,] H, W) in [0, 1]; visible pixels are returned as given.

    missing: bool ([T,] H, W), True = missing.
    average: draw this many completions at once (one batch) and return their mean: 1 gives one
    plausible completion; more give an estimate of the missing pixels' conditional mean, the
    smallest expected error but smooth where the model is unsure (a sample's expected error is
    about 1.4 times the mean's for a Gaussian conditional, whatever the model).
    """
    if average < 1:
        raise CoopsynthError(f"--average {average}: must be at least 1")
    dev = model.device
    size = tuple(image.shape[1:])
    x = model.normalise(image.to(dev))[None]  # (1, C, [T,] H, W) standardised
    visible = (~missing).to(dev)[None, None].float()  # (1, 1, [T,] H, W)
    x = x * visible
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in size)

    def g(z: Tensor) -> Tensor:
        return model.generator(z)[crop]

    z = model.latent(average, size, generator)  # (A, zc, [t,] h, w)
    target = x.expand(average, *x.shape[1:])
    with frozen(model.generator):
        z = generator_posterior_langevin(
            g,
            z,
            target=target,
            steps=infer_steps,
            delta=infer_delta,
            s=infer_s,
            mask=visible,
            max_drift=INFER_MAX_DRIFT,
            generator=generator,
        )
    y0 = model.generate(z, size)  # (A, C, [T,] H, W)
    known = visible.bool().expand_as(y0)
    y = model.revise(y0, steps=refine, known=target, known_mask=known, generator=generator, **langevin)
    if not torch.isfinite(y).all():
        raise CoopsynthError("the completion came out non-finite: the model is unusable (its training collapsed); retrain it")
    out = model.denormalise(y).clamp(0, 1).mean(0).to(image.device)  # (C, [T,] H, W)
    return torch.where(missing[None].to(image.device), out, image)  # visible pixels exactly as given
