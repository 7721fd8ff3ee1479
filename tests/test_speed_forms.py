"""benchmarks/speed.py times the descriptor in other formulations that claim the same numbers:
hold them to it (float64, image and video networks, replicated and circular padding)."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coopsynth import networks
from coopsynth.networks import Descriptor, NetConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
speed = pytest.importorskip("speed")


@pytest.mark.parametrize(
    "shape, amount, wrap",
    [
        ((2, 3, 5, 6), (1, 1), (False, False)),
        ((2, 3, 5, 6), ((1, 2), (0, 3)), (False, True)),
        ((2, 2, 4, 5, 6), (1, (2, 1), 1), (True, False, False)),
    ],
)
def test_padding_by_copies_equals_networks_pad(shape, amount, wrap):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ref, out = networks.pad(x, amount, wrap), speed.pad_by_copies(x, amount, wrap)
    assert torch.equal(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    assert torch.autograd.gradcheck(lambda t: speed.pad_by_copies(t, amount, wrap), (x,))


def test_padding_by_copies_keeps_channels_last():
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = speed.pad_by_copies(x, (1, 2), (False, False))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, networks.pad(x, (1, 2), (False, False)))
    with pytest.raises(ValueError, match="nope"):
        with speed.descriptor_form("first16+nope"):
            pass


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("form", ["depth_all", "first16", "pad_copies", "first16+pad_copies"])
def test_descriptor_forms_give_the_same_energy_and_gradient(dims, form):
    torch.manual_seed(0)
    d = Descriptor(NetConfig(dims=dims, d_widths=(4, 6, 8))).double()
    y = torch.randn((2, 3, 16, 16) if dims == 2 else (2, 3, 4, 16, 16), dtype=torch.float64, requires_grad=True)
    for wrap in (None, (True,) * dims):
        e0 = d(y, wrap)
        (g0,) = torch.autograd.grad(e0.sum(), y)
        with speed.descriptor_form(form):
            e = d(y, wrap)
            (g,) = torch.autograd.grad(e.sum(), y)
        torch.testing.assert_close(e, e0)
        torch.testing.assert_close(g, g0)
    assert networks.pad is speed.networks_pad and networks._strided_conv is speed.networks_strided_conv  # put back


def test_threads_sets_the_count_and_restores_it_after_a_fault():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with speed.threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_thread_scaling_rows_come_from_the_timings(monkeypatch):
    """The table's arithmetic, from made-up timings (the timing itself is the benchmark's job):
    the revision twice as fast and the product 1.6x as fast on two threads."""
    from coopsynth.trainer import preset

    seen = []

    def fake_timeit_all(fns, device, repeat=10, min_time=0.1):
        for fn in fns.values():  # each call runs once, at its own thread count
            fn()
        seen.append(sorted(fns))
        return {"1 revise": 0.06, "2 revise": 0.03, "1 product": 0.16, "2 product": 0.1}

    monkeypatch.setattr(speed, "timeit_all", fake_timeit_all)
    monkeypatch.setattr(speed, "matmul", lambda device, precision: (lambda: None, 1.6e9))
    with speed.threads(2):
        lines = speed.thread_scaling([16], preset("fast"))
    assert seen == [["1 product", "1 revise", "2 product", "2 revise"]] * 2  # the 8 px row, then 16 px
    rows = [line.split(" | ") for line in lines if line.startswith("| 16 ")]
    assert [r[1] for r in rows] == ["1", "2"]
    assert rows[0][2] == "10.000" and rows[1][2] == "5.000"  # ms per step: 60 ms / 6 steps, 30 / 6
    assert rows[0][5] == "10" and rows[1][5] == "16"  # peak GFLOP/s: 1.6 GFLOP in 0.16 s and 0.1 s
    assert rows[1][7] == "2.00x" and rows[1][8].startswith("1.60x")


def test_thread_scaling_says_when_there_is_one_thread():
    from coopsynth.trainer import preset

    with speed.threads(1):
        lines = speed.thread_scaling([16], preset("fast"))
    assert lines[-1].startswith("This process has one thread")


def test_interleave_rows_time_each_form_with_its_setting_and_restore_it(monkeypatch):
    """Each row times autograd's gradient (the setting off) against the own backward (on), from
    made-up timings, and the setting is back to its default afterwards."""
    from coopsynth.trainer import preset

    seen = []

    def fake_timeit_all(fns, device, repeat=10, min_time=0.1):
        for name, fn in fns.items():
            fn()
            seen.append((name, set(networks.OWN_INTERLEAVE_BACKWARD)))
        return {"first": 0.02, "second": 0.01}

    monkeypatch.setattr(speed, "timeit_all", fake_timeit_all)
    default = set(networks.OWN_INTERLEAVE_BACKWARD)
    cfg = preset("fast")
    assert "not used" in speed.interleave_backward(torch.device("cpu"), [16], cfg)[0] and not seen  # linear: no interleave
    cfg = replace(cfg, net=replace(cfg.net, g_upsample="nearest"))
    lines = speed.interleave_backward(torch.device("cpu"), [16], cfg)
    assert networks.OWN_INTERLEAVE_BACKWARD == default == {"cpu"}
    assert seen == [("first", set()), ("second", {"cpu"})] * 2  # the generator pass, then an iteration
    rows = [line for line in lines if line.startswith("| ") and "px crop" in line]
    assert len(rows) == 2 and all(r.endswith("| 20 ms | 10 ms | 2.00x |") for r in rows)


@pytest.mark.parametrize(("mode", "knob"), [("nearest", "SUBPIXEL_MIN"), ("linear", "LINEAR_FOLD_MIN")])
def test_generator_form_rows_time_the_presets_mode_plain_then_folded_and_restore_it(monkeypatch, mode, knob):
    """The forms table times the preset's up-sampling mode with its folding off (plain) then on
    (its default threshold), from made-up timings; then the mode's price: nearest against linear,
    as the trainers' configs say. Both thresholds are back to their defaults afterwards."""
    from coopsynth.trainer import CoopTrainer, preset

    seen = []

    def fake_timeit_all(fns, device, repeat=10, min_time=0.1):
        for name, fn in fns.items():
            fn()
            seen.append((name, dict(getattr(networks, knob))))
            if getattr(fn, "__self__", None) is not None:  # a trainer's step: which mode it trains
                seen[-1] += (fn.__self__.cfg.net.g_upsample,)
        return {"first": 0.02, "second": 0.01}

    monkeypatch.setattr(speed, "timeit_all", fake_timeit_all)
    monkeypatch.setattr(CoopTrainer, "__init__", lambda self, data, cfg, **kw: setattr(self, "cfg", cfg))
    monkeypatch.setattr(CoopTrainer, "step", lambda self: None)
    monkeypatch.setattr(speed.CoopModel, "sample", lambda self, *a, **k: None)
    defaults = dict(networks.SUBPIXEL_MIN), dict(networks.LINEAR_FOLD_MIN)
    cfg = preset("fast")
    cfg = replace(cfg, net=replace(cfg.net, g_upsample=mode))
    lines = speed.generator_forms(torch.device("cpu"), [16], cfg)
    assert (dict(networks.SUBPIXEL_MIN), dict(networks.LINEAR_FOLD_MIN)) == defaults
    assert any(f"({mode}, the preset's)" in line for line in lines)
    assert [s[1] for s in seen[:6]] == [{"cpu": math.inf}, {"cpu": 256}] * 3  # an iteration, two 1024x1024 samples
    assert [s[2] for s in seen[6:]] == ["nearest", "linear"]  # the mode's price
    rows = [line for line in lines if line.startswith("| training iteration") or line.startswith("| 1024")]
    assert len(rows) == 4 and all(r.endswith("| 20 ms | 10 ms | 2.00x |") for r in rows)


def test_plain_update_equals_langevin_update():
    """The refinement table's peer computes the default's numbers (float64, per-channel bounds)."""
    from coopsynth.langevin import langevin_update

    g = torch.Generator().manual_seed(0)
    y, grad, draw = (torch.randn(1, 3, 4, 6, 5, generator=g, dtype=torch.float64) for _ in range(3))
    bounds = (torch.full((1, 3, 1, 1, 1), -1.2, dtype=torch.float64), torch.full((1, 3, 1, 1, 1), 0.9, dtype=torch.float64))
    kw = dict(half=0.6, sigma=1.7, scale=0.4)
    for d, b in ((draw, bounds), (None, None)):
        torch.testing.assert_close(speed.plain_update(y, grad, d, **kw, bounds=b), langevin_update(y, grad, d, **kw, bounds=b))


def test_refinement_rows_time_each_form_with_its_setting_and_restore_it(monkeypatch):
    """The refinement tables time the plain update then the default, and the noise on one thread
    then on all, each for an image and a video sample (made-up timings); the module's update and
    threshold are back to their defaults afterwards, even around a sample that fails."""
    import coopsynth.langevin as L
    from coopsynth.trainer import preset

    own = L.langevin_update, L.PARALLEL_NOISE_MIN
    seen = []

    def fake_sample(self, n, size, **kw):
        seen.append((len(size), L.langevin_update, L.PARALLEL_NOISE_MIN))
        if len(seen) == 1:
            raise RuntimeError("out of memory")

    def fake_timeit_all(fns, device, repeat=10, min_time=0.1):
        for fn in fns.values():
            try:
                fn()
            except RuntimeError:
                assert (L.langevin_update, L.PARALLEL_NOISE_MIN) == own
        return {"first": 0.02, "second": 0.01}

    monkeypatch.setattr(speed, "timeit_all", fake_timeit_all)
    monkeypatch.setattr(speed.CoopModel, "sample", fake_sample)
    monkeypatch.setattr(speed, "deconv_paddings", lambda *a: [])  # bf16 CPUs only: its own test
    monkeypatch.setattr(speed, "bias_forms", lambda *a: [])  # its own test
    lines = speed.refinement_forms(torch.device("cpu"), preset("fast"))
    assert (L.langevin_update, L.PARALLEL_NOISE_MIN) == own
    plain, fused, one = speed.plain_update, own[0], 2**62
    assert seen == [
        (2, plain, own[1]), (2, fused, own[1]), (3, plain, own[1]), (3, fused, own[1]),
        (2, fused, one), (2, fused, own[1]), (3, fused, one), (3, fused, own[1]),
    ]  # fmt: skip
    rows = [line for line in lines if line.startswith("| 1024") or line.startswith("| video")]
    assert len(rows) == 4 and all(r.endswith("| 20 ms | 10 ms | 2.00x |") for r in rows)


def _sampling_spy(monkeypatch, knob: str, seconds: tuple[float, float]) -> list[tuple]:
    """Fake timings (`seconds`: first and second) that run each form once, and a CoopModel.sample
    that records (the size's length, its first side, cpugrad's `knob` then, the packed shapes)."""
    from coopsynth import cpugrad

    seen = []

    def fake_sample(self, n, size, **kw):
        seen.append((len(size), size[0], getattr(cpugrad, knob), len(self._packed.cache)))

    def fake_timeit_all(fns, device, repeat=10, min_time=0.1):
        for fn in fns.values():
            fn()
        return dict(zip(("first", "second"), seconds, strict=True))

    monkeypatch.setattr(speed, "timeit_all", fake_timeit_all)
    monkeypatch.setattr(speed.CoopModel, "sample", fake_sample)
    return seen


def test_deconv_padding_rows_time_natural_then_picked_and_restore_it(monkeypatch):
    """Each row times the natural output padding (no layer timed) then the default threshold,
    packing afresh for every sample (made-up timings); the threshold is back afterwards."""
    from coopsynth import cpugrad
    from coopsynth.trainer import preset

    own = cpugrad.DECONV_TUNE_MIN
    seen = _sampling_spy(monkeypatch, "DECONV_TUNE_MIN", (0.03, 0.01))
    cfg = preset("fast")
    image = speed.CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2))
    image._packed.cache["stale"] = None
    lines = speed.deconv_paddings(image, cfg, "bf16")
    assert cpugrad.DECONV_TUNE_MIN == own
    assert seen == [(2, side, t, 0) for side in (512, 768, 1024, 2048) for t in (2**62, own)]
    rows = [line for line in lines if line.startswith("| ") and " sample, " in line]
    assert len(rows) == 4 and all(r.endswith("| 30 ms | 10 ms | 3.00x |") for r in rows)
    assert lines[-1].startswith("\nThe choices")


def test_bias_rows_time_the_separate_add_then_the_fused_bias_and_restore_it(monkeypatch):
    """Each row times every layer adding its read-out itself (no layer folds) then the default
    threshold, packing afresh for every sample (made-up timings); the threshold is back after."""
    from coopsynth import cpugrad
    from coopsynth.trainer import preset

    own = cpugrad.BIAS_FOLD_MIN
    seen = _sampling_spy(monkeypatch, "BIAS_FOLD_MIN", (0.02, 0.01))
    cfg = preset("fast")
    image = speed.CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2))
    video = speed.CoopModel(preset("fast", dims=3).net, torch.full((3,), 0.5), torch.full((3,), 0.2))
    image._packed.cache["stale"] = video._packed.cache["stale"] = None
    lines = speed.bias_forms([("an image", image, (64, 64)), ("a video", video, (8, 64, 64))], cfg)
    assert cpugrad.BIAS_FOLD_MIN == own
    assert seen == [(2, 64, 2**62, 0), (2, 64, own, 0), (3, 8, 2**62, 0), (3, 8, own, 0)]
    rows = [line for line in lines if line.startswith("| an image") or line.startswith("| a video")]
    assert len(rows) == 2 and all(r.endswith("| 20 ms | 10 ms | 2.00x |") for r in rows)


def test_output_conv_rows_time_each_form_and_restore_the_defaults(monkeypatch):
    """The outconv tables (speed.py --only outconv), on a tiny video preset: the first table times
    the contiguous output conv against the default (channels-last-3d, split), the second the
    channels-last-3d conv whole against split; the forms are what each row says (the split runs
    in the split column only), and the module's settings are back afterwards."""
    from coopsynth.trainer import TrainConfig
    from tests.conftest import tiny_net

    tiny = TrainConfig(net=tiny_net(dims=3, g_upsample="linear"), crop=16, crop_frames=4, batch=2, clip=3.0, sample_refine=0)
    monkeypatch.setattr(speed, "preset", lambda name, dims=2: tiny)
    monkeypatch.setattr(speed, "VIDEO_SAMPLE", (4, 16, 16))
    monkeypatch.setattr(networks, "LINEAR_FOLD_MIN", {"cpu": 0})  # the tiny last block folds, as the preset's does
    defaults = networks.OUTPUT_CHANNELS_LAST, networks.SPLIT_OUTPUT_CONV
    forms = []  # (input contiguous, split) per output conv
    real = networks._split_output_conv

    def spy(c, x):
        forms[-1] = (forms[-1][0], True)
        return real(c, x)

    real_out = networks._output_conv
    monkeypatch.setattr(networks, "_split_output_conv", spy)
    monkeypatch.setattr(networks, "_output_conv", lambda c, x: forms.append((x.is_contiguous(), False)) or real_out(c, x))
    lines = speed.output_conv_forms(torch.device("cpu"))
    assert (networks.OUTPUT_CHANNELS_LAST, networks.SPLIT_OUTPUT_CONV) == defaults
    rows = [line for line in lines if line.startswith(("| generator", "| training", "| video"))]
    assert len(rows) == 6 and not any("failed" in r for r in rows)
    assert set(forms) == {(True, False), (False, True), (False, False)}  # contiguous; channels-last-3d split; whole
