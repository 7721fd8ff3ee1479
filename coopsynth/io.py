"""Reading and writing images and videos, with one-line errors and atomic writes.

Images come back as float32 tensors (C, H, W) in [0, 1] with C = 1 (grey) or 3 (colour), videos as
(C, T, H, W). Every writer writes to a temporary name beside the target and renames it, so a crash
never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CoopsynthError

Tensor = torch.Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".tga"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".gif", ".mpg", ".mpeg"}
MAX_PIXELS = 8192 * 8192  # refuse larger images before decoding them
MAX_VOXELS = 2048 * 2048 * 1024  # and larger videos


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` on success,
    delete it on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        raise CoopsynthError(f"{path.parent}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path) -> None:
    """Raise a one-line error unless `folder` can be created and written to."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CoopsynthError(f"{folder}: cannot write here ({e.strerror or e})") from None


# --------------------------------------------------------------------------------------------
# images


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CoopsynthError(f"{path}: no such file")
    if path.is_dir():
        raise CoopsynthError(f"{path}: is a folder, not a file")
    if path.stat().st_size == 0:
        raise CoopsynthError(f"{path}: the file is empty")


def _to_float(a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        hi = float(np.nanmax(a)) if a.size else 1.0
        return np.clip(a.astype(np.float32) / (255.0 if hi > 1.0 else 1.0), 0, 1)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    raise CoopsynthError(f"{path}: unsupported pixel type {a.dtype}")


def read_image_rgba(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """Read an image: (C, H, W) float in [0, 1] with C in {1, 3}, and its alpha (H, W) or None."""
    import imageio.v3 as iio

    path = Path(path)
    _check_file(path)
    try:
        props = iio.improps(path)
        if props.shape is not None and int(np.prod(props.shape[:2])) > MAX_PIXELS:
            raise CoopsynthError(f"{path}: {props.shape[1]}x{props.shape[0]} is too large (at most {MAX_PIXELS} pixels)")
        a = iio.imread(path, index=0) if props.n_images is not None and props.n_images > 1 else iio.imread(path)
    except CoopsynthError:
        raise
    except Exception as e:  # imageio raises many types for corrupt or foreign files
        raise CoopsynthError(f"{path}: not a readable image ({_short(e)})") from None
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise CoopsynthError(f"{path}: unsupported image layout {a.shape}")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise CoopsynthError(f"{path}: {a.shape[1]}x{a.shape[0]} is too large (at most {MAX_PIXELS} pixels)")
    f = _to_float(a, path)
    alpha = None
    if f.shape[2] in (2, 4):
        alpha = torch.from_numpy(np.ascontiguousarray(f[..., -1]))
        f = f[..., :-1]
    img = torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))
    return img, alpha


def read_image(path: str | Path) -> Tensor:
    """Read an image as (C, H, W) float in [0, 1], C in {1, 3}; alpha is dropped."""
    return read_image_rgba(path)[0]


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) or (C, T, H, W) in [0, 1] -> uint8 (H, W, C) / (T, H, W, C); NaN is refused."""
    if not torch.isfinite(x).all():
        raise CoopsynthError("refusing to write an image with NaN or infinite values")
    a = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.moveaxis(a, 0, -1)


def write_image(path: str | Path, x: Tensor) -> Path:
    """Write (C, H, W) in [0, 1] as an 8-bit image (PNG by the suffix), atomically."""
    import imageio.v3 as iio

    a = to_uint8(x)
    if a.shape[-1] == 1:
        a = a[..., 0]
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            iio.imwrite(tmp, a)
        except (OSError, ValueError, RuntimeError, TypeError) as e:  # the format's writer refused (or is missing)
            raise CoopsynthError(f"{path}: cannot write this image ({_short(e)})") from None
    return path


def scale_down(x: Tensor, max_size: int) -> tuple[Tensor, str]:
    """x (..., C, H, W) scaled by area averaging so its longer side is at most max_size (no
    change if it is already), and a note saying what changed ('' for none)."""
    if max_size < 16:
        raise CoopsynthError(f"--max-size {max_size}: must be at least 16")
    h, w = x.shape[-2:]
    if max(h, w) <= max_size:
        return x, ""
    scale = max_size / max(h, w)
    nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
    lead = x.shape[:-3]
    y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(nh, nw), mode="area")
    return y.reshape(*lead, *y.shape[1:]).contiguous(), f"scaled {w}x{h} to {nw}x{nh} (--max-size)"


# --------------------------------------------------------------------------------------------
# videos


MAX_FPS = 1000.0  # frames per second: above this players and encoders give up


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[Tensor, float]:
    """Read a video file or a folder of numbered frames: (C, T, H, W) float in [0, 1], and fps."""
    path = Path(path)
    if path.is_dir():
        return _read_frame_folder(path, max_frames)
    _check_file(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise CoopsynthError(f"{path}: unsupported video format '{path.suffix}' (use {', '.join(sorted(VIDEO_SUFFIXES))})")
    import imageio.v2 as iio2

    frames = []
    try:
        if path.suffix.lower() == ".gif":
            import imageio.v3 as iio

            arr = iio.imread(path)
            fps = 1000.0 / max(float(iio.immeta(path).get("duration", 40) or 40), 1.0)
            frames = [f for f in (arr if arr.ndim == 4 else arr[None])][:max_frames]
        else:
            reader = iio2.get_reader(path, "ffmpeg")
            fps = float(reader.get_meta_data().get("fps", 25.0) or 25.0)
            for i, f in enumerate(reader):
                if max_frames is not None and i >= max_frames:
                    break
                frames.append(f)
                if len(frames) * f.shape[0] * f.shape[1] > MAX_VOXELS:
                    raise CoopsynthError(f"{path}: the video is too large (at most {MAX_VOXELS} voxels)")
            reader.close()
    except CoopsynthError:
        raise
    except Exception as e:
        if not frames:
            raise CoopsynthError(f"{path}: not a readable video ({_short(e)})") from None
        # a truncated file: keep the frames read so far only if there are enough, else refuse
    return _stack_frames(frames, path), fps if 0 < fps <= MAX_FPS else 25.0  # metadata can say nan, 0 or 90000


def _read_frame_folder(path: Path, max_frames: int | None) -> tuple[Tensor, float]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CoopsynthError(f"{path}: the folder has no image frames")
    files = files[:max_frames] if max_frames else files
    frames = []
    for f in files:
        img = read_image(f)
        frames.append(np.moveaxis(img.numpy(), 0, -1))
    return _stack_frames(frames, path, floats=True), 25.0


def _stack_frames(frames: list, path: Path, floats: bool = False) -> Tensor:
    if len(frames) < 2:
        raise CoopsynthError(f"{path}: a video needs at least 2 frames, found {len(frames)}")
    shapes = {tuple(np.asarray(f).shape[:2]) for f in frames}
    if len(shapes) > 1:
        raise CoopsynthError(f"{path}: the frames differ in size ({', '.join(f'{w}x{h}' for h, w in sorted(shapes))})")
    a = np.stack([np.asarray(f) if np.asarray(f).ndim == 3 else np.asarray(f)[..., None] for f in frames])  # (T, H, W, C)
    a = a if floats else _to_float(a, path)
    if a.shape[-1] in (2, 4):
        a = a[..., :-1]
    if a.shape[-1] == 3 and np.allclose(a[..., 0], a[..., 1], atol=2 / 255) and np.allclose(a[..., 1], a[..., 2], atol=2 / 255):
        a = a[..., :1]  # a grey video stored as RGB
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0))).float()


def write_video(path: str | Path, video: Tensor, fps: float) -> Path:
    """Write (C, T, H, W) in [0, 1] as an H.264 MP4 (or a GIF by the suffix), atomically."""
    if not 0 < fps <= MAX_FPS:
        raise CoopsynthError(f"{path}: cannot write a video at {fps:g} frames per second (above 0, at most {MAX_FPS:g})")
    a = to_uint8(video)  # (T, H, W, C)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            _write_frames(tmp, a, fps, gif=path.suffix.lower() == ".gif")
        except (OSError, ValueError, RuntimeError, TypeError) as e:  # the encoder refused (or is missing)
            raise CoopsynthError(f"{path}: cannot write this video ({_short(e)})") from None
    return path


def _write_frames(tmp: Path, a: np.ndarray, fps: float, gif: bool) -> None:
    """(T, H, W, 3) uint8 frames as a looping GIF or an H.264 MP4 at `tmp`."""
    if gif:
        import imageio.v3 as iio

        iio.imwrite(tmp, a, duration=1000.0 / fps, loop=0)
        return
    import imageio.v2 as iio2

    even = a.shape[1] % 2 == 0 and a.shape[2] % 2 == 0
    w = iio2.get_writer(
        tmp,
        "ffmpeg",
        fps=fps,
        codec="libx264",
        macro_block_size=1,
        pixelformat="yuv420p" if even else "yuv444p",
        output_params=["-crf", "12"],
        ffmpeg_log_level="error",
    )
    try:
        for f in a:
            w.append_data(f)
    finally:
        w.close()


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:160]
