import numpy as np
import pytest
import torch

from coopsynth.errors import CoopsynthError
from coopsynth.io import atomic_path, read_image, read_image_rgba, read_video, write_image, write_video


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
    img, alpha = read_image_rgba(tmp_path / "rgba.png")
    assert img.shape == (3, 8, 6) and alpha.shape == (8, 6)
    np.testing.assert_allclose(alpha.numpy(), rgba[..., 3] / 255, atol=1e-6)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("hello, not an image"), "not a readable image"),
    ],
)
def test_bad_images_give_one_line_errors(tmp_path, setup, message):
    p = tmp_path / "in.png"
    setup(p)
    with pytest.raises(CoopsynthError, match=message) as e:
        read_image(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


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
    import imageio.v2
    import imageio.v3

    def refuse(*a, **k):
        raise ValueError("no backend for this format\nsecond line")

    monkeypatch.setattr(imageio.v3, "imwrite", refuse)
    monkeypatch.setattr(imageio.v2, "get_writer", refuse)
    if kind == "image":
        with pytest.raises(CoopsynthError, match=r"^.*out\.tif: cannot write this image \(no backend for this format\)$"):
            write_image(tmp_path / "out.tif", torch.rand(3, 8, 8))
    else:
        for name in ("out.mp4", "out.gif"):
            with pytest.raises(CoopsynthError, match=rf"^.*{name.replace('.', '[.]')}: cannot write this video \(no backend"):
                write_video(tmp_path / name, torch.rand(3, 4, 8, 8), fps=5.0)
    assert not list(tmp_path.iterdir())


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
