from pathlib import Path

import numpy as np
import pytest
import torch

from coopsynth.errors import CoopsynthError
from coopsynth.io import (
    VIDEO_SUFFIXES,
    atomic_path,
    png16,
    read_image,
    read_image_rgba,
    read_video,
    to_uint16,
    write_image,
    write_video,
)


def test_image_round_trip_rgb_and_grey(tmp_path):
    rgb = torch.rand(3, 20, 30)
    write_image(tmp_path / "a.png", rgb)
    back = read_image(tmp_path / "a.png")
    assert back.shape == (3, 20, 30)
    assert (back - rgb).abs().max() <= 0.5 / 255 + 1e-6
    grey = torch.rand(1, 9, 7)
    write_image(tmp_path / "g.png", grey)
    assert read_image(tmp_path / "g.png").shape == (1, 9, 7)


def test_sixteen_bit_grey_and_rgba_alpha(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    g16 = (rng.random((8, 6)) * 65535).astype(np.uint16)
    iio.imwrite(tmp_path / "g16.png", g16)
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (1, 8, 6)
    np.testing.assert_allclose(img[0].numpy(), g16 / 65535, atol=1e-6)
    rgba = (rng.random((8, 6, 4)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    img, alpha, bits = read_image_rgba(tmp_path / "rgba.png")
    assert img.shape == (3, 8, 6) and alpha.shape == (8, 6) and bits == 8
    np.testing.assert_allclose(alpha.numpy(), rgba[..., 3] / 255, atol=1e-6)


def _plain_png16(a: np.ndarray) -> bytes:
    """A 16-bit PNG written another way than io.png16: unfiltered rows (filter type 0)."""
    import struct
    import zlib

    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_pngs_of_every_colour_type_read_exactly(tmp_path, channels):
    """Grey, grey + alpha, RGB and RGBA at 16 bits: every value back (Pillow alone cuts the colour
    ones to 8 bits), alpha split off, bits 16; and io.png16 writes what this reads."""
    a = np.random.default_rng(channels).integers(0, 65536, (5, 7, channels)).astype(np.uint16)
    colour = a[..., : 1 if channels < 3 else 3]
    for name, data in [("plain.png", _plain_png16(a)), ("ours.png", png16(a))]:
        (tmp_path / name).write_bytes(data)
        img, alpha, bits = read_image_rgba(tmp_path / name)
        assert bits == 16 and img.shape == (colour.shape[2], 5, 7), name
        np.testing.assert_array_equal((img.numpy() * 65535).round().astype(np.uint16), colour.transpose(2, 0, 1))
        if channels in (2, 4):
            np.testing.assert_array_equal((alpha.numpy() * 65535).round().astype(np.uint16), a[..., -1])
        else:
            assert alpha is None


def test_every_16_bit_value_survives_float_and_back():
    v = torch.arange(65536, dtype=torch.float32) / 65535  # how a 16-bit file's values are held
    assert np.array_equal(to_uint16(v.reshape(1, 256, 256))[..., 0].ravel(), np.arange(65536))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_write_image_at_16_bits_round_trips(tmp_path, suffix, channels):
    x = torch.rand(channels, 6, 9, generator=torch.Generator().manual_seed(0))
    write_image(tmp_path / f"x{suffix}", x, bits=16)
    img, _, bits = read_image_rgba(tmp_path / f"x{suffix}")
    assert bits == 16
    torch.testing.assert_close(img, x, atol=0.5 / 65535 + 1e-7, rtol=0)
    write_image(tmp_path / f"y{suffix}", x)  # the default is 8 bits
    assert read_image_rgba(tmp_path / f"y{suffix}").bits == 8


def test_16_bits_into_an_8_bit_format_is_refused_before_writing(tmp_path):
    with pytest.raises(CoopsynthError, match=r"x.jpg: a .jpg file cannot hold 16 bits a channel"):
        write_image(tmp_path / "x.jpg", torch.rand(3, 4, 4), bits=16)
    with pytest.raises(CoopsynthError, match="--bits 12: must be 8 or 16"):
        write_image(tmp_path / "x.png", torch.rand(3, 4, 4), bits=12)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("hello, not an image"), "not a readable image \\(no reader knows this format\\)"),
    ],
)
def test_bad_images_give_one_line_errors(tmp_path, setup, message):
    p = tmp_path / "in.png"
    setup(p)
    with pytest.raises(CoopsynthError, match=message) as e:
        read_image(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_gifs_read_as_one_image_and_an_image_stack_is_refused(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    frames = (rng.random((3, 12, 20, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "one.gif", frames[:1])  # imageio reads a GIF as a batch, even of one
    iio.imwrite(tmp_path / "anim.gif", frames)
    one = read_image(tmp_path / "one.gif")
    assert one.shape == (3, 12, 20)
    first = read_image(tmp_path / "anim.gif")  # an animation: its first frame
    assert first.shape == (3, 12, 20)
    assert torch.equal(first, read_image(tmp_path / "one.gif"))
    iio.imwrite(tmp_path / "volume.tif", frames)  # one TIFF array of three images
    with pytest.raises(CoopsynthError, match=r"volume.tif: holds 3 images, not one") as e:
        read_image(tmp_path / "volume.tif")
    assert "\n" not in str(e.value)


def test_truncated_png_is_refused(tmp_path):
    write_image(tmp_path / "ok.png", torch.rand(3, 64, 64))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CoopsynthError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_nan_is_never_written(tmp_path):
    x = torch.rand(3, 4, 4)
    x[0, 0, 0] = float("nan")
    with pytest.raises(CoopsynthError, match="NaN"):
        write_image(tmp_path / "n.png", x)
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_writer_that_refuses_gives_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, kind):
    """A format's writer failing (a plugin missing from a future imageio, an encoder refusing)."""
    import imageio.v3
    import imageio_ffmpeg

    def refuse(*a, **k):
        raise ValueError("no backend for this format\nsecond line")

    monkeypatch.setattr(imageio.v3, "imwrite", refuse)
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", refuse)
    if kind == "image":
        with pytest.raises(CoopsynthError, match=r"^.*out\.tif: cannot write this image \(no backend for this format\)$"):
            write_image(tmp_path / "out.tif", torch.rand(3, 8, 8))
    else:
        for name in ("out.mp4", "out.gif"):
            with pytest.raises(CoopsynthError, match=rf"^.*{name.replace('.', '[.]')}: cannot write this video \(no backend"):
                write_video(tmp_path / name, torch.rand(3, 4, 8, 8), fps=5.0)
    assert not list(tmp_path.iterdir())


def test_an_encoder_that_writes_no_video_is_an_error_not_a_file(tmp_path, monkeypatch):
    """ffmpeg can exit having written a header and no frames (H.264 into WebM did) and say nothing
    to its caller: the file is read back before it counts."""
    import imageio_ffmpeg

    def header_only(path, *a, **k):
        Path(path).write_bytes(b"\x1aE\xdf\xa3" + bytes(60))  # a Matroska/WebM signature, no stream
        while True:
            yield

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", header_only)
    with pytest.raises(CoopsynthError, match=r"out\.webm: cannot write this video \(the encoder wrote no readable video\)"):
        write_video(tmp_path / "out.webm", torch.rand(3, 4, 8, 8), fps=5.0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", sorted(VIDEO_SUFFIXES - {".gif"}))
def test_every_video_suffix_writes_a_video_that_reads_back(tmp_path, suffix):
    v = torch.rand(3, 1, 1, 1).expand(3, 5, 10, 14) * 0.6 + 0.2  # one flat colour: any codec keeps it
    write_video(tmp_path / f"v{suffix}", v, fps=10.0)
    back, fps = read_video(tmp_path / f"v{suffix}")
    assert back.shape == (3, 5, 10, 14) and fps == 10.0
    assert (back - v).abs().max() < 6 / 255
    assert not [p for p in tmp_path.iterdir() if p.name != f"v{suffix}"]  # no temporary left


def test_video_round_trip(tmp_path):
    v = torch.rand(3, 6, 16, 24) * 0.2 + 0.4  # smooth-ish colours survive H.264 well
    write_video(tmp_path / "v.mp4", v, fps=12.0)
    back, fps = read_video(tmp_path / "v.mp4")
    assert back.shape[1:] == (6, 16, 24)
    assert fps == pytest.approx(12.0)
    assert (back.mean() - v.mean()).abs() < 0.02


def test_frame_folder_and_mismatched_frames(tmp_path):
    for i in range(3):
        write_image(tmp_path / "f" / f"{i:03d}.png", torch.rand(1, 8, 8))
    v, _ = read_video(tmp_path / "f")
    assert v.shape == (1, 3, 8, 8)
    write_image(tmp_path / "f" / "004.png", torch.rand(1, 9, 8))
    with pytest.raises(CoopsynthError, match="differ in size"):
        read_video(tmp_path / "f")


def test_one_frame_video_is_refused(tmp_path):
    write_image(tmp_path / "one" / "0.png", torch.rand(3, 8, 8))
    with pytest.raises(CoopsynthError, match="at least 2 frames"):
        read_video(tmp_path / "one")
