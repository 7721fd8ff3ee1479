"""Reading and writing images and videos, with one-line errors and atomic writes.

Images come back as float32 tensors (C, H, W) in [0, 1] with C = 1 (grey) or 3 (colour), videos as
(C, T, H, W). Every writer writes to a temporary name beside the target and renames it, so a crash
never leaves a half-written file.

Bit depth: a 16-bit image (a grey or colour PNG, a TIFF, or any float image) is read at its full
precision and can be written back at it (`write_image(..., bits=16)`: PNG or TIFF), so a 16-bit
height map or photograph keeps its levels. Pillow, which imageio reads PNGs with, cuts colour
16-bit PNGs to 8 bits; those are decoded by the ffmpeg that imageio-ffmpeg ships, and 16-bit PNGs
are written by a small encoder here (zlib), since Pillow writes 16-bit grey only.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CoopsynthError

Tensor = torch.Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".tga"}
VIDEO_CODECS = {  # suffix -> (ffmpeg encoder, its options); any other video suffix gets .mp4's
    ".mp4": ("libx264", ("-crf", "12")),
    ".webm": ("libvpx-vp9", ("-crf", "15", "-b:v", "0", "-row-mt", "1", "-cpu-used", "4")),  # WebM holds VP8/VP9/AV1 only
}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".gif", ".mpg", ".mpeg"}
MAX_PIXELS = 8192 * 8192  # refuse larger images before decoding them
MAX_VOXELS = 2048 * 2048 * 1024  # and larger videos
BITS16_SUFFIXES = {".png", ".tif", ".tiff"}  # image formats written with 16 bits a channel


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


class Image(NamedTuple):
    pixels: Tensor  # (C, H, W) float32 in [0, 1], C in {1, 3}
    alpha: Tensor | None  # (H, W) in [0, 1], or None for an image without alpha
    bits: int  # 8, or 16 for a file with more than 8 bits a channel (16-bit integers, floats)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG16_FORMATS = {2: ("rgb48le", 3), 4: ("ya16le", 2), 6: ("rgba64le", 4)}  # colour type: ffmpeg's format, channels


def _png16_colour(path: Path) -> int | None:
    """The PNG colour type of a 16-bit grey + alpha or colour PNG (the ones Pillow cuts to 8 bits),
    else None (not a PNG, 8 bits or fewer, or plain grey, which Pillow reads at 16 bits)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24] != 16:
        return None
    return head[25] if head[25] in PNG16_FORMATS else None


def _read_png16(path: Path, colour: int) -> np.ndarray:
    """A 16-bit colour (or grey + alpha) PNG as (H, W, C) uint16, decoded by ffmpeg."""
    fmt, c = PNG16_FORMATS[colour]
    frames: list[np.ndarray] = []
    _read_ffmpeg(path, 1, frames, pix_fmt=fmt, channels=c, dtype="<u2")
    if not frames:
        raise ValueError("ffmpeg decoded no image")
    return frames[0]


def frame_count(path: Path) -> int:
    """How many images a file holds as imageio reads it (an animated GIF: its frames); 1 where it
    cannot tell (a missing or unreadable file: reading it says what is wrong)."""
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
    except Exception:  # imageio raises many types for corrupt or foreign files
        return 1
    return int(props.n_images or 1) if props.is_batch else 1


def read_image_rgba(path: str | Path) -> Image:
    """Read an image: its pixels (C, H, W) float in [0, 1] with C in {1, 3}, its alpha (H, W) or
    None, and its bit depth (8 or 16)."""
    import imageio.v3 as iio

    path = Path(path)
    _check_file(path)
    try:
        props = iio.improps(path)
        # a GIF (any animation format) reads as a batch of frames, even of one: its first is taken
        hw = None if props.shape is None else props.shape[1:3] if props.is_batch else props.shape[:2]
        if hw is not None and len(hw) == 2 and int(np.prod(hw)) > MAX_PIXELS:
            raise CoopsynthError(f"{path}: {hw[1]}x{hw[0]} is too large (at most {MAX_PIXELS} pixels)")
        colour16 = _png16_colour(path)
        if colour16 is not None:
            a = _read_png16(path, colour16)
        else:
            a = iio.imread(path, index=0) if props.is_batch else iio.imread(path)
    except CoopsynthError:
        raise
    except Exception as e:  # imageio raises many types for corrupt or foreign files
        why = "no reader knows this format" if "Could not find a backend" in str(e) else _short(e)
        raise CoopsynthError(f"{path}: not a readable image ({why})") from None
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[0] == 1:  # a stack of one image
        a = a[0]
    if a.ndim == 4 and a.shape[-1] in (1, 2, 3, 4):
        raise CoopsynthError(f"{path}: holds {a.shape[0]} images, not one (save the one to learn from as its own file)")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise CoopsynthError(f"{path}: unsupported image layout {a.shape}")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise CoopsynthError(f"{path}: {a.shape[1]}x{a.shape[0]} is too large (at most {MAX_PIXELS} pixels)")
    bits = 8 if a.dtype in (np.uint8, np.int8, bool) else 16
    f = _to_float(a, path)
    alpha = None
    if f.shape[2] in (2, 4):
        alpha = torch.from_numpy(np.ascontiguousarray(f[..., -1]))
        f = f[..., :-1]
    img = torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))
    return Image(img, alpha, bits)


def read_image(path: str | Path) -> Tensor:
    """Read an image as (C, H, W) float in [0, 1], C in {1, 3}; alpha is dropped."""
    return read_image_rgba(path).pixels


def _check_finite(x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise CoopsynthError("refusing to write an image with NaN or infinite values")


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) or (C, T, H, W) in [0, 1] -> uint8 (H, W, C) / (T, H, W, C); NaN is refused."""
    _check_finite(x)
    a = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.moveaxis(a, 0, -1)


def to_uint16(x: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint16 (H, W, C); NaN is refused. A 16-bit input's pixels come back
    exactly (v / 65535 in float32, times 65535, rounds to v)."""
    _check_finite(x)
    a = (x.detach().double().clamp(0, 1) * 65535.0).round().to(torch.int32).cpu().numpy().astype(np.uint16)
    return np.moveaxis(a, 0, -1)


def check_bits(path: str | Path, bits: int) -> None:
    """An error unless an image file named `path` can hold `bits` (8 or 16) bits a channel."""
    path = Path(path)
    if bits not in (8, 16):
        raise CoopsynthError(f"--bits {bits}: must be 8 or 16")
    if bits == 16 and path.suffix.lower() not in BITS16_SUFFIXES:
        raise CoopsynthError(f"{path}: a {path.suffix or 'suffix-less'} file cannot hold 16 bits a channel (use .png or .tif)")


def write_image(path: str | Path, x: Tensor, bits: int = 8) -> Path:
    """Write (C, H, W) in [0, 1] as an image of `bits` (8 or 16) bits a channel, its format by
    the suffix (16 bits: PNG or TIFF), atomically."""
    import imageio.v3 as iio

    path = Path(path)
    check_bits(path, bits)
    a = to_uint16(x) if bits == 16 else to_uint8(x)
    if a.shape[-1] == 1:
        a = a[..., 0]
    with atomic_path(path) as tmp:
        try:
            if bits == 16 and path.suffix.lower() == ".png":
                tmp.write_bytes(png16(a))
            else:
                iio.imwrite(tmp, a)
        except (OSError, ValueError, RuntimeError, TypeError) as e:  # the format's writer refused (or is missing)
            raise CoopsynthError(f"{path}: cannot write this image ({_short(e)})") from None
    return path


def png16(a: np.ndarray, level: int = 6) -> bytes:
    """A 16-bit PNG file of a uint16 array (H, W) grey or (H, W, C) with C = 1-4 (grey, grey +
    alpha, RGB, RGBA). Every row is stored with the 'Up' filter (its difference from the row
    above), which compresses smooth images better than raw rows at no cost to write."""
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(a, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)  # big-endian bytes
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8: modulo 256, as the filter is defined
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)  # filter type 2 before each row
    data = zlib.compress(raw.tobytes(), level)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    step = 1 << 30  # an IDAT chunk holds under 2^31 bytes; a long stream is split over several
    idat = b"".join(chunk(b"IDAT", data[i : i + step]) for i in range(0, max(len(data), 1), step))
    return PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)) + idat + chunk(b"IEND", b"")


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
    frames: list[np.ndarray] = []
    try:
        if path.suffix.lower() == ".gif":
            import imageio.v3 as iio

            arr = iio.imread(path)
            fps = 1000.0 / max(float(iio.immeta(path).get("duration", 40) or 40), 1.0)
            frames = [f for f in (arr if arr.ndim == 4 else arr[None])][:max_frames]
        else:
            fps = _read_ffmpeg(path, max_frames, frames)
    except CoopsynthError:
        raise
    except Exception as e:
        if not frames:
            raise CoopsynthError(f"{path}: not a readable video ({_short(e)})") from None
        # a truncated file: keep the frames read so far only if there are enough, else refuse
    return _stack_frames(frames, path), fps if 0 < fps <= MAX_FPS else 25.0  # metadata can say nan, 0 or 90000


def _read_ffmpeg(
    path: Path,
    max_frames: int | None,
    frames: list[np.ndarray],
    pix_fmt: str = "rgb24",
    channels: int = 3,
    dtype: str = "u1",
) -> float:
    """Decode a file's frames (H, W, channels) of `dtype` in ffmpeg's `pix_fmt` into `frames` (which
    keeps those read before a failure: a truncated file) with the ffmpeg of imageio-ffmpeg,
    whatever the suffix (imageio's own reader refuses some, .m4v); return its frame rate (0 where
    unknown). Videos, 16-bit colour PNGs, and the read-back of a written video use it."""
    import imageio_ffmpeg

    kind = np.dtype(dtype)
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt=pix_fmt, bits_per_pixel=8 * channels * kind.itemsize)
    try:
        meta = next(gen)
        w, h = meta["size"]
        for buf in gen:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(np.frombuffer(buf, dtype=kind).reshape(h, w, channels))
            if len(frames) * h * w > MAX_VOXELS:
                raise CoopsynthError(f"{path}: the video is too large (at most {MAX_VOXELS} voxels)")
    finally:
        gen.close()
    return float(meta.get("fps") or 0.0)


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
            _write_frames(tmp, a, fps, path.suffix.lower())
        except (OSError, ValueError, RuntimeError, TypeError, StopIteration) as e:  # the encoder refused (or is missing)
            raise CoopsynthError(f"{path}: cannot write this video ({_short(e)})") from None
    return path


def _write_frames(tmp: Path, a: np.ndarray, fps: float, suffix: str) -> None:
    """(T, H, W, 3) uint8 frames at `tmp` as a looping GIF, a VP9 WebM, or H.264 in the container
    the suffix names (.mp4, .mov, .mkv, ...). The file is read back before it counts as written:
    ffmpeg can exit having written only a header (H.264 into WebM did) without any error here."""
    if suffix == ".gif":
        import imageio.v3 as iio

        iio.imwrite(tmp, a, duration=1000.0 / fps, loop=0)
        return
    import imageio_ffmpeg

    t, h, w, _ = a.shape
    even = h % 2 == 0 and w % 2 == 0  # 4:2:0 halves the chroma planes: odd sides keep full chroma
    codec, params = VIDEO_CODECS.get(suffix, VIDEO_CODECS[".mp4"])
    gen = imageio_ffmpeg.write_frames(
        str(tmp),
        (w, h),
        fps=fps,
        codec=codec,
        pix_fmt_out="yuv420p" if even else "yuv444p",
        quality=None,  # the codec's own quality setting is in params
        macro_block_size=1,
        output_params=list(params),
        ffmpeg_log_level="error",
    )
    try:  # closed even when the encoder refuses a frame: no ffmpeg process is left behind
        gen.send(None)
        for f in a:
            gen.send(np.ascontiguousarray(f))
    finally:
        gen.close()
    first: list[np.ndarray] = []
    try:
        _read_ffmpeg(tmp, 1, first)
    except (OSError, RuntimeError, StopIteration):
        pass
    if not first:
        raise OSError("the encoder wrote no readable video")


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:160]
