import json
import math

import pytest
import torch
from typer.testing import CliRunner

from coopsynth.checkpoint import load_checkpoint
from coopsynth.cli import app
from coopsynth.errors import CoopsynthError
from coopsynth.histogram import match as match_histogram
from coopsynth.histogram import quantile_function
from coopsynth.io import read_video, write_video
from coopsynth.metrics import mean_motion
from coopsynth.model import MATCH_HISTOGRAM, CoopModel, time_smoothed_noise
from coopsynth.networks import Descriptor, Generator
from coopsynth.trainer import TrainConfig
from coopsynth.video import SMOOTH_WIDTHS, motion_matched_sampling, prepare_video
from tests.conftest import tiny_net

runner = CliRunner()


def moving_clip(t: int = 12, h: int = 32, w: int = 40, channels: int = 3) -> torch.Tensor:
    """A drifting sine pattern with a little noise: (C, T, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(0.5 * xx + 0.3 * yy - 0.6 * tt)
    return (base + 0.05 * torch.rand(channels, t, h, w, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    write_video(d / "clip.mp4", moving_clip(), fps=10.0)
    r = runner.invoke(app, ["video", str(d / "clip.mp4"), "-o", str(d / "out"), "--steps", "2", "--samples", "1"])
    assert r.exit_code == 0, r.output
    return d


def test_3d_network_shapes_tiny():
    cfg = tiny_net(dims=3)
    z = torch.randn(2, cfg.z_channels, 3, 4, 5)
    y = Generator(cfg)(z)
    assert y.shape == (2, 3, 3 * cfg.up[0], 4 * cfg.up[1], 5 * cfg.up[2])
    assert Descriptor(cfg)(y).shape == (2,)


def test_video_end_to_end(clip_dir):
    out = clip_dir / "out"
    for name in ["model.pt", "sample_000.mp4", "sample_000.gif", "progress.png", "log.jsonl"]:
        assert (out / name).is_file(), name
    v, fps = read_video(out / "sample_000.mp4")
    assert v.shape[1:] == (12, 32, 40)
    assert fps == pytest.approx(10.0)


def test_sample_longer_than_input_and_loop(clip_dir, tmp_path):
    r = runner.invoke(
        app,
        [
            "sample",
            str(clip_dir / "out" / "model.pt"),
            "-o",
            str(tmp_path),
            "--samples",
            "1",
            "--frames",
            "30",
            "--loop",
            "--size",
            "24x16",
        ],
    )
    assert r.exit_code == 0, r.output
    v, _ = read_video(tmp_path / "sample_000.mp4")
    assert v.shape[1:] == (30, 16, 24)
    inner = (v[:, 1:] - v[:, :-1]).abs().mean()
    seam = (v[:, 0] - v[:, -1]).abs().mean()
    assert seam <= 1.5 * inner + 2 / 255


def test_video_sample_into_a_file_name_writes_that_video_alone(clip_dir, tmp_path):
    """-o one.mp4: that video and no GIF preview beside it (a folder gets one); -o one.gif: a GIF."""
    model = str(clip_dir / "out" / "model.pt")
    for name in ("one.mp4", "one.gif"):
        r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / name), "--frames", "6", "--size", "24x16"])
        assert r.exit_code == 0, r.output
        v, _ = read_video(tmp_path / name)
        assert v.shape[1:] == (6, 16, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.gif", "one.mp4"]
    r = runner.invoke(app, ["sample", model, "-o", str(tmp_path / "still.png")])
    assert r.exit_code == 1 and "a video model writes videos" in r.output


def test_video_model_refuses_texture_options(clip_dir, tmp_path):
    r = runner.invoke(app, ["sample", str(clip_dir / "out" / "model.pt"), "-o", str(tmp_path), "--frames", "1"])
    assert r.exit_code == 1 and "at least 2 frames" in r.output


def test_prepare_video_scales_and_trims(tmp_path):
    write_video(tmp_path / "big.mp4", moving_clip(t=10, h=64, w=96), fps=5.0)
    v, fps, notes = prepare_video(tmp_path / "big.mp4", max_size=48, max_frames=6)
    assert v.shape[1:] == (6, 32, 48)
    assert len(notes) == 2 and fps == pytest.approx(5.0)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"garbage bytes, not a video" * 10, "not a readable video")])
def test_bad_video_files(tmp_path, content, message):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    r = runner.invoke(app, ["video", str(p), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_image_given_to_video_command(tmp_path):
    from coopsynth.io import write_image

    write_image(tmp_path / "a.png", torch.rand(3, 16, 16))
    r = runner.invoke(app, ["video", str(tmp_path / "a.png")])
    assert r.exit_code == 1 and "looks like an image" in r.output


def test_a_gif_is_a_video_by_its_frames(tmp_path, monkeypatch):
    """An animated GIF is a dynamic texture for `video` (and not an image for `texture`); a GIF of
    one frame is an image."""
    from coopsynth.io import write_image
    from coopsynth.pipeline import input_kind

    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "fire.gif", moving_clip(6, 16, 16), fps=10.0)
    write_image(tmp_path / "still.gif", torch.rand(3, 16, 16))
    assert input_kind(tmp_path / "fire.gif") == "video" and input_kind(tmp_path / "still.gif") == "texture"
    r = runner.invoke(app, ["texture", str(tmp_path / "fire.gif"), "--steps", "1"])
    assert r.exit_code == 1 and "fire.gif: this looks like a video; use `coopsynth video`" in r.output
    r = runner.invoke(app, ["video", str(tmp_path / "still.gif"), "--steps", "1"])
    assert r.exit_code == 1 and "still.gif: this looks like an image" in r.output
    args = ["-o", "run", "--steps", "1", "--preset", "fast", "--samples", "1"]
    r = runner.invoke(app, ["video", str(tmp_path / "fire.gif"), *args])
    assert r.exit_code == 0, r.output
    assert read_video(tmp_path / "run" / "sample_000.mp4")[0].shape[1:] == (6, 16, 16)


def test_folders_sort_gifs_by_their_frames(tmp_path):
    """In a folder, an animated GIF is a clip for `video` and no image for `texture`; a still GIF
    is an image."""
    from coopsynth.io import write_image
    from coopsynth.pipeline import expand_inputs

    d = tmp_path / "mixed"
    d.mkdir()
    write_video(d / "fire.gif", moving_clip(6, 16, 16), fps=10.0)
    write_video(d / "water.mp4", moving_clip(6, 16, 16), fps=10.0)
    write_image(d / "still.gif", torch.rand(3, 16, 16))
    write_image(d / "bark.png", torch.rand(3, 16, 16))
    assert [p.name for p in expand_inputs([d], "video")] == ["fire.gif", "water.mp4"]
    assert [p.name for p in expand_inputs([d], "texture")] == ["bark.png", "still.gif"]
    args = ["-o", str(tmp_path / "out"), "--steps", "1", "--preset", "fast", "--samples", "1"]
    r = runner.invoke(app, ["video", str(d), *args])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fire", "water"]


def test_video_samples_default_to_the_motion_matched_settings(clip_dir, tmp_path):
    """A video run ends by picking the sampling settings (0..6 refinement steps, or a latent
    smoothing when the generator alone moves too much) whose samples move most like the input, once
    for raw videos and once for histogram-matched ones; it logs both and stores them in the
    checkpoint; `sample` uses the pair of its matching by default, and explicit --refine and
    --smooth override them."""
    events = [json.loads(line) for line in (clip_dir / "out" / "log.jsonl").read_text().splitlines()]
    picked = {e["matched"]: e for e in events if e.get("event") == "sample_refine"}
    assert sorted(picked) == [False, True]
    cfg = load_checkpoint(clip_dir / "out" / "model.pt")["config_obj"]
    for matched, event in picked.items():
        ratios, smooth_ratios = event["motion_ratios"], event["smooth_ratios"]
        assert len(ratios) == 7 and len(smooth_ratios) == (len(SMOOTH_WIDTHS) if ratios[0] > 1 else 0)
        options = [(abs(math.log(max(r, 1e-6))), i, 0.0) for i, r in enumerate(ratios)]
        options += [(abs(math.log(max(r, 1e-6))), 0, float(w)) for w, r in smooth_ratios.items()]
        _, steps, smooth = min(options)
        assert (event["steps"], event["smooth"]) == (steps, smooth)
        assert cfg.sampling(matched) == (steps, smooth)
    assert (cfg.sample_refine, cfg.sample_smooth) == cfg.sampling(False)
    assert (cfg.matched_refine, cfg.matched_smooth) == cfg.sampling(True)
    # the two fits measured different videos: matching moves the raw frames' values
    assert picked[True]["motion_ratios"] != picked[False]["motion_ratios"]
    model = clip_dir / "out" / "model.pt"
    for matched in (False, True):
        steps, smooth = cfg.sampling(matched)
        flag = "--match-histogram" if matched else "--no-match-histogram"
        default = ([], [flag])[matched != MATCH_HISTOGRAM[3]]  # the default needs no flag
        videos = {}
        other_refine = [flag, "--refine", str(0 if steps else 2), "--smooth", str(smooth)]
        other_smooth = [flag, "--refine", str(steps), "--smooth", str(0.0 if smooth else 1.5)]
        cases = [("default", default), ("same", [flag, "--refine", str(steps), "--smooth", str(smooth)])]
        for name, extra in [*cases, ("other_refine", other_refine), ("other_smooth", other_smooth)]:
            out = tmp_path / f"{matched}_{name}"
            r = runner.invoke(app, ["sample", str(model), "-o", str(out), "--samples", "1", "--seed", "3", *extra])
            assert r.exit_code == 0, r.output
            videos[name], _ = read_video(out / "sample_000.mp4")
        assert torch.equal(videos["default"], videos["same"])
        assert not torch.equal(videos["default"], videos["other_refine"])
        assert not torch.equal(videos["default"], videos["other_smooth"])


def test_motion_matching_of_matched_videos_measures_them_matched():
    """match=True measures each sample after histogram matching, as `sample` writes it; a model
    with no stored distribution is measured raw either way."""
    torch.manual_seed(0)
    clip = moving_clip(t=8, h=16, w=16)
    model = CoopModel(tiny_net(dims=3), clip.flatten(1).mean(1), clip.flatten(1).std(1))
    lv = TrainConfig().langevin()
    raw = motion_matched_sampling(model, clip, max_steps=2, langevin=lv, seed=1)
    assert motion_matched_sampling(model, clip, max_steps=2, langevin=lv, seed=1, match=True) == raw
    model.quantiles = quantile_function(clip)
    _, _, ratios = motion_matched_sampling(model, clip, max_steps=2, langevin=lv, seed=1, match=True)
    gen = torch.Generator().manual_seed(1)
    y = model.denormalise(model.generate(model.latent(2, (8, 16, 16), gen), (8, 16, 16))).clamp(0, 1)
    want = sum(mean_motion(match_histogram(v, model.quantiles)) for v in y) / 2 / mean_motion(clip)
    assert ratios["refine"][0] == pytest.approx(want, rel=1e-5)
    assert ratios["refine"][0] != pytest.approx(raw[2]["refine"][0], rel=1e-3)


def test_motion_matching_measures_against_the_clip():
    """The ratios are the samples' motion over the clip's: the same samples against a clip that moves
    twice as much give half the ratios; the first is the generator's own videos; a still clip asks
    for nothing."""
    torch.manual_seed(0)
    clip = moving_clip(t=8, h=16, w=16)
    model = CoopModel(tiny_net(dims=3), clip.flatten(1).mean(1), clip.flatten(1).std(1))
    lv = TrainConfig().langevin()
    steps, _, ratios = motion_matched_sampling(model, clip, max_steps=3, langevin=lv, seed=1)
    ratios = ratios["refine"]
    assert len(ratios) == 4
    fast = clip.clone()
    fast[:, 1::2] = 1 - fast[:, 1::2]  # flickers: more motion, same size
    _, _, fast_ratios = motion_matched_sampling(model, fast, max_steps=3, langevin=lv, seed=1)
    scale = mean_motion(clip) / mean_motion(fast)
    assert fast_ratios["refine"] == pytest.approx([r * scale for r in ratios], rel=1e-4)
    gen = torch.Generator().manual_seed(1)
    y = model.denormalise(model.generate(model.latent(2, (8, 16, 16), gen), (8, 16, 16))).clamp(0, 1)
    assert ratios[0] == pytest.approx((mean_motion(y[0]) + mean_motion(y[1])) / 2 / mean_motion(clip), rel=1e-5)
    still = clip[:, :1].expand_as(clip).contiguous()
    assert motion_matched_sampling(model, still, max_steps=3, langevin=lv) == (0, 0.0, {"refine": [], "smooth": {}})


def test_motion_matching_slows_a_generator_that_moves_too_much():
    """Against a clip that hardly moves, the generator's own videos move far too much: refinement
    only adds motion, so the pick is a latent smoothing, and wider smoothing moves less."""
    torch.manual_seed(0)
    clip = moving_clip(t=16, h=16, w=16)
    calm = clip[:, :1] + 0.02 * (clip - clip[:, :1])  # the same pattern, 2% of its motion
    model = CoopModel(tiny_net(dims=3), clip.flatten(1).mean(1), clip.flatten(1).std(1))
    steps, smooth, ratios = motion_matched_sampling(model, calm, max_steps=3, langevin=TrainConfig().langevin(), seed=1)
    assert ratios["refine"][0] > 1 and list(ratios["smooth"]) == list(SMOOTH_WIDTHS)
    by_width = [ratios["smooth"][w] for w in sorted(SMOOTH_WIDTHS)]
    assert by_width == sorted(by_width, reverse=True) and by_width[0] < ratios["refine"][0]  # wider, slower
    assert steps == 0 and smooth == min(SMOOTH_WIDTHS, key=lambda w: abs(math.log(ratios["smooth"][w]))) > 0


@pytest.mark.parametrize("loop, t", [(False, 12), (True, 12), (True, 3)])
def test_time_smoothed_latents_stay_unit_gaussian_and_correlate_over_time(loop, t):
    """Every element keeps variance 1; neighbouring frames correlate as the unit-norm Gaussian kernel
    says (a short loop folds the kernel, still variance 1); a loop correlates its last frame with
    its first like any two neighbours."""
    g = torch.Generator().manual_seed(0)
    z = time_smoothed_noise((512, 4, t, 8, 8), 1.5, loop, g, "cpu")  # (B, C, t, h, w)
    assert z.shape == (512, 4, t, 8, 8)
    assert z.var().item() == pytest.approx(1.0, abs=0.02)
    corr = (z[:, :, :-1] * z[:, :, 1:]).mean().item()
    if t > 3:
        taps = torch.exp(-0.5 * (torch.arange(-5, 6, dtype=torch.float64) / 1.5) ** 2)
        taps = taps / taps.norm()
        assert corr == pytest.approx((taps[:-1] * taps[1:]).sum().item(), abs=0.02)  # 0.80
    else:
        assert corr > 0.9  # three frames sharing one folded kernel: nearly the same draw
    seam = (z[:, :, -1] * z[:, :, 0]).mean().item()
    if loop:
        assert seam == pytest.approx(corr, abs=0.02)
    else:
        assert abs(seam) < 0.2 and seam < corr - 0.5  # twelve frames apart: nearly independent


def test_a_smoothed_loop_has_no_seam():
    """With --loop the latent's correlation over time is circular: the last frame flows into the
    first like any two neighbours (a correlation cut at the seam jumps 2.5x the mean motion here)."""
    torch.manual_seed(0)
    model = CoopModel(tiny_net(dims=3), torch.full((3,), 0.5), torch.full((3,), 0.2))
    lv = TrainConfig().langevin()
    gen = torch.Generator().manual_seed(1)
    v = model.sample(1, (32, 16, 16), refine=0, langevin=lv, wrap=(True, False, False), generator=gen, smooth=2.0)[0]
    inner = (v[:, 1:] - v[:, :-1]).abs().mean()
    seam = (v[:, 0] - v[:, -1]).abs().mean()
    assert seam <= 1.5 * inner


def test_unsmoothed_latents_are_the_plain_draws():
    """smooth 0 (and any smoothing of an image model) draws exactly the Z of before."""
    model3 = CoopModel(tiny_net(dims=3), torch.zeros(3), torch.ones(3))
    plain = torch.randn((2, *model3.generator.latent_shape((8, 16, 16))), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model3.latent(2, (8, 16, 16), torch.Generator().manual_seed(4), smooth=0.0), plain)
    smoothed = model3.latent(2, (8, 16, 16), torch.Generator().manual_seed(4), smooth=1.0)
    assert smoothed.shape == plain.shape and not torch.equal(smoothed, plain)
    model2 = CoopModel(tiny_net(dims=2), torch.zeros(3), torch.ones(3))
    a = model2.latent(2, (16, 16), torch.Generator().manual_seed(4), smooth=2.0)
    assert torch.equal(a, model2.latent(2, (16, 16), torch.Generator().manual_seed(4)))


def test_smooth_option_errors(clip_dir, tmp_path):
    model = clip_dir / "out" / "model.pt"
    r = runner.invoke(app, ["sample", str(model), "-o", str(tmp_path / "a"), "--smooth", "-1"])
    assert r.exit_code == 1 and "--smooth -1: must be between 0 and 100" in r.output
    r = runner.invoke(app, ["video", str(clip_dir / "clip.mp4"), "-o", str(tmp_path / "b"), "--smooth", "-1"])
    assert r.exit_code == 1 and "--smooth" in r.output and not (tmp_path / "b").exists()  # refused before training


def test_video_into_a_file_name_trains_and_writes_that_video(clip_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["video", str(clip_dir / "clip.mp4"), "-o", "new.mp4", "--steps", "1", "--frames", "6"])
    assert r.exit_code == 0, r.output
    assert read_video(tmp_path / "new.mp4")[0].shape[1] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coopsynth-out", "new.mp4"]  # no GIF preview beside a file
    assert (tmp_path / "coopsynth-out" / "clip" / "model.pt").is_file()


@pytest.mark.parametrize("fps", ["-5", "0", "5000"])
def test_impossible_frame_rates_are_refused_in_one_line(clip_dir, tmp_path, fps):
    r = runner.invoke(app, ["sample", str(clip_dir / "out" / "model.pt"), "-o", str(tmp_path / "a.mp4"), "--fps", fps])
    assert r.exit_code == 1 and f"--fps {fps}: must be above 0" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())
    with pytest.raises(CoopsynthError, match="cannot write a video at"):
        write_video(tmp_path / "b.mp4", moving_clip(t=2), fps=float(fps))
    assert not list(tmp_path.iterdir())


def test_a_video_too_large_to_hold_is_refused_before_training(clip_dir, tmp_path):
    r = runner.invoke(app, ["sample", str(clip_dir / "out" / "model.pt"), "-o", str(tmp_path / "a"), "--frames", "10000000"])
    assert r.exit_code == 1 and "10000000-frame 40x32 video is too large" in r.output
    r = runner.invoke(app, ["video", str(clip_dir / "clip.mp4"), "-o", str(tmp_path / "b"), "--frames", "10000000"])
    assert r.exit_code == 1 and "video is too large" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "model.pt").exists()


def test_video_samples_are_histogram_matched_only_when_asked(clip_dir, tmp_path):
    """Videos default to unmatched samples; --match-histogram gives each channel the training
    clip's distribution (a two-step model's raw frames are far brighter than the clip)."""
    model = str(clip_dir / "out" / "model.pt")
    args = ["sample", model, "--samples", "1", "--frames", "8", "--size", "24x16", "--seed", "3"]
    for name, extra in (("plain.mp4", []), ("off.mp4", ["--no-match-histogram"]), ("on.mp4", ["--match-histogram"])):
        r = runner.invoke(app, [*args, "-o", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
    (plain, _), (off, _), (on, _) = (read_video(tmp_path / n) for n in ("plain.mp4", "off.mp4", "on.mp4"))
    assert torch.equal(plain, off) and not torch.equal(plain, on)
    src, _ = read_video(clip_dir / "clip.mp4")
    # the medians, per channel: where the raw frames saturate, matching maps the repeated value to
    # the middle of its share, so the tails need not follow; the codec moves single pixels too
    want = src.flatten(1).median(1).values  # (C,)
    assert ((on.flatten(1).median(1).values - want).abs() < 0.05).all()
    assert ((off.flatten(1).median(1).values - want).abs() > 0.2).all()


def test_a_video_run_reports_its_self_check_against_the_video_threshold(tmp_path):
    """A clip whose halves are at least SELF_CHECK_MIN pixels a side gets the self-check, its
    samples drawn as `sample` draws them; two iterations give noise, warned of against the video
    threshold, logged and kept in the checkpoint."""
    from coopsynth import pipeline

    write_video(tmp_path / "clip.mp4", moving_clip(t=12, h=64, w=64), fps=10.0)
    r = runner.invoke(app, ["video", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "o"), "--steps", "2", "--samples", "1"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich folds long lines
    assert "warning: the samples look unlike the input (self-check" in text
    assert f"above {pipeline.SELF_CHECK_WARN_VIDEO:g};" in text
    events = [json.loads(x) for x in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    (check,) = [e for e in events if e.get("event") == "self_check"]
    assert check["warn_above"] == pipeline.SELF_CHECK_WARN_VIDEO and check["score"] > pipeline.SELF_CHECK_WARN_VIDEO
    assert load_checkpoint(tmp_path / "o" / "model.pt", "video")["meta"]["self_check"] == check["score"]
