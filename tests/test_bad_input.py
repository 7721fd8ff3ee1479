"""Every input path with bad input: one line naming the file and the problem, exit 1, nothing written."""

import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coopsynth.cli import app
from coopsynth.errors import CoopsynthError
from coopsynth.io import read_image, read_video, write_image, write_video
from tests.conftest import texture_image

runner = CliRunner()


@pytest.fixture()
def files(tmp_path):
    write_image(tmp_path / "ok.png", texture_image(32, 32))
    write_image(tmp_path / "tiny.png", torch.rand(3, 2, 2))
    write_image(tmp_path / "crop.png", read_image(tmp_path / "ok.png")[:, 2:30, 2:30])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is text, not a PNG")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "ok.jpg", (texture_image(32, 32).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    write_video(tmp_path / "ok.mp4", torch.rand(3, 6, 16, 16), fps=6)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "ok.mp4").read_bytes()[:300])
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder").mkdir()
    return tmp_path


CASES = [
    (["texture", "{d}/missing.png"], "no such file"),
    (["texture", "{d}/folder"], "the folder has no images"),
    (["texture", "{d}/zero.png"], "the file is empty"),
    (["texture", "{d}/text.png"], "not a readable image"),
    (["texture", "{d}/cut.png"], "cut.png"),
    (["texture", "{d}/cut.jpg"], "cut.jpg"),
    (["texture", "{d}/tiny.png"], "tiny.png: height 2 pixels is too small to learn from (the minimum is 8)"),
    (["texture", "{d}/ok.png", "--seed", "-1"], "--seed -1: must be between 0 and 4294967295"),
    (["sample", "{d}/ok.png", "--seed", "4294967296"], "--seed 4294967296: must be between 0"),
    (["eval", "{d}/ok.png", "{d}/ok.png", "--train", "{d}/ok.png", "--seed", "-2"], "--seed -2"),
    (["eval", "{d}/ok.png", "{d}/crop.png", "--train", "{d}/ok.png"], "ok.png: the same image as --train"),
    (["eval", "{d}/crop.png", "{d}/tiny.png", "--train", "{d}/ok.png"], "tiny.png: 2x2 is too small to score"),
    (["eval", "{d}/crop.png", "{d}/crop.png", "--train", "{d}/ok.png"], "crop.png against --train"),
    (["texture", "{d}/ok.png", "--steps", "-3"], "--steps -3"),
    (["texture", "{d}/ok.png", "--minutes", "nan"], "--minutes nan: must be positive"),
    (["texture", "{d}/ok.png", "--size", "10x"], "expected WIDTHxHEIGHT"),
    (["texture", "{d}/ok.png", "--size", "100000x100000"], "too large"),
    (["texture", "{d}/ok.png", "--langevin-steps", "-1"], "--langevin-steps -1"),
    (["texture", "{d}/ok.png", "--device", "tpu"], "use auto, cpu or cuda"),
    (["texture", "{d}/ok.png", "-o", "{d}/a_file/out"], "cannot write here"),
    (["video", "{d}/cut.mp4"], "cut.mp4"),
    (["video", "{d}/ok.mp4", "--max-frames", "1"], "--max-frames 1"),
    (["sample", "{d}/ok.png"], "not a coopsynth checkpoint"),
    (["sample", "{d}/missing.pt"], "no such checkpoint"),
    (["sample", "{d}/folder"], "is a folder"),
]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_input_one_line_exit_1_nothing_written(files, args, message):
    argv = [a.format(d=files) for a in args]
    if "-o" not in argv and argv[0] not in ("sample", "eval"):
        argv += ["-o", str(files / "out")]
    if argv[0] == "sample":
        argv += ["-o", str(files / "out")]
    r = runner.invoke(app, argv)
    assert r.exit_code == 1, r.output
    assert message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (files / "out").exists()


def test_usage_errors_exit_2(files):
    r = runner.invoke(app, ["texture", str(files / "ok.png"), "--steps", "many"])
    assert r.exit_code == 2


def test_sample_refuses_video_options_for_texture_model(files, tmp_path):
    assert runner.invoke(app, ["train", str(files / "ok.png"), "-o", str(tmp_path / "m"), "--steps", "1"]).exit_code == 0
    r = runner.invoke(app, ["sample", str(tmp_path / "m" / "model.pt"), "-o", str(tmp_path / "s"), "--frames", "10"])
    assert r.exit_code == 1 and "for video models" in r.output


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(b))
        if op < 0.5:
            b[i] = rng.randrange(256)
        elif op < 0.8:
            del b[i : i + rng.randint(1, 64)]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b[: rng.randint(1, len(b))]) if rng.random() < 0.3 else bytes(b)


@pytest.mark.parametrize("name, reader", [("ok.png", read_image), ("ok.jpg", read_image), ("ok.mp4", read_video)])
def test_fuzzed_files_raise_only_our_error(files, name, reader):
    """Random mutations of valid files: the reader returns data or raises CoopsynthError, nothing else."""
    rng = random.Random(1234)
    data = (files / name).read_bytes()
    for i in range(25):
        p = files / f"fuzz_{i}{(files / name).suffix}"
        p.write_bytes(_mutate(data, rng))
        try:
            out = reader(p)
        except CoopsynthError as e:
            assert "\n" not in str(e) and p.name in str(e)
            continue
        x = out[0] if isinstance(out, tuple) else out
        assert torch.isfinite(x).all()
