import io
import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from coopsynth import cli, pipeline
from coopsynth.cli import app
from coopsynth.io import read_image, write_image
from tests.conftest import texture_image

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny end-to-end run shared by the tests that only read its files."""
    d = tmp_path_factory.mktemp("run")
    write_image(d / "tiny.png", texture_image(40, 48))
    r = runner.invoke(
        app, ["texture", str(d / "tiny.png"), "-o", str(d / "out"), "--steps", "2", "--samples", "2", "--preset", "fast"]
    )
    assert r.exit_code == 0, r.output
    return d


def test_texture_end_to_end_writes_every_file(trained):
    out = trained / "out"
    for name in ["model.pt", "sample_000.png", "sample_001.png", "progress.png", "log.jsonl"]:
        assert (out / name).is_file(), name
    assert read_image(out / "sample_000.png").shape == (3, 40, 48)  # the input's size and channels
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "stopped" and lines[-1]["step"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_sample_from_checkpoint_sizes_and_determinism(trained, tmp_path):
    args = ["sample", str(trained / "out" / "model.pt"), "--samples", "2", "--size", "70x33", "--seed", "5", "--refine", "2"]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "b")]).exit_code == 0
    a, b = read_image(tmp_path / "a" / "sample_000.png"), read_image(tmp_path / "b" / "sample_000.png")
    assert a.shape == (3, 33, 70)
    assert torch.equal(a, b)
    assert not torch.equal(a, read_image(tmp_path / "a" / "sample_001.png"))


@pytest.mark.parametrize("has_bf16", [False, True])
def test_sample_in_bf16_warns_first_where_the_cpu_has_no_bf16_units(trained, tmp_path, monkeypatch, has_bf16):
    from coopsynth import accel

    monkeypatch.setattr(accel, "_this_cpu_has_bf16", lambda: has_bf16)
    args = ["sample", str(trained / "out" / "model.pt"), "-o", str(tmp_path), "--samples", "1", "--refine", "1"]
    r = runner.invoke(app, [*args, "--device", "cpu", "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    assert ("no bf16 units" in r.output) is not has_bf16
    assert (tmp_path / "sample_000.png").is_file()
    assert "no bf16 units" not in runner.invoke(app, [*args, "--force"]).output  # auto never warns


@pytest.mark.parametrize("size", ["48x40", "45x37"])
def test_tile_output_wraps(trained, tmp_path, size):
    """The seam (last column -> first column) differs no more than neighbouring inner columns."""
    r = runner.invoke(
        app, ["sample", str(trained / "out" / "model.pt"), "-o", str(tmp_path), "--samples", "1", "--size", size, "--tile"]
    )
    assert r.exit_code == 0, r.output
    x = read_image(tmp_path / "sample_000.png")
    for axis in (1, 2):
        inner = (x.narrow(axis, 1, x.shape[axis] - 1) - x.narrow(axis, 0, x.shape[axis] - 1)).abs().mean()
        seam = (x.narrow(axis, 0, 1) - x.narrow(axis, x.shape[axis] - 1, 1)).abs().mean()
        assert seam <= 1.5 * inner + 2 / 255


def test_same_seed_same_files(tmp_path):
    write_image(tmp_path / "t.png", texture_image(32, 32))
    outs = []
    for name in ("a", "b"):
        r = runner.invoke(
            app, ["texture", str(tmp_path / "t.png"), "-o", str(tmp_path / name), "--steps", "2", "--samples", "1", "--seed", "3"]
        )
        assert r.exit_code == 0, r.output
        outs.append((tmp_path / name / "sample_000.png").read_bytes())
    assert outs[0] == outs[1]


def test_existing_output_needs_force_or_resume(trained):
    args = ["texture", str(trained / "tiny.png"), "-o", str(trained / "out"), "--steps", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--resume" in r.output


def test_resume_continues_counting(tmp_path):
    write_image(tmp_path / "t.png", texture_image(32, 32))
    base = ["train", str(tmp_path / "t.png"), "-o", str(tmp_path / "o")]
    assert runner.invoke(app, [*base, "--steps", "2"]).exit_code == 0
    r = runner.invoke(app, [*base, "--steps", "3", "--resume"])
    assert r.exit_code == 0, r.output
    blob = torch.load(tmp_path / "o" / "model.pt", weights_only=True)
    assert blob["step"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["texture", "{d}/missing.png"], "no such file"),
        (["texture", "{d}/text.png"], "not a readable image"),
        (["texture", "{d}/ok.png", "--size", "12by7"], "expected WIDTHxHEIGHT"),
        (["texture", "{d}/ok.png", "--size", "0x7"], "must be positive"),
        (["texture", "{d}/ok.png", "--steps", "0"], "--steps 0"),
        (["texture", "{d}/ok.png", "--preset", "turbo"], "unknown preset"),
        (["texture", "{d}/ok.png", "--max-size", "8"], "--max-size 8: must be at least 16"),
        (["sample", "{d}/text.png"], "not a coopsynth checkpoint"),
        (["eval", "{d}/ok.png", "{d}/ok.png"], "--train"),
    ],
)
def test_cli_errors_are_one_line_exit_1(tmp_path, args, message):
    write_image(tmp_path / "ok.png", texture_image(32, 32))
    (tmp_path / "text.png").write_text("not an image")
    r = runner.invoke(app, [a.format(d=tmp_path) for a in args] + ["-o", str(tmp_path / "out")] * (args[0] == "texture"))
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "model.pt").exists()


def test_eval_json_keys(tmp_path):
    img = texture_image(64, 128)
    write_image(tmp_path / "train.png", img[:, :, :64])
    write_image(tmp_path / "held.png", img[:, :, 64:])
    write_image(tmp_path / "s0.png", img[:, :40, 64:104])
    write_image(tmp_path / "s1.png", img[:, 20:60, :40])
    r = runner.invoke(
        app,
        [
            "eval",
            str(tmp_path / "held.png"),
            str(tmp_path / "s0.png"),
            str(tmp_path / "s1.png"),
            "--train",
            str(tmp_path / "train.png"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"swd_ratio", "copy_index", "diversity", "swd_samples", "swd_real"} <= set(out)


def test_module_entry_point_exit_code_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "coopsynth", "texture", str(tmp_path / "nope.png")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "no such file" in r.stderr and "Traceback" not in r.stderr


def test_eval_videos_and_completion(tmp_path):
    from coopsynth.io import write_video

    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 6, 32, 64, generator=g)
    write_video(tmp_path / "train.mp4", clip[..., :32], fps=5)
    write_video(tmp_path / "held.mp4", clip[..., 32:], fps=5)
    frozen = clip[:, :1, :, 32:].expand(3, 6, 32, 32).contiguous()
    write_video(tmp_path / "frozen.mp4", frozen, fps=5)
    r = runner.invoke(
        app, ["eval", str(tmp_path / "held.mp4"), str(tmp_path / "frozen.mp4"), "--train", str(tmp_path / "train.mp4"), "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"spatial_swd_ratio", "st_swd_ratio", "motion_ratio", "copy_index"} <= set(out)
    assert out["motion_ratio"] < 0.05  # a frozen video barely moves (H.264 adds a little)

    truth = texture_image(48, 48)
    write_image(tmp_path / "truth.png", truth)
    done = truth.clone()
    done[:, 16:32, 16:32] = 0.5
    write_image(tmp_path / "done.png", done)
    mask = torch.zeros(1, 48, 48)
    mask[:, 16:32, 16:32] = 1
    write_image(tmp_path / "mask.png", mask)
    r = runner.invoke(
        app, ["eval", str(tmp_path / "truth.png"), str(tmp_path / "done.png"), "--mask", str(tmp_path / "mask.png"), "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["recovery_error"] > 10 and out["hole_swd_ratio"] > 1


def test_sample_does_not_overwrite_without_force(trained, tmp_path):
    args = ["sample", str(trained / "out" / "model.pt"), "-o", str(tmp_path), "--samples", "1", "--refine", "0"]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp_path / "sample_000.png").read_bytes()
    r = runner.invoke(app, [*args, "--seed", "9"])
    assert r.exit_code == 1 and "--force" in r.output
    assert (tmp_path / "sample_000.png").read_bytes() == before
    assert runner.invoke(app, [*args, "--seed", "9", "--force"]).exit_code == 0
    assert (tmp_path / "sample_000.png").read_bytes() != before


def test_several_inputs_one_model_each_skip_finished_and_report_failures(tmp_path):
    d = tmp_path / "in"
    write_image(d / "a.png", texture_image(32, 32, seed=1))
    write_image(d / "b.png", texture_image(64, 96, seed=2))  # large enough for a self-check
    (d / "c.png").write_text("broken")
    out = tmp_path / "out"
    r = runner.invoke(app, ["texture", str(d), "-o", str(out), "--steps", "2", "--samples", "1", "--preset", "fast"])
    assert r.exit_code == 1, r.output  # c.png failed, the others went on
    assert (out / "a" / "model.pt").is_file() and (out / "b" / "sample_000.png").is_file()
    assert "c.png" in r.output and "failed" in r.output
    # two iterations sample noise: b's self-check warns, in a line and in the table; a's halves are too small
    assert "b.png: the samples look unlike the input" in r.output and "(look)" in r.output
    assert "a.png: the samples" not in r.output
    (d / "c.png").unlink()
    before = (out / "a" / "model.pt").stat().st_mtime_ns
    r = runner.invoke(app, ["texture", str(d), "-o", str(out), "--steps", "2", "--samples", "1", "--preset", "fast"])
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output
    assert (out / "a" / "model.pt").stat().st_mtime_ns == before


def test_smooth_is_refused_for_a_texture_model(trained, tmp_path):
    r = runner.invoke(app, ["sample", str(trained / "out" / "model.pt"), "-o", str(tmp_path), "--smooth", "1"])
    assert r.exit_code == 1 and "--smooth: only video models" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kept", [None, 1])
def test_the_summary_line_says_fresh_starts_and_which_attempt_was_kept(monkeypatch, kept):
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=400))
    result = {"steps": 300, "stopped": "collapse", "rollbacks": 0, "restarts": 2, "kept_attempt": kept, "checkpoint": "m.pt"}
    cli._summary(result, [], 0.0)
    line = buf.getvalue().splitlines()[0]
    assert "started afresh 2 times after early collapses" in line
    assert ("attempt 1's samples came closest to the input: kept" in line) == (kept == 1)


def test_sample_into_a_file_name_writes_that_file(trained, tmp_path):
    """-o big.png: one sample, that file; --samples 2 with a file name: NAME_000, NAME_001 in its
    format; a folder whose name has a dot stays a folder."""
    model = str(trained / "out" / "model.pt")
    r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / "big.png"), "--size", "70x33", "--refine", "0"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]
    assert read_image(tmp_path / "big.png").shape == (3, 33, 70) and "big.png" in r.output
    r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / "two.jpg"), "--samples", "2", "--refine", "0"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "two_000.jpg", "two_001.jpg"]
    assert (tmp_path / "two_000.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG, as the name says
    r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / "run.v2"), "--refine", "0"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "run.v2").iterdir()) == [f"sample_{i:03d}.png" for i in range(4)]


@pytest.mark.parametrize("name", ["out.exr", "out.heic", "clip.wmv"])
def test_an_output_in_a_format_coopsynth_cannot_write_is_refused_not_made_a_folder(trained, tmp_path, monkeypatch, name):
    """-o out.exr meant a file: one line naming it, nothing written (an unknown suffix such as
    run.v2 is still a folder)."""
    monkeypatch.chdir(tmp_path)
    model = str(trained / "out" / "model.pt")
    for args in (["sample", model], ["texture", str(trained / "tiny.png"), "--steps", "1"]):
        r = runner.invoke(app, [*args, "-o", name])
        assert r.exit_code == 1 and r.output.startswith(f"error: {name}: coopsynth does not write"), r.output
        assert len(r.output.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_sample_into_a_file_name_of_the_wrong_kind_is_refused(trained, tmp_path):
    r = runner.invoke(app, ["sample", str(trained / "out" / "model.pt"), "-o", str(tmp_path / "clip.mp4")])
    assert r.exit_code == 1
    # one line and nothing else: not the blank line a transient progress bar leaves off a terminal
    assert r.output.startswith("error: ") and len(r.output.splitlines()) == 1
    assert "clip.mp4: a texture model writes images" in r.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("width", [80, 160])
def test_the_progress_bar_shows_every_figure_whole_at_80_columns_and_wider(monkeypatch, width):
    """Iteration, both energies, the generator loss and the time left, none cut short by an
    ellipsis (an 80-column terminal once showed `step 40/…  G loss 0.… le…`)."""
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=width, force_terminal=False))
    with cli._Bar("training cork.png", 1200) as bar:
        bar({"step": 40, "total": 1200, "f_obs": 0.0123, "f_syn": -0.0271, "loss_g": 0.0634, "seconds_left": 95.0})
        bar.last = 0.0
        bar({"step": 1200, "total": 1200, "f_obs": 0.0123, "f_syn": -0.0271, "loss_g": 0.0634, "seconds_left": 0.0})
    last = buf.getvalue().rstrip().splitlines()[-1]
    assert "…" not in last and len(last) <= width
    for figure in ("1200/1200", "+0.012", "-0.027", "0.063", "0m00s left"):
        assert figure in last, (figure, last)


@pytest.mark.parametrize(
    "text, hw",
    [("70x33", (33, 70)), ("70X33", (33, 70)), ("70×33", (33, 70)), ("48", (48, 48)), (" 48 ", (48, 48)), (None, None)],
)
def test_sizes_read_as_width_by_height_or_one_number_for_a_square(text, hw):
    from coopsynth import pipeline

    assert pipeline.parse_size(text) == hw


def test_texture_into_a_file_name_writes_that_file_and_keeps_the_model_in_the_default_folder(tmp_path, monkeypatch):
    """-o big.png: the sample is that file (1 by default), the run's model.pt, log.jsonl and
    progress.png go to coopsynth-out/<input stem>/; a second run does not overwrite big.png
    without --force; --samples 2 writes NAME_000, NAME_001."""
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "t.png", texture_image(32, 32))
    args = ["texture", "t.png", "--steps", "2", "--preset", "fast"]
    r = runner.invoke(app, [*args, "-o", "res/big.png", "--size", "40x24"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["big.png"]
    assert read_image(tmp_path / "res" / "big.png").shape == (3, 24, 40)
    run = tmp_path / "coopsynth-out" / "t"
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "model.pt", "progress.png"]
    assert "sample: res/big.png" in r.output and "model: coopsynth-out/t/model.pt" in r.output
    before = (tmp_path / "res" / "big.png").read_bytes()
    r = runner.invoke(app, [*args, "-o", "res/big.png"])
    assert r.exit_code == 1 and "res/big.png: already exists" in r.output
    assert (tmp_path / "res" / "big.png").read_bytes() == before
    r = runner.invoke(app, [*args, "-o", "res/two.jpg", "--samples", "2", "--force"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["big.png", "two_000.jpg", "two_001.jpg"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["texture", "t.png", "--samples", "0"], "--samples 0: must be at least 1"),
        (["texture", "t.png", "-o", "clip.mp4"], "clip.mp4: a texture model writes images"),
        (["texture", "t.png", "t.png", "-o", "big.png"], "big.png: several inputs write a folder each"),
        (["train", "t.png", "-o", "big.png"], "big.png: train writes a folder"),
        (["train", "t.png", "-o", "model.pt"], "model.pt: the output is a folder, and the model goes into it as model.pt"),
        (["video", "t.png", "--frames", "1"], "--frames 1: a video needs at least 2 frames"),
        (["texture", "t.png", "--refine", "-1"], "--refine -1: must be 0 or more"),
        (["video", "t.png", "--refine", "-1"], "--refine -1: must be 0 or more"),
        (["video", "t.png", "--fps", "-5"], "--fps -5: must be above 0 and at most 1000"),
        (["video", "t.png", "--fps", "0"], "--fps 0: must be above 0"),
        (["texture", "t.png", "--bits", "12"], "--bits 12: must be auto, 8 or 16"),
        (["texture", "t.png", "-o", "big.jpg", "--bits", "16"], "big.jpg: a .jpg file cannot hold 16 bits a channel"),
        (["complete", "t.png", "--key-color", "0,0,0", "-o", "c.jpg", "--bits", "16"], "c.jpg: a .jpg file cannot hold 16"),
    ],
)
def test_output_and_count_errors_come_before_training(tmp_path, monkeypatch, args, message):
    """Nothing is trained or written when the outputs asked for cannot be written."""
    monkeypatch.chdir(tmp_path)
    img = texture_image(32, 32)
    img[:, :4, :4] = 0.0  # a few black pixels for --key-color 0,0,0 to find
    write_image(tmp_path / "t.png", img)
    r = runner.invoke(app, [*args, "--steps", "2"])
    assert r.exit_code == 1, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png"]


def test_sampling_progress_runs_from_the_first_window_to_the_whole(trained, tmp_path):
    """pipeline.sample's on_progress: every phase of every sample, the fraction of the work never
    going back and ending at 1 once the last file is written."""
    from coopsynth import pipeline

    model, blob = pipeline.load_model(trained / "out" / "model.pt", "cpu")
    seen = []
    job = pipeline.SampleJob(tmp_path, 2, (40, 48), refine=2)
    paths = pipeline.sample(model, blob, job, on_progress=seen.append)
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == pytest.approx(1.0)
    assert {(s["sample"], s["phase"]) for s in seen} == {(i, p) for i in (1, 2) for p in ("generator", "refine", "writing")}
    assert all(p.is_file() for p in paths) and seen[-1]["phase"] == "writing"
    assert all(s["unit"] == "window" and 1 <= s["done"] <= s["of"] or s["done"] == 0 for s in seen)


def test_version_names_the_installed_package_and_torch():
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.startswith(f"coopsynth {version('coopsynth')} (torch {torch.__version__}")


def test_a_batch_input_whose_stem_looks_like_a_file_name_still_gets_a_folder(tmp_path):
    d = tmp_path / "in"
    write_image(d / "photo.jpg.png", texture_image(32, 32, seed=1))
    out = tmp_path / "out"
    r = runner.invoke(app, ["texture", str(d), "-o", str(out), "--steps", "1", "--samples", "1", "--preset", "fast"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "photo.jpg").iterdir()) == ["log.jsonl", "model.pt", "progress.png", "sample_000.png"]


def test_max_size_scales_an_image_down_before_learning(tmp_path):
    """--max-size for images (texture and train): the input is area-averaged so its longer side
    is that size, the note says so, and samples default to the scaled size."""
    big = texture_image(96, 128)
    write_image(tmp_path / "big.png", big)
    r = runner.invoke(app, ["texture", str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "--steps", "2", "--max-size", "64"])
    assert r.exit_code == 0, r.output
    assert "scaled 128x96 to 64x48 (--max-size)" in r.output
    assert read_image(tmp_path / "o" / "sample_000.png").shape == (3, 48, 64)
    blob = torch.load(tmp_path / "o" / "model.pt", weights_only=True)
    assert blob["meta"]["size"] == [48, 64]
    want = torch.nn.functional.avg_pool2d(((big * 255).round() / 255)[None], 2)[0]  # 2x2 means: the area scaling
    from coopsynth import pipeline

    _, data, meta = pipeline.load_input(pipeline.TrainJob(tmp_path / "big.png", tmp_path / "t", max_size=64))
    torch.testing.assert_close(data, want, rtol=0, atol=1e-6)
    _, data, meta = pipeline.load_input(pipeline.TrainJob(tmp_path / "big.png", tmp_path / "t", max_size=200))
    assert data.shape == (3, 96, 128) and meta["notes"] == []  # already small enough: as it is


def test_texture_samples_take_the_inputs_colours_unless_told_not_to(trained, tmp_path):
    """Histogram matching (the default) maps each channel into the input's distribution: into its
    range, where a two-step model's raw samples run to 0 and 1."""
    args = ["sample", str(trained / "out" / "model.pt"), "--size", "48x40", "--refine", "1", "--seed", "2"]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "on.png")]).exit_code == 0
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "off.png"), "--no-match-histogram"])
    assert r.exit_code == 0, r.output
    x = read_image(trained / "tiny.png").flatten(1)
    lo, hi = x.min(1).values, x.max(1).values  # (3,)
    on, off = (read_image(tmp_path / f"{n}.png").flatten(1) for n in ("on", "off"))
    assert ((on.min(1).values >= lo) & (on.max(1).values <= hi)).all()
    assert ((off.min(1).values < lo) | (off.max(1).values > hi)).any()


def test_match_histogram_on_a_model_without_colour_statistics_is_refused(trained, tmp_path):
    blob = torch.load(trained / "out" / "model.pt", weights_only=True)
    del blob["quantiles"]  # as coopsynth wrote checkpoints before histogram matching
    torch.save(blob, tmp_path / "old.pt")
    args = ["sample", str(tmp_path / "old.pt"), "-o", str(tmp_path / "s.png"), "--refine", "0"]
    r = runner.invoke(app, [*args, "--match-histogram"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "old.pt: holds no colour distribution for --match-histogram" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.png").exists()
    assert runner.invoke(app, args).exit_code == 0 and (tmp_path / "s.png").is_file()  # unmatched by default


def test_the_core_imports_neither_typer_nor_rich():
    core = "networks langevin trainer model histogram completion metrics io checkpoint pipeline video evaluate".split()
    imports = "".join(f"import coopsynth.{m}\n" for m in core)
    code = f"import sys\n{imports}print(sorted({{'typer', 'rich'}} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_a_16_bit_input_gives_16_bit_samples_unless_told_otherwise(tmp_path):
    """--bits auto follows the input (into the model too, for `sample`); --bits 8 and an 8-bit
    format (JPEG) write 8 bits; the 16-bit samples use more than 256 levels."""
    from PIL import Image

    x = texture_image(32, 40)[:1]  # a grey height map
    write_image(tmp_path / "h.png", x, bits=16)
    base = ["--steps", "2", "--preset", "fast", "--samples", "1"]
    r = runner.invoke(app, ["texture", str(tmp_path / "h.png"), "-o", str(tmp_path / "run"), *base])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "run" / "sample_000.png").mode == "I;16"
    y = read_image(tmp_path / "run" / "sample_000.png")
    assert y.shape == (1, 32, 40) and len(torch.unique(y)) > 256
    model = str(tmp_path / "run" / "model.pt")
    for extra, name, mode in [([], "a.png", "I;16"), (["--bits", "8"], "b.png", "L"), ([], "c.jpg", "L")]:
        r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / name), "--refine", "1", *extra])
        assert r.exit_code == 0, r.output
        assert Image.open(tmp_path / name).mode == mode, name
    r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / "d.tif"), "--refine", "1"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "d.tif").mode.startswith("I;16")


def _material(d, h=32, w=40):
    """A colour map and a 16-bit grey height map of one size, in folder d."""
    d.mkdir(exist_ok=True)
    x = texture_image(h, w)
    write_image(d / "albedo.png", x)
    write_image(d / "height.png", x.mean(0, keepdim=True), bits=16)
    return d


def _normals(height: torch.Tensor, strength: float = 4.0) -> torch.Tensor:
    """A tangent-space normal map (3, H, W) in [0, 1] of a height map (1, H, W): (-dh/dx, -dh/dy, 1)
    made unit length, stored as (n + 1) / 2."""
    dx = torch.roll(height, -1, -1) - torch.roll(height, 1, -1)
    dy = torch.roll(height, -1, -2) - torch.roll(height, 1, -2)
    n = torch.cat([-strength * dx, -strength * dy, torch.ones_like(height)])
    return (n / n.norm(dim=0, keepdim=True) + 1) / 2


def test_normal_maps_are_told_apart_from_colour_maps():
    height = texture_image(32, 40).mean(0, keepdim=True)
    normals = _normals(height)
    assert pipeline.is_normal_map(normals)
    assert pipeline.is_normal_map((normals * 255).round() / 255)  # as an 8-bit file holds it
    assert not pipeline.is_normal_map(texture_image(32, 40))  # a colour texture
    assert not pipeline.is_normal_map(torch.rand(3, 32, 40))
    assert not pipeline.is_normal_map(height)  # one channel
    assert not pipeline.is_normal_map(normals * 0.8 + 0.1)  # vectors of length 0.8


def test_unit_normals_fixes_a_normal_maps_lengths_and_nothing_else():
    """x and y stay (scaled down only where they alone pass 1), z is the rest of the unit length,
    its sign kept; the other maps are untouched."""
    maps = [{"name": "albedo", "channels": 3}, {"name": "normal", "channels": 3, "normal": True}, {"name": "h", "channels": 1}]
    y = torch.rand(7, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y[3:6, 0, 0] = 0.5  # a vector of length zero
    y[3:6, 0, 1] = torch.tensor([1.0, 1.0, 0.5])  # x and y alone longer than 1
    out = pipeline.unit_normals(y, maps)
    assert torch.equal(out[:3], y[:3]) and torch.equal(out[6:], y[6:])
    v, before = out[3:6] * 2 - 1, y[3:6] * 2 - 1
    assert torch.allclose(v.norm(dim=0), torch.ones(6, 5, dtype=torch.float64), atol=1e-12)
    short = (before[:2] ** 2).sum(0) <= 1
    assert torch.allclose(v[:2][:, short], before[:2][:, short], atol=1e-12)
    tilted = v[2].abs() > 1e-6  # z's sign kept (where x and y leave z any length)
    assert torch.equal((v[2] < 0)[tilted], (before[2] < 0)[tilted]) and tilted.sum() > 20
    assert torch.allclose(out[3:6, 0, 0], torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))  # flat
    assert torch.allclose(
        v[:, 0, 1], torch.tensor([0.5**0.5, 0.5**0.5, 0.0], dtype=torch.float64), atol=1e-7
    )  # z: sqrt of rounding
    assert pipeline.unit_normals(y, [{"name": "a", "channels": 7}]) is y
    assert pipeline.unit_normals(y, None) is y


def test_a_stacks_normal_map_gives_unit_normals_in_samples_and_completions(tmp_path, monkeypatch):
    """A normal map in a stack is found by its content and said so; every sample's normals have unit
    length (up to 8-bit rounding), and a completion makes its filled normals unit and leaves the
    visible ones as they were."""
    monkeypatch.chdir(tmp_path)
    mat = _material(tmp_path / "mat")
    write_image(mat / "normal.png", _normals(read_image(mat / "height.png")))
    r = runner.invoke(app, ["texture", str(mat), "--stack", "-o", "run", "--steps", "2", "--preset", "fast", "--samples", "2"])
    assert r.exit_code == 0, r.output
    assert "normal: a normal map; the samples' normals are made unit length" in r.output
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert [m.get("normal", False) for m in blob["meta"]["maps"]] == [False, False, True]
    rounding = 3**0.5 / 255  # each channel within half a level of 8 bits, times two
    for i in range(2):
        n = read_image(tmp_path / "run" / f"sample_00{i}_normal.png") * 2 - 1
        assert ((n.norm(dim=0) - 1).abs() <= rounding).all()
    missing = torch.zeros(32, 40, dtype=torch.bool)
    missing[8:20, 10:26] = True
    write_image(tmp_path / "mask.png", missing[None].float())
    args = ["complete", str(mat), "--stack", "--mask", "mask.png", "--model", "run/model.pt", "-o", "done.png"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    src, done = read_image(mat / "normal.png"), read_image(tmp_path / "done_normal.png")
    assert torch.equal(done[:, ~missing], src[:, ~missing])
    assert (((done[:, missing] * 2 - 1).norm(dim=0) - 1).abs() <= rounding).all()


def test_a_stack_of_maps_trains_one_model_and_writes_every_map_of_every_sample(tmp_path, monkeypatch):
    """--stack: one model on the maps' channels together; each sample is one file per map, each
    at its own channel count and depth; `sample` splits the same way; progress.png shows the maps
    one above the other."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # a file name's run folder: coopsynth-out/mat/, named after the folder
    mat = _material(tmp_path / "mat")
    base = ["--steps", "2", "--preset", "fast", "--samples", "2"]
    r = runner.invoke(app, ["texture", str(mat), "--stack", "-o", str(tmp_path / "run"), *base])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["config"]["net"]["channels"] == 4
    assert [m["name"] for m in blob["meta"]["maps"]] == ["albedo", "height"]
    for i in range(2):
        assert Image.open(run / f"sample_00{i}_albedo.png").mode == "RGB"
        assert Image.open(run / f"sample_00{i}_height.png").mode == "I;16"
        assert not (run / f"sample_00{i}.png").exists()
    progress = read_image(run / "progress.png")  # (3, 2 h, n w): the colour map above, the height map below
    h = progress.shape[1] // 2
    assert torch.equal(progress[0, h:], progress[1, h:]) and torch.equal(progress[1, h:], progress[2, h:])
    assert not torch.equal(progress[0, :h], progress[1, :h])
    r = runner.invoke(app, ["sample", str(run / "model.pt"), "-o", str(tmp_path / "big.png"), "--size", "48", "--refine", "1"])
    assert r.exit_code == 0, r.output
    assert read_image(tmp_path / "big_albedo.png").shape == (3, 48, 48)
    assert read_image(tmp_path / "big_height.png").shape == (1, 48, 48)
    r = runner.invoke(app, ["sample", str(run / "model.pt"), "-o", str(tmp_path / "big.png"), "--size", "48"])
    assert r.exit_code == 1 and "big_albedo.png: already exists" in r.output
    # into a file name: each map's file is checked before training, not the name given
    (tmp_path / "one.png").write_bytes(b"not ours")
    args = ["texture", str(mat), "--stack", "-o", str(tmp_path / "one.png"), "--steps", "2", "--preset", "fast"]
    r = runner.invoke(app, [*args, "--force"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one.png").read_bytes() == b"not ours" and (tmp_path / "one_height.png").is_file()
    assert (tmp_path / "coopsynth-out" / "mat" / "model.pt").is_file()
    before = (tmp_path / "one_albedo.png").read_bytes()
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "one_albedo.png: already exists" in r.output
    assert (tmp_path / "one_albedo.png").read_bytes() == before


def test_train_stacks_files_named_one_by_one(tmp_path):
    mat = _material(tmp_path / "mat")
    args = ["train", str(mat / "height.png"), str(mat / "albedo.png"), "--stack", "--steps", "2", "--preset", "fast"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert [(m["name"], m["channels"], m["bits"]) for m in blob["meta"]["maps"]] == [("height", 1, 16), ("albedo", 3, 8)]


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda d: write_image(d / "b.png", texture_image(32, 48)), ["a.png", "b.png"], "b.png: 48x32, but a.png is 40x32"),
        (lambda d: None, ["a.png"], "--stack: give two or more maps of one material"),
        (lambda d: (d / "x").mkdir() or write_image(d / "x" / "a.png", texture_image(32, 40)), ["a.png", "x"], "two maps"),
    ],
)
def test_a_stack_that_cannot_be_one_material_is_refused_before_training(tmp_path, monkeypatch, make, args, message):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "a.png", texture_image(32, 40))
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in ("texture", "train"):
        r = runner.invoke(app, [cmd, *args, "--stack", "--steps", "2"])
        assert r.exit_code == 1 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_without_stack_takes_one_input(tmp_path):
    write_image(tmp_path / "a.png", texture_image(32, 40))
    r = runner.invoke(app, ["train", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--steps", "2"])
    assert r.exit_code == 1 and "train takes one input, got 2" in r.output


def test_complete_a_stack_fills_one_hole_in_every_map_and_keeps_the_visible_pixels(tmp_path, monkeypatch):
    """--stack on complete: one mask for every map; each map's visible pixels come back exactly (the
    16-bit height too), its hole is filled; the model it trains completes the same stack again."""
    mat = _material(tmp_path / "mat")
    missing = torch.zeros(32, 40, dtype=torch.bool)
    missing[8:20, 10:26] = True
    write_image(tmp_path / "mask.png", missing[None].float())
    args = ["complete", str(mat), "--stack", "--mask", str(tmp_path / "mask.png")]
    r = runner.invoke(app, [*args, "--steps", "2", "--preset", "fast", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    for name, channels in (("albedo", 3), ("height", 1)):
        src, done = read_image(mat / f"{name}.png"), read_image(tmp_path / "out" / f"completed_{name}.png")
        assert done.shape == (channels, 32, 40)
        assert torch.equal(done[:, ~missing], src[:, ~missing]), name
        assert not torch.equal(done[:, missing], src[:, missing]), name
    r = runner.invoke(app, [*args, "--model", str(tmp_path / "out" / "model.pt"), "-o", str(tmp_path / "again.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again_albedo.png").is_file() and (tmp_path / "again_height.png").is_file()
    monkeypatch.chdir(tmp_path)  # into a file name, trained: the run folder is named after the folder of maps
    r = runner.invoke(app, [*args, "--steps", "2", "--preset", "fast", "-o", "third.png"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "coopsynth-out" / "mat" / "model.pt").is_file() and (tmp_path / "third_height.png").is_file()
    r = runner.invoke(app, ["complete", str(mat / "albedo.png"), str(mat / "height.png"), "--mask", str(tmp_path / "mask.png")])
    assert r.exit_code == 1 and "complete takes one input, got 2" in r.output


def test_a_stacked_model_cannot_complete_one_image(tmp_path):
    mat = _material(tmp_path / "mat")
    r = runner.invoke(app, ["train", str(mat), "--stack", "--steps", "2", "--preset", "fast", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    img = texture_image(32, 40)
    img[:, :4, :4] = 0.0
    write_image(tmp_path / "hole.png", img)
    args = ["complete", str(tmp_path / "hole.png"), "--key-color", "0,0,0", "--model", str(tmp_path / "run" / "model.pt")]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "done.png")])
    assert r.exit_code == 1 and "a model of maps albedo, height cannot complete one image" in r.output


def test_resuming_a_stack_on_other_maps_is_refused(tmp_path):
    mat = _material(tmp_path / "mat")
    args = ["--stack", "--preset", "fast", "-o", str(tmp_path / "run")]
    assert runner.invoke(app, ["train", str(mat / "albedo.png"), str(mat / "height.png"), *args, "--steps", "2"]).exit_code == 0
    write_image(mat / "rough.png", texture_image(32, 40)[:1])
    r = runner.invoke(app, ["train", str(mat / "albedo.png"), str(mat / "rough.png"), *args, "--resume", "--steps", "4"])
    assert r.exit_code == 1 and "trained on other maps" in r.output, r.output


def test_several_material_folders_with_stack_train_one_model_each(tmp_path):
    """texture A/ B/ --stack: one material per folder, one model each in <output>/<folder>/; a
    folder whose maps differ in size fails alone, and the run exits 1 after the others."""
    _material(tmp_path / "oak")
    _material(tmp_path / "slate")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_image(bad / "a.png", texture_image(32, 40))
    write_image(bad / "b.png", texture_image(32, 48))
    args = ["texture", str(tmp_path / "oak"), str(bad), str(tmp_path / "slate"), "--stack", "-o", str(tmp_path / "out")]
    r = runner.invoke(app, [*args, "--steps", "2", "--preset", "fast", "--samples", "1"])
    assert r.exit_code == 1, r.output
    assert "b.png: 48x32, but" in r.output
    for name in ("oak", "slate"):
        blob = torch.load(tmp_path / "out" / name / "model.pt", weights_only=True)
        assert [m["name"] for m in blob["meta"]["maps"]] == ["albedo", "height"]
        assert (tmp_path / "out" / name / "sample_000_height.png").is_file()
    assert not (tmp_path / "out" / "bad" / "model.pt").exists()
