import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coopsynth.cli import app
from coopsynth.completion import (
    SMOOTH_MISSING_FRAMES,
    _edge_sum,
    complete,
    default_refine,
    default_smooth,
    load_masked_image,
    parse_key_color,
    seam_fill,
)
from coopsynth.errors import CoopsynthError
from coopsynth.io import read_image, read_video, write_image, write_video
from coopsynth.model import CoopModel, smooth_over_time, time_smoothing_margin
from coopsynth.trainer import TrainConfig
from tests.conftest import texture_image, tiny_net

runner = CliRunner()


def quantised(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


def make_inputs(d, h=32, w=40):
    img = quantised(texture_image(h, w))
    missing = torch.zeros(h, w, dtype=torch.bool)
    missing[8:20, 10:26] = True
    import imageio.v3 as iio

    rgba = np.concatenate(
        [
            (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
            np.where(missing.numpy(), 0, 255).astype(np.uint8)[..., None],
        ],
        axis=2,
    )
    iio.imwrite(d / "alpha.png", rgba)
    write_image(d / "plain.png", img)
    write_image(d / "mask.png", missing[None].float())
    keyed = img.clone()
    keyed[:, missing] = torch.tensor([1.0, 0.0, 1.0])[:, None]
    write_image(d / "keyed.png", keyed)
    return img, missing


def test_a_16_bit_image_is_completed_at_16_bits_with_its_visible_pixels_exact(tmp_path, monkeypatch):
    """A colour 16-bit PNG (which Pillow alone reads at 8 bits) keeps every visible pixel's 16-bit
    value; the hole is filled."""
    monkeypatch.chdir(tmp_path)  # the model goes to coopsynth-out/in/
    img = (texture_image(32, 40) * 65535).round() / 65535  # 16-bit values
    write_image(tmp_path / "in.png", img, bits=16)
    missing = torch.zeros(32, 40, dtype=torch.bool)
    missing[8:20, 10:26] = True
    write_image(tmp_path / "mask.png", missing[None].float())
    args = ["complete", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "2", "--preset", "fast"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "done.png")])
    assert r.exit_code == 0, r.output
    src, done = read_image(tmp_path / "in.png"), read_image(tmp_path / "done.png")
    assert torch.equal(src, img)  # read back at 16 bits
    assert torch.equal(done[:, ~missing], src[:, ~missing])
    assert not torch.equal(done[:, missing], src[:, missing])
    assert len(torch.unique(done[:, missing])) > 256


def test_three_mask_conventions_parse_the_same_mask(tmp_path):
    _, missing = make_inputs(tmp_path)
    _, m_alpha, bits = load_masked_image(tmp_path / "alpha.png", None, None)
    _, m_file, _ = load_masked_image(tmp_path / "plain.png", tmp_path / "mask.png", None)
    _, m_key, _ = load_masked_image(tmp_path / "keyed.png", None, "255,0,255")
    assert bits == 8
    assert torch.equal(m_alpha, missing) and torch.equal(m_file, missing) and torch.equal(m_key, missing)


def test_visible_pixels_unchanged_by_recovery():
    torch.manual_seed(0)
    img = quantised(texture_image(32, 40))
    missing = torch.rand(32, 40) < 0.3
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    out = complete(model, img, missing, langevin=TrainConfig().langevin(), infer_steps=3, refine=3)
    assert torch.equal(out[:, ~missing], img[:, ~missing])
    assert not torch.equal(out[:, missing], img[:, missing])
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_complete_end_to_end_bit_identical_visible(tmp_path):
    img, missing = make_inputs(tmp_path)
    r = runner.invoke(
        app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "out"), "--steps", "2", "--samples", "2"]
    )
    assert r.exit_code == 0, r.output
    done = read_image(tmp_path / "out" / "completed.png")
    assert done.shape == img.shape
    assert torch.equal((done[:, ~missing] * 255).round(), (img[:, ~missing] * 255).round())
    assert (tmp_path / "out" / "completed_001.png").is_file()
    # and again with the trained model, without training
    r = runner.invoke(
        app,
        [
            "complete",
            str(tmp_path / "plain.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--model",
            str(tmp_path / "out" / "model.pt"),
            "-o",
            str(tmp_path / "out2"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "out2" / "model.pt").exists()


def test_harmonic_seam_reproduces_a_linear_ramp():
    """length = inf is the membrane fill: a linear function is harmonic, so a hole inside a ramp
    is filled with the ramp itself (float64: to the solver's tolerance)."""
    yy, xx = torch.meshgrid(torch.arange(20.0, dtype=torch.float64), torch.arange(24.0, dtype=torch.float64), indexing="ij")
    ramp = (0.3 * xx - 0.7 * yy + 2.0)[None, None].repeat(2, 3, 1, 1)  # (B, C, H, W)
    missing = torch.zeros(20, 24, dtype=torch.bool)
    missing[4:15, 5:19] = True
    holed = torch.where(missing, 0.0, ramp)
    out = seam_fill(holed, missing, math.inf, tol=1e-10)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ramp, atol=1e-7, rtol=0)


def test_screened_seam_solves_its_equation_and_fades_with_length():
    """On the missing entries (border ones included) (1/length^2) u - laplacian(u) = 0; the visible
    entries come back unchanged; a shorter length fades faster into a big hole."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 16, 20, generator=g, dtype=torch.float64)
    missing = torch.rand(16, 20, generator=g) < 0.5
    missing[:, :3] = True  # touches the border
    u = seam_fill(v, missing, 3.0, tol=1e-12)
    assert torch.equal(u[..., ~missing], v[..., ~missing])
    residual = (u / 9.0 + _edge_sum(u, 2))[..., missing]
    assert residual.abs().max() < 1e-8

    ones = torch.ones(1, 1, 33, 33)
    hole = torch.zeros(33, 33, dtype=torch.bool)
    hole[4:29, 4:29] = True
    centre = {n: float(seam_fill(ones, hole, n)[0, 0, 16, 16]) for n in (2.0, 8.0, math.inf)}
    assert 0 < centre[2.0] < 0.01 < centre[8.0] < 0.9 < centre[math.inf]
    edge = float(seam_fill(ones, hole, 2.0)[0, 0, 4, 16])  # one step inside the edge
    assert edge > 0.3


@pytest.mark.parametrize("shape", [(40, 48), (6, 20, 24)])
def test_the_seam_solved_on_the_holes_box_solves_the_whole_images_equation(shape):
    """Two small holes far inside a larger image (video): the solve runs on their bounding box,
    and the result still satisfies the screened equation on every missing entry of the whole
    image, with every visible entry unchanged."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 3, *shape, generator=g, dtype=torch.float64)
    missing = torch.zeros(shape, dtype=torch.bool)
    missing[..., 8:13, 9:15] = True
    missing[..., 20:24, 30:33] = True
    if len(shape) == 3:
        missing[:2] = False  # the first frames whole: the box is shorter in time too
    u = seam_fill(v, missing, 3.0, tol=1e-12)
    assert torch.equal(u[..., ~missing], v[..., ~missing])
    residual = (u / 9.0 + _edge_sum(u, len(shape)))[..., missing]
    assert residual.abs().max() < 1e-8
    assert torch.equal(seam_fill(v, torch.zeros(shape, dtype=torch.bool), 3.0), v)  # nothing missing


def test_seam_fills_a_missing_frame_between_its_neighbours():
    """Videos (B, C, T, H, W): the time axis has neighbours too; a whole missing frame between two
    constant frames becomes their mean with the harmonic fill."""
    v = torch.zeros(1, 3, 3, 6, 7, dtype=torch.float64)
    v[:, :, 0], v[:, :, 2] = 1.0, 3.0
    missing = torch.zeros(3, 6, 7, dtype=torch.bool)
    missing[1] = True
    out = seam_fill(v, missing, math.inf, tol=1e-12)
    torch.testing.assert_close(out[:, :, 1], torch.full_like(out[:, :, 1], 2.0), atol=1e-9, rtol=0)


def test_the_seam_closes_the_jump_at_the_holes_edge():
    """With the seam, g(Z) meets the visible pixels: the mean difference between a missing pixel
    on the hole's edge and its visible neighbour shrinks (an untrained generator misses them badly)."""
    torch.manual_seed(0)
    img = quantised(texture_image(32, 40))
    missing = torch.zeros(32, 40, dtype=torch.bool)
    missing[8:24, 10:30] = True
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    lv = TrainConfig().langevin()

    def jump(seam: float) -> float:
        out = complete(
            model, img, missing, langevin=lv, infer_steps=0, refine=0, seam=seam, generator=torch.Generator().manual_seed(1)
        )
        pairs = [(out[:, 8, 10:30], img[:, 7, 10:30]), (out[:, 23, 10:30], img[:, 24, 10:30])]
        pairs += [(out[:, 8:24, 10], img[:, 8:24, 9]), (out[:, 8:24, 29], img[:, 8:24, 30])]
        return float(torch.cat([(a - b).abs().flatten() for a, b in pairs]).mean())

    assert jump(8.0) < 0.5 * jump(0.0)
    with pytest.raises(CoopsynthError, match="--seam -1"):
        complete(model, img, missing, langevin=lv, seam=-1.0)


def test_default_refinement_revises_one_completion_not_a_mean(tmp_path, monkeypatch):
    """--refine unset: the training's L for one completion, none for --average N; a given --refine
    and --seam reach the recovery as given."""
    assert default_refine(6, 1) == 6 and default_refine(6, 8) == 0
    make_inputs(tmp_path)
    r = runner.invoke(app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "m"), "--steps", "1"])
    assert r.exit_code == 0, r.output
    seen = []

    def spy(model, data, missing, **kw):
        seen.append((kw["refine"], kw["average"], kw["seam"]))
        return data

    monkeypatch.setattr("coopsynth.completion.complete", spy)
    base = ["complete", str(tmp_path / "alpha.png"), "--model", str(tmp_path / "m" / "model.pt"), "--force"]
    for extra in ([], ["--average", "4"], ["--average", "4", "--refine", "2", "--seam", "0"]):
        r = runner.invoke(app, [*base, "-o", str(tmp_path / f"o{len(seen)}"), *extra])
        assert r.exit_code == 0, r.output
    assert seen == [(6, 1, 8.0), (0, 4, 8.0), (2, 4, 0.0)]


def test_average_is_the_mean_of_a_batch_of_completions():
    """--average N: the missing pixels are the mean of N completions drawn as one batch (checked
    with no inference and no refinement, where a completion is g(Z) with Z from the generator,
    seamed into the visible pixels); the visible pixels stay exact, and the mean varies less from
    seed to seed than one draw does."""
    torch.manual_seed(0)
    img = quantised(texture_image(32, 40))
    missing = torch.rand(32, 40) < 0.3
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    lv = TrainConfig().langevin()
    out = complete(
        model, img, missing, langevin=lv, infer_steps=0, refine=0, average=3, generator=torch.Generator().manual_seed(5)
    )
    z = model.latent(3, (32, 40), torch.Generator().manual_seed(5))
    y0 = model.generate(z, (32, 40))
    x = model.normalise(img)[None]
    y0 = y0 + seam_fill(torch.where(missing, 0.0, x - y0), missing)
    want = model.denormalise(y0).clamp(0, 1).mean(0)
    assert torch.allclose(out[:, missing], want[:, missing], atol=1e-6)
    assert torch.equal(out[:, ~missing], img[:, ~missing])

    def spread(n: int) -> float:
        a, b = (
            complete(
                model, img, missing, langevin=lv, infer_steps=3, refine=3, average=n, generator=torch.Generator().manual_seed(s)
            )
            for s in (1, 2)
        )
        return float((a - b)[:, missing].abs().mean())

    assert spread(8) < 0.6 * spread(1)
    with pytest.raises(CoopsynthError, match="--average 0"):
        complete(model, img, missing, langevin=lv, average=0)


def video_case(frames: int, gap: slice) -> tuple[torch.Tensor, torch.Tensor, CoopModel]:
    """A random 16x16 clip (C, T, H, W) with frames `gap` missing, and an untrained tiny 3-D model."""
    torch.manual_seed(0)
    clip = quantised(0.3 + 0.4 * torch.rand(3, frames, 16, 16))
    missing = torch.zeros(frames, 16, 16, dtype=torch.bool)
    missing[gap] = True
    return clip, missing, CoopModel(tiny_net(dims=3), clip.flatten(1).mean(1), clip.flatten(1).std(1))


def test_average_completes_videos_too():
    """--average on a video (C, T, H, W): missing frames are the mean of the batch (of g(Z) itself
    with the seam off), the rest exact."""
    clip, missing, model = video_case(8, slice(3, 5))
    lv = TrainConfig().langevin()
    out = complete(
        model, clip, missing, langevin=lv, infer_steps=0, refine=0, average=2, seam=0, generator=torch.Generator().manual_seed(3)
    )
    z = model.latent(2, (8, 16, 16), torch.Generator().manual_seed(3))
    want = model.denormalise(model.generate(z, (8, 16, 16))).clamp(0, 1).mean(0)  # (C, T, H, W)
    assert torch.allclose(out[:, 3:5], want[:, 3:5], atol=1e-6)
    assert torch.equal(out[:, :3], clip[:, :3]) and torch.equal(out[:, 5:], clip[:, 5:])


def test_smoothed_prior_completes_from_time_correlated_latents():
    """--smooth W on a video: Z = smooth_over_time(e) with e white noise of t + 2r latent frames (the
    inference runs on e); with no inference, refinement or seam the fill is g(Z) of exactly that
    Z. Images ignore the option; a negative width is refused."""
    clip, missing, model = video_case(16, slice(6, 11))
    lv = TrainConfig().langevin()
    kw = dict(langevin=lv, infer_steps=0, refine=0, seam=0, average=2)
    out = complete(model, clip, missing, smooth=1.5, generator=torch.Generator().manual_seed(4), **kw)
    shape = model.generator.latent_shape((16, 16, 16))  # (zc, t, h, w)
    r = time_smoothing_margin(1.5)
    e = torch.randn(2, shape[0], shape[1] + 2 * r, *shape[2:], generator=torch.Generator().manual_seed(4))
    want = model.denormalise(model.generate(smooth_over_time(e, 1.5), (16, 16, 16))).clamp(0, 1).mean(0)
    assert torch.allclose(out[:, 6:11], want[:, 6:11], atol=1e-6)
    plain = complete(model, clip, missing, smooth=0.0, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.allclose(out[:, 6:11], plain[:, 6:11], atol=1e-3)

    img = quantised(texture_image(32, 40))
    holes = torch.rand(32, 40) < 0.3
    image_model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    a, b = (
        complete(
            image_model, img, holes, langevin=lv, infer_steps=2, refine=1, smooth=w, generator=torch.Generator().manual_seed(1)
        )
        for w in (0.0, 2.0)
    )
    assert torch.equal(a, b)
    with pytest.raises(CoopsynthError, match="--smooth -1"):
        complete(model, clip, missing, langevin=lv, smooth=-1.0)


def test_a_steep_generator_cannot_throw_the_latent_to_nan(monkeypatch):
    """A collapsed model's generator can have a huge Jacobian: uncapped, the latent inference runs
    to NaN within steps (seen in a video completion run); the per-step drift cap keeps it finite.
    Without the cap the result is refused with one clear error, never written as NaN."""
    torch.manual_seed(0)
    img = quantised(texture_image(32, 40))
    missing = torch.rand(32, 40) < 0.3
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    with torch.no_grad():
        for p in model.generator.parameters():
            p.mul_(40.0)
    lv = TrainConfig().langevin()
    out = complete(model, img, missing, langevin=lv, infer_steps=30, refine=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and torch.equal(out[:, ~missing], img[:, ~missing])
    monkeypatch.setattr("coopsynth.completion.INFER_MAX_DRIFT", None)
    with pytest.raises(CoopsynthError, match="non-finite"):
        complete(model, img, missing, langevin=lv, infer_steps=30, refine=2, generator=torch.Generator().manual_seed(0))


def test_video_missing_frames_filled_rest_unchanged(tmp_path):
    g = torch.Generator().manual_seed(0)
    v = quantised(0.3 + 0.4 * torch.rand(3, 8, 16, 24, generator=g))
    write_video(tmp_path / "clip.mp4", v, fps=8.0)
    src, _ = read_video(tmp_path / "clip.mp4")
    r = runner.invoke(
        app, ["complete", str(tmp_path / "clip.mp4"), "--missing-frames", "3:5", "-o", str(tmp_path / "o"), "--steps", "2"]
    )
    assert r.exit_code == 0, r.output
    from coopsynth import pipeline

    job = pipeline.CompleteJob(tmp_path / "clip.mp4", tmp_path / "o2", missing_frames="3:5", model=tmp_path / "o" / "model.pt")
    kind, data, missing, _ = pipeline.load_completion_input(job)
    assert missing[3:5].all() and not missing[:3].any() and not missing[5:].any()
    model, blob = pipeline.load_model(job.model, "cpu")
    done = complete(model, data, missing, langevin=blob["config_obj"].langevin(), infer_steps=2, refine=2)
    assert torch.equal(done[:, :3], src[:, :3]) and torch.equal(done[:, 5:], src[:, 5:])
    assert not torch.equal(done[:, 3:5], src[:, 3:5])


def test_default_smoothing_for_a_mean_over_whole_missing_frames(tmp_path, monkeypatch):
    """--smooth unset: 4 latent frames for --average N over a video with whole frames missing,
    0 for one completion, for holes that leave every frame partly visible, and for images; a
    given --smooth reaches the recovery as given."""
    assert default_smooth(torch.ones(8, 8, dtype=torch.bool), 4) == 0.0  # an image (H, W)
    v = quantised(0.3 + 0.4 * torch.rand(3, 8, 16, 24, generator=torch.Generator().manual_seed(0)))
    write_video(tmp_path / "clip.mp4", v, fps=8.0)
    hole = torch.zeros(16, 24)
    hole[4:10, 6:14] = 1.0
    write_image(tmp_path / "hole.png", hole[None])
    train = ["complete", str(tmp_path / "clip.mp4"), "--missing-frames", "3:5", "-o", str(tmp_path / "m"), "--steps", "1"]
    r = runner.invoke(app, train)
    assert r.exit_code == 0, r.output
    seen = []

    def spy(model, data, missing, **kw):
        seen.append((kw["average"], kw["smooth"]))
        return data

    monkeypatch.setattr("coopsynth.completion.complete", spy)
    base = ["complete", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "m" / "model.pt"), "--force"]
    frames, blocks = ["--missing-frames", "3:5"], ["--mask", str(tmp_path / "hole.png")]
    for extra in (frames, [*frames, "--average", "2"], [*blocks, "--average", "2"], [*frames, "--average", "2", "--smooth", "0"]):
        r = runner.invoke(app, [*base, "-o", str(tmp_path / f"o{len(seen)}"), *extra])
        assert r.exit_code == 0, r.output
    assert seen == [(1, 0.0), (2, SMOOTH_MISSING_FRAMES), (2, 0.0), (2, 0.0)]


def test_key_colors_read_as_r_g_b_or_hex():
    assert parse_key_color("255,0,255") == parse_key_color("#ff00FF") == parse_key_color("FF00FF") == (255, 0, 255)
    assert parse_key_color(" 12, 34, 56") == parse_key_color("#0c2238") == (12, 34, 56)
    bad_ones = (
        ("#ff00f", "expected R,G,B"),
        ("#gg0000", "or hex such as #ff00ff"),
        ("-10000", "expected"),
        ("256,0,0", "must be 0-255"),
    )
    for bad, message in bad_ones:
        with pytest.raises(CoopsynthError, match=message):
            parse_key_color(bad)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "{d}/all.png"], "everything is masked"),
        (["--mask", "{d}/none.png"], "nothing is masked"),
        (["--mask", "{d}/text.png"], "not a readable image"),
        (["--mask", "{d}/small.png"], "the mask is 8x8 but the input is 40x32"),
        (["--key-color", "1,2"], "expected R,G,B"),
        ([], "no alpha channel"),
        (["--mask", "{d}/mask.png", "--samples", "0"], "--samples 0: must be at least 1"),
        (["--mask", "{d}/mask.png", "--average", "0"], "--average 0: must be at least 1"),
        (["--mask", "{d}/mask.png", "--refine", "-1"], "--refine -1: must be 0 or more"),
        (["--mask", "{d}/mask.png", "--seam", "-2"], "--seam -2: must be 0 or more"),
        (["--mask", "{d}/mask.png", "--smooth", "-1"], "--smooth -1: must be between 0 and 100"),
        (["--mask", "{d}/mask.png", "--smooth", "2"], "--smooth: only videos have motion to smooth, and"),
    ],
)
def test_completion_errors(tmp_path, extra, message):
    make_inputs(tmp_path)
    write_image(tmp_path / "all.png", torch.ones(1, 32, 40))
    write_image(tmp_path / "none.png", torch.zeros(1, 32, 40))
    write_image(tmp_path / "small.png", torch.ones(1, 8, 8))
    (tmp_path / "text.png").write_text("no")
    r = runner.invoke(
        app, ["complete", str(tmp_path / "plain.png"), *[a.format(d=tmp_path) for a in extra], "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 1, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_complete_into_a_file_name(tmp_path, monkeypatch):
    """-o fixed.png writes the completion there (visible pixels kept) and the model to the default
    folder; an existing file needs --force; the suffix must be an image's."""
    monkeypatch.chdir(tmp_path)
    img, missing = make_inputs(tmp_path)
    r = runner.invoke(app, ["complete", "alpha.png", "-o", "fixed.png", "--steps", "2"])
    assert r.exit_code == 0, r.output
    done = read_image(tmp_path / "fixed.png")
    assert torch.equal((done[:, ~missing] * 255).round(), (img[:, ~missing] * 255).round())
    assert (tmp_path / "coopsynth-out" / "alpha" / "model.pt").is_file() and "model: coopsynth-out" in r.output
    model = str(tmp_path / "coopsynth-out" / "alpha" / "model.pt")
    r = runner.invoke(app, ["complete", "alpha.png", "--model", model, "-o", "fixed.png"])
    assert r.exit_code == 1 and "fixed.png: already exists" in r.output
    r = runner.invoke(app, ["complete", "alpha.png", "--model", model, "-o", "alt.png", "--samples", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "alt_000.png").is_file() and (tmp_path / "alt_001.png").is_file()
    r = runner.invoke(app, ["complete", "alpha.png", "--model", model, "-o", "fixed.mp4"])
    assert r.exit_code == 1 and "writes images" in r.output and not (tmp_path / "fixed.mp4").exists()


def test_recovery_reports_each_inference_step_then_the_seam_and_refinement_and_keeps_its_result():
    torch.manual_seed(0)
    img = quantised(texture_image(32, 40))
    missing = torch.rand(32, 40) < 0.3
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=4, refine=2)
    seen = []
    a = complete(model, img, missing, generator=torch.Generator().manual_seed(1), callback=seen.append, **kw)
    b = complete(model, img, missing, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)
    assert [(s["phase"], s["done"], s["of"]) for s in seen] == [("infer", k, 4) for k in range(1, 5)] + [
        ("seam", 1, 1),
        ("refine", 1, 1),
    ]


def test_complete_reports_the_recovery_from_start_to_end(tmp_path):
    from coopsynth import pipeline

    make_inputs(tmp_path)
    r = runner.invoke(app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "m"), "--steps", "1"])
    assert r.exit_code == 0, r.output
    seen = []
    job = pipeline.CompleteJob(tmp_path / "alpha.png", tmp_path / "o", model=tmp_path / "m" / "model.pt", samples=2)
    pipeline.complete(job, on_recover=seen.append)
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [s["sample"] for s in seen] == sorted(s["sample"] for s in seen) and seen[-1]["sample"] == 2
    assert {s["phase"] for s in seen} == {"infer", "seam", "refine"}


@pytest.mark.parametrize("hw", [(40, 48), (37, 45)])
def test_windowed_likelihood_equals_one_pass_in_float64(hw):
    """The latent inference's likelihood and gradient over windows of 3 latent cells (plus the
    generator's halo) against autograd through one pass; a size not a multiple of the
    up-sampling crops the last windows."""
    from coopsynth.completion import windowed_likelihood
    from coopsynth.networks import Generator

    torch.manual_seed(0)
    net = Generator(tiny_net()).double().requires_grad_(False)
    z = torch.randn(2, *net.latent_shape(hw), dtype=torch.float64)
    target = torch.randn(2, 3, *hw, dtype=torch.float64)
    visible = (torch.rand(1, 1, *hw) > 0.3).double()
    zz = z.clone().requires_grad_(True)
    r = (target - net(zz)[..., : hw[0], : hw[1]]) * visible
    want = -(r * r).flatten(1).sum(1) / (2 * 0.7**2)
    (want_grad,) = torch.autograd.grad(want.sum(), zz)
    channels_last = lambda zw: zw.contiguous(memory_format=torch.channels_last)  # noqa: E731
    for layout in (None, channels_last):  # CoopModel.graph_layout's, on a CPU
        ll, grad = windowed_likelihood(net, target, visible, 0.7, 3, layout)(z)
        torch.testing.assert_close(ll, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-10)


def test_latent_inference_runs_the_generator_channels_last_on_a_cpu_with_the_same_completion(monkeypatch):
    """Completion's latent inference passes Z through CoopModel.graph_layout, as training does:
    on a CPU an image's generator runs channels-last (1.22x faster for a 1024x1024 completion,
    ad-hoc), whole or window by window; the completion equals the contiguous layout's up to
    rounding."""
    import coopsynth.completion as completion_module
    from coopsynth import model as model_module
    from coopsynth.networks import channels_innermost

    torch.manual_seed(0)
    img = quantised(texture_image(48, 56))
    missing = torch.zeros(48, 56, dtype=torch.bool)
    missing[10:30, 12:40] = True
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    seen = []
    real = model.generator.forward
    monkeypatch.setattr(model.generator, "forward", lambda z, wrap=None: seen.append(channels_innermost(z)) or real(z, wrap))

    def run(window: int) -> torch.Tensor:
        seen.clear()
        monkeypatch.setattr(completion_module, "INFER_WINDOW", window)
        kw = dict(langevin=TrainConfig().langevin(), infer_steps=3, refine=0, generator=torch.Generator().manual_seed(1))
        return complete(model, img, missing, **kw)

    for window in (64, 3):  # one pass; windows of 3 latent cells
        got = run(window)
        assert len(seen) > 1 and all(seen)  # the inference's passes, then generate's (SAMPLE_CHANNELS_LAST)
        monkeypatch.setattr(model_module, "TRAIN_CHANNELS_LAST", set())
        want = run(window)
        assert len(seen) > 1 and not any(seen[:-1]) and seen[-1]  # only generate's pass channels-last
        monkeypatch.setattr(model_module, "TRAIN_CHANNELS_LAST", {"cpu"})
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_large_images_infer_the_latent_window_by_window_with_the_same_chain(monkeypatch):
    """The latent inference through windowed_likelihood follows the autograd chain (same noise)
    up to float rounding; complete() takes it for an image wider than INFER_WINDOW latent cells."""
    import coopsynth.completion as completion_module
    from coopsynth.completion import INFER_MAX_DRIFT, windowed_likelihood
    from coopsynth.langevin import generator_posterior_langevin

    torch.manual_seed(0)
    img = quantised(texture_image(48, 56))
    missing = torch.zeros(48, 56, dtype=torch.bool)
    missing[10:30, 12:40] = True
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))
    net = model.generator.requires_grad_(False)
    target = model.normalise(img)[None]
    visible = (~missing)[None, None].float()
    z0 = model.latent(2, (48, 56), torch.Generator().manual_seed(1))
    kw = dict(target=target, steps=10, delta=0.3, s=1.0, mask=visible, max_drift=INFER_MAX_DRIFT)
    whole = generator_posterior_langevin(lambda z: net(z)[..., :48, :56], z0, generator=torch.Generator().manual_seed(2), **kw)
    lik = windowed_likelihood(net, target, visible, 1.0, 3)  # windows of 3 latent cells
    windowed = generator_posterior_langevin(None, z0, likelihood_grad=lik, generator=torch.Generator().manual_seed(2), **kw)
    assert (whole - z0).abs().max() > 0.1  # the chain moved
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-4)
    calls = []
    real = completion_module.windowed_likelihood
    monkeypatch.setattr(completion_module, "INFER_WINDOW", 3)
    monkeypatch.setattr(completion_module, "windowed_likelihood", lambda *a, **k: calls.append(1) or real(*a, **k))
    complete(model, img, missing, langevin=TrainConfig().langevin(), infer_steps=2, refine=0)
    assert calls, "complete() did not take the windowed form"


def test_a_completion_bigger_than_the_free_memory_is_refused_before_training(tmp_path, monkeypatch):
    import coopsynth.completion as completion_module

    make_inputs(tmp_path)
    monkeypatch.setattr(completion_module, "memory_available", lambda: 2**20)  # 1 MiB free
    r = runner.invoke(app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "o"), "--average", "2"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    want = "alpha.png: completing a 40x32 image with --average 2 needs about 0.0 GiB of memory and this machine has 0.0 GiB"
    assert want in r.output
    assert "complete far-apart holes one at a time, or crop the image" in r.output and not (tmp_path / "o").exists()
    monkeypatch.setattr(completion_module, "memory_available", lambda: None)  # unknown: no check
    r = runner.invoke(app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "o"), "--steps", "1"])
    assert r.exit_code == 0, r.output


def test_memory_estimates_grow_with_the_input_and_stay_bounded_per_pixel_for_large_images():
    from coopsynth.completion import memory_needed

    assert memory_needed((1024, 1024)) < memory_needed((1024, 1024), average=4)
    assert memory_needed((4096, 4096)) / 4096**2 < memory_needed((1024, 1024)) / 1024**2  # windowed beyond 1024 px
    assert memory_needed((250, 1080, 1920)) > 100 * 2**30  # a full-HD clip of 10 s: refused on any ordinary machine


def region_case(h: int = 96, w: int = 112) -> tuple[torch.Tensor, torch.Tensor, CoopModel]:
    torch.manual_seed(0)
    img = quantised(texture_image(h, w))
    missing = torch.zeros(h, w, dtype=torch.bool)
    missing[42:50, 50:61] = True
    return img, missing, CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1))


def test_the_region_is_the_holes_box_widened_by_the_networks_reach_and_the_context():
    from coopsynth.completion import region

    _, missing, model = region_case()
    margin = model.descriptor.reach() + model.generator.halo() * 4 + 5  # tiny_net: reach 9, halo 2 cells of 4 px
    rows, cols = region(model.net, missing, 5)
    for got, (first, last), n in ((rows, (42, 49), 96), (cols, (50, 60), 112)):
        assert got.start % 4 == 0 and first - margin - 3 <= got.start <= first - margin  # on the stride grid
        assert got.stop == min(n, last + 1 + margin)
    assert region(model.net, missing, None) == (slice(0, 96), slice(0, 112))
    corner = torch.zeros(96, 112, dtype=torch.bool)
    corner[0, 111] = True
    assert region(model.net, corner, 5) == (slice(0, margin + 1), slice(108 - margin // 4 * 4, 112))
    with pytest.raises(CoopsynthError, match="--context -1: must be 0 or more"):
        region(model.net, missing, -1)


@pytest.mark.parametrize("context", [0, 3])
def test_refining_the_region_alone_is_refining_the_whole_image_at_the_missing_pixels(context):
    """Without noise the descriptor's Langevin is deterministic: the missing pixels refined inside
    the region (visible pixels beyond it unseen) equal those refined in the whole image."""
    from coopsynth.completion import region

    img, missing, model = region_case()
    y = model.normalise(img)[None] + 0.3 * torch.randn(1, 3, 96, 112)  # (1, C, H, W)
    known, mask = model.normalise(img)[None], (~missing).expand(1, 3, 96, 112)
    lv = dict(TrainConfig().langevin(), noise=0.0)
    whole = model.revise(y, steps=4, known=known, known_mask=mask, **lv)
    box = (slice(None), slice(None), *region(model.net, missing, context))
    part = model.revise(y[box], steps=4, known=known[box], known_mask=mask[box], **lv)
    assert (whole - y)[:, :, missing].abs().max() > 1e-2  # the refinement moved the missing pixels
    torch.testing.assert_close(part[:, :, missing[box[2:]]], whole[:, :, missing], rtol=1e-5, atol=1e-5)


def test_visible_pixels_beyond_the_region_do_not_change_the_completion():
    from coopsynth.completion import region

    img, missing, model = region_case()
    with torch.no_grad():  # an untrained tiny generator barely follows Z: give it the gain a trained one has
        for p in model.generator.parameters():
            p.mul_(2.0)
    rows, cols = region(model.net, missing, 4)
    far = img.clone()
    far[:, rows.stop :] = 1 - far[:, rows.stop :]  # every visible pixel below the region
    far[:, :, : cols.start] = 0.5  # and left of it
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=3, infer_delta=0.5, refine=3, context=4)
    a = complete(model, img, missing, generator=torch.Generator().manual_seed(0), **kw)
    b = complete(model, far, missing, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a[:, missing], b[:, missing])
    assert torch.equal(b[:, ~missing], far[:, ~missing]) and a.shape == img.shape
    kw["context"] = None  # the whole image: the far pixels pull on the latent inference
    a = complete(model, img, missing, generator=torch.Generator().manual_seed(0), **kw)
    b = complete(model, far, missing, generator=torch.Generator().manual_seed(0), **kw)
    assert (a - b)[:, missing].abs().max() > 1e-3


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "--context 'abc': expected a number of pixels, such as 64, or 'all'"), ("-3", "--context -3: must be 0 or more")],
)
def test_a_bad_context_is_refused_before_training(tmp_path, value, message):
    make_inputs(tmp_path)
    r = runner.invoke(app, ["complete", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "o"), "--context", value])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output and not (tmp_path / "o").exists()


def test_the_memory_check_counts_the_region_not_the_whole_image(tmp_path, monkeypatch):
    import coopsynth.completion as completion_module

    img = quantised(texture_image(64, 320))
    missing = torch.zeros(64, 320, dtype=torch.bool)
    missing[20:28, 20:28] = True
    write_image(tmp_path / "wide.png", img)
    write_image(tmp_path / "mask.png", missing[None].float())
    # room for the default networks' region at --context 0 (64x72 pixels), not for the whole 64x320
    have = completion_module.memory_needed((64, 100))
    monkeypatch.setattr(completion_module, "memory_available", lambda: have)
    args = ["complete", str(tmp_path / "wide.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "1"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "all"), "--context", "all"])
    assert r.exit_code == 1 and "completing a 320x64 image needs about" in r.output, r.output
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "wide"), "--context", "200"])
    region = re.search(r"completing the (\d+)x64 pixels around the missing ones needs", r.output)
    assert r.exit_code == 1 and region and 208 < int(region[1]) < 320, r.output  # the hole, 200 px each side, a halo
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "near"), "--context", "0"])
    assert r.exit_code == 0, r.output
    done = read_image(tmp_path / "near" / "completed.png")
    assert torch.equal((done[:, ~missing] * 255).round(), (img[:, ~missing] * 255).round())


def test_a_video_completes_the_frames_around_its_gap_alone():
    """Videos: the region spans the missing frames plus the reach and context in frames (and the
    time smoothing's reach); the refinement of the missing frames is the whole clip's, and frames
    beyond the region are never read."""
    from coopsynth.completion import region

    clip, missing, model = video_case(48, slice(20, 24))
    t, _, _ = region(model.net, missing, 2)  # tiny 3-D nets: reach 6 frames, halo 3 latent frames of 2
    assert (t.start, t.stop) == (20 - 14, 24 + 14)  # 6 + 3 * 2 + 2 frames each side
    t_smooth, _, _ = region(model.net, missing, 2, smooth=1.0)
    assert (t_smooth.start, t_smooth.stop) == (0, 24 + 14 + 6)  # 3 latent frames of 2 more each side
    far = clip.clone()
    far[:, : t.start] = 1 - far[:, : t.start]
    far[:, t.stop :] = 0.5
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=2, refine=2, context=2)
    a = complete(model, clip, missing, generator=torch.Generator().manual_seed(0), **kw)
    b = complete(model, far, missing, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a[:, 20:24], b[:, 20:24]) and not torch.equal(a[:, 20:24], clip[:, 20:24])
    assert torch.equal(b[:, :20], far[:, :20]) and torch.equal(b[:, 24:], far[:, 24:])


def test_far_apart_holes_get_a_region_each_and_near_ones_share_one():
    from coopsynth.completion import _margins, region, regions

    _, _, model = region_case()
    (m, g), _ = _margins(model.net, 2, 4, 0.0)  # tiny_net: 9 + 2 * 4 + 4 = 21 px, on a 4 px grid
    for gap, parts in ((2 * m + g, 2), (2 * m + g - 1, 1)):
        missing = torch.zeros(200, 64, dtype=torch.bool)
        missing[10:14, 30:34] = True
        missing[13 + gap, 40] = True  # the next missing row, `gap` rows below the first hole's last
        boxes = regions(model.net, missing, 4)
        assert len(boxes) == parts
        if parts == 2:
            a, b = boxes
            assert a[0].stop <= b[0].start  # the regions do not overlap
            alone = missing.clone()
            alone[20:] = False
            assert a == region(model.net, alone, 4) and int(missing[b].sum()) == 1
        else:
            assert boxes == [region(model.net, missing, 4)]
    grid = torch.zeros(200, 200, dtype=torch.bool)
    grid[20:24, 20:24] = grid[20:24, 150:154] = grid[150:154, 20:24] = True  # an L of three holes
    boxes = regions(model.net, grid, 4)
    assert len(boxes) == 3 and sum(int(grid[b].sum()) for b in boxes) == int(grid.sum())
    assert regions(model.net, grid, None) == [(slice(0, 200), slice(0, 200))]


def test_two_far_apart_holes_are_completed_region_by_region():
    img, _, model = region_case(96, 160)
    missing = torch.zeros(96, 160, dtype=torch.bool)
    missing[40:46, 10:16] = True
    missing[40:46, 140:146] = True
    first = missing.clone()
    first[:, 80:] = False
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=2, refine=2, context=4)
    seen = []
    both = complete(model, img, missing, generator=torch.Generator().manual_seed(0), callback=seen.append, **kw)
    alone = complete(model, img, first, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(both[:, first], alone[:, first])  # the first region drew first, from the same seed
    assert not torch.equal(both[:, missing & ~first], img[:, missing & ~first])
    assert torch.equal(both[:, ~missing], img[:, ~missing])
    assert [(s["part"], s["parts"]) for s in seen if s["phase"] == "refine"] == [(1, 2), (2, 2)]


def test_the_memory_check_takes_the_largest_region(tmp_path, monkeypatch):
    import coopsynth.completion as completion_module

    img = quantised(texture_image(64, 320))
    missing = torch.zeros(64, 320, dtype=torch.bool)
    missing[20:28, 20:28] = missing[20:28, 290:298] = True
    write_image(tmp_path / "two.png", img)
    write_image(tmp_path / "mask.png", missing[None].float())
    # the default networks at --context 0: regions of 73 and 80 columns, where one box would span all 320
    monkeypatch.setattr(completion_module, "memory_available", lambda: completion_module.memory_needed((64, 80)))
    args = ["complete", str(tmp_path / "two.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "1", "--context"]
    r = runner.invoke(app, [*args, "0", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "100", "-o", str(tmp_path / "b")])  # too wide to split: one 320x64 box
    assert r.exit_code == 1 and "completing a 320x64 image needs about" in r.output, r.output
    from coopsynth import pipeline

    seen = []  # the recovery's progress runs region by region within each sample, start to end
    job = pipeline.CompleteJob(
        tmp_path / "two.png", tmp_path / "c", mask=tmp_path / "mask.png", model=tmp_path / "a" / "model.pt"
    )
    job.samples, job.context = 2, 0
    pipeline.complete(job, on_recover=seen.append)
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [(s["sample"], s["part"], s["parts"]) for s in seen if s["phase"] == "refine"] == [
        (1, 1, 2),
        (1, 2, 2),
        (2, 1, 2),
        (2, 2, 2),
    ]
    first = 73 / (73 + 80)  # the parts' shares of the work: their regions' sizes, 64x73 and 64x80
    ends = [s["fraction"] for s in seen if s["phase"] == "refine"]
    assert ends == pytest.approx([first / 2, 1 / 2, (1 + first) / 2, 1.0])


def test_a_long_video_completes_in_time_windows_each_continuing_the_last(monkeypatch):
    """A region over VIDEO_VOXELS keeps as many visible frames around the gap as fit (at least the
    overlap) and goes in windows sharing `overlap` frames: the first window's fill is what that
    window alone gives, and the next holds it as visible."""
    import coopsynth.completion as completion_module
    from coopsynth.completion import pieces

    clip, missing, model = video_case(48, slice(14, 34))  # tiny 3-D nets: overlap 6 + 3 * 2 = 12 frames
    monkeypatch.setattr(completion_module, "VIDEO_VOXELS", 30 * 16 * 16)  # windows of 30 frames
    assert [b[0] for b in pieces(model.net, missing, 2)] == [slice(2, 28), slice(16, 46)]  # the second fills 28-33
    assert [b[0] for b in pieces(model.net, missing[:, :8], 2)] == [slice(0, 48)]  # half the frame: it fits
    short = torch.zeros(48, 16, 16, dtype=torch.bool)
    short[20:24] = True
    assert [b[0] for b in pieces(model.net, short, 2)] == [slice(7, 37)]  # the gap and 13 frames each side: all that fit
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=2, refine=2, context=2)
    out = complete(model, clip, missing, generator=torch.Generator().manual_seed(0), **kw)
    alone = complete(model, clip[:, 2:28], missing[2:28], generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out[:, 14:28], alone[:, 12:26])  # the first window, held by the second
    assert not torch.equal(out[:, 28:34], clip[:, 28:34])  # the second filled the rest
    assert torch.equal(out[:, :14], clip[:, :14]) and torch.equal(out[:, 34:], clip[:, 34:])


@pytest.mark.parametrize("smooth", [0.0, 1.5])
def test_windowed_likelihood_of_a_video_equals_one_pass_in_float64(smooth):
    """Videos: windows over time and space (2 latent frames, 3 cells a side, plus the halo), and
    through the time smoothing's white noise, against autograd through one pass."""
    from coopsynth.completion import through_smoothing, windowed_likelihood
    from coopsynth.networks import Generator

    torch.manual_seed(0)
    net = Generator(tiny_net(dims=3)).double().requires_grad_(False)
    size = (11, 20, 22)  # not multiples of the up-sampling: the last windows overhang
    zc, t, h, w = net.latent_shape(size)
    r = time_smoothing_margin(smooth) if smooth else 0
    e = torch.randn(2, zc, t + 2 * r, h, w, dtype=torch.float64)
    target = torch.randn(2, 3, *size, dtype=torch.float64)
    visible = (torch.rand(1, 1, *size) > 0.3).double()
    fn = windowed_likelihood(net, target, visible, 0.7, (2, 3, 3))
    ll, grad = (through_smoothing(fn, smooth) if smooth else fn)(e)
    ee = e.clone().requires_grad_(True)
    z = smooth_over_time(ee, smooth) if smooth else ee
    res = (target - net(z)[..., : size[0], : size[1], : size[2]]) * visible
    want = -(res * res).flatten(1).sum(1) / (2 * 0.7**2)
    (want_grad,) = torch.autograd.grad(want.sum(), ee)
    torch.testing.assert_close(ll, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-10)


def test_a_large_video_infers_its_latent_window_by_window(monkeypatch):
    import coopsynth.completion as completion_module

    clip, missing, model = video_case(16, slice(6, 11))
    calls = []
    real = completion_module.windowed_likelihood
    monkeypatch.setattr(completion_module, "windowed_likelihood", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    kw = dict(langevin=TrainConfig().langevin(), infer_steps=2, refine=0, context=None)
    complete(model, clip, missing, smooth=1.0, **kw)
    assert not calls  # small enough for one pass
    monkeypatch.setattr(completion_module, "INFER_VOXELS", 2 * 16 * 16 * 2)  # tiny_net: 2 latent frames of 2
    out = complete(model, clip, missing, smooth=1.0, **kw)
    assert calls == [(2, 128, 128)] and torch.equal(out[:, :6], clip[:, :6])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_completion_by_regions_and_windows():
    """On CUDA: the windowed video likelihood equals one pass in float64, and an image with two
    far-apart holes completes region by region with the visible pixels untouched."""
    from coopsynth.completion import through_smoothing, windowed_likelihood
    from coopsynth.networks import Generator

    torch.manual_seed(0)
    net = Generator(tiny_net(dims=3)).double().cuda().requires_grad_(False)
    size = (11, 20, 22)
    zc, t, h, w = net.latent_shape(size)
    r = time_smoothing_margin(1.5)
    e = torch.randn(2, zc, t + 2 * r, h, w, dtype=torch.float64, device="cuda")
    target = torch.randn(2, 3, *size, dtype=torch.float64, device="cuda")
    visible = (torch.rand(1, 1, *size, device="cuda") > 0.3).double()
    ll, grad = through_smoothing(windowed_likelihood(net, target, visible, 0.7, (2, 3, 3)), 1.5)(e)
    ee = e.clone().requires_grad_(True)
    res = (target - net(smooth_over_time(ee, 1.5))[..., : size[0], : size[1], : size[2]]) * visible
    want = -(res * res).flatten(1).sum(1) / (2 * 0.7**2)
    (want_grad,) = torch.autograd.grad(want.sum(), ee)
    torch.testing.assert_close(ll, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-9)

    img = quantised(texture_image(96, 160))
    model = CoopModel(tiny_net(), img.flatten(1).mean(1), img.flatten(1).std(1), device="cuda")
    missing = torch.zeros(96, 160, dtype=torch.bool)
    missing[40:46, 10:16] = missing[40:46, 140:146] = True
    seen = []
    out = complete(
        model, img, missing, langevin=TrainConfig().langevin(), infer_steps=2, refine=2, context=4, callback=seen.append
    )
    assert out.device == img.device and torch.isfinite(out).all()
    assert torch.equal(out[:, ~missing], img[:, ~missing]) and not torch.equal(out[:, missing], img[:, missing])
    assert {s.get("parts") for s in seen} == {2}
