import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from coopsynth import networks
from coopsynth.networks import Descriptor, Generator, NetConfig, _upsampled_conv, pad
from tests.conftest import tiny_net

# bf16 keeps 8 bits of mantissa: two summation orders may round a value one step apart (2^-8)
BF16_RTOL, BF16_ATOL = 2**-7, 2**-7


@pytest.mark.parametrize("size", [(32, 32), (40, 24), (64, 48), (17, 23)])
def test_descriptor_energy_shape_2d(size):
    d = Descriptor(NetConfig())
    assert d(torch.randn(3, 3, *size)).shape == (3,)


@pytest.mark.parametrize("size", [(4, 5), (5, 3), (8, 8)])
@pytest.mark.parametrize("upsample", ["nearest", "linear"])
def test_generator_shape_2d(size, upsample):
    cfg = NetConfig(g_upsample=upsample)
    g = Generator(cfg)
    y = g(torch.randn(2, cfg.z_channels, *size))
    assert y.shape == (2, 3, size[0] * 8, size[1] * 8)
    assert g.latent_shape((size[0] * 8 - 3, size[1] * 8)) == (cfg.z_channels, *size)


def test_shapes_3d():
    cfg = NetConfig(dims=3, channels=1)
    g, d = Generator(cfg), Descriptor(cfg)
    z = torch.randn(2, cfg.z_channels, 3, 4, 5)  # (B, zc, t, h, w)
    y = g(z)
    assert y.shape == (2, 1, 3 * cfg.up[0], 32, 40)  # (B, C, T, H, W)
    assert d(y).shape == (2,)


def test_grey_channel_count():
    cfg = NetConfig(channels=1)
    assert Generator(cfg)(torch.randn(1, cfg.z_channels, 2, 2)).shape[1] == 1


def test_energy_gradient_gradcheck_float64():
    torch.manual_seed(0)
    d = Descriptor(tiny_net()).double()
    y = torch.randn(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: d(v), (y,), eps=1e-6, atol=1e-5)


def test_energy_gradient_gradcheck_float64_3d_wrapped():
    torch.manual_seed(0)
    d = Descriptor(tiny_net(dims=3, channels=1)).double()
    y = torch.randn(1, 1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: d(v, (True, True, True)), (y,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("upsample", ["nearest", "linear"])
def test_wrapped_generator_is_translation_equivariant(upsample):
    """On a torus, rolling the latent by one cell rolls the image by one cell's pixels: tileable."""
    torch.manual_seed(0)
    cfg = tiny_net(g_upsample=upsample)
    g = Generator(cfg)
    z = torch.randn(1, cfg.z_channels, 5, 6)
    wrap = (True, True)
    a = g(torch.roll(z, shifts=(1, 2), dims=(2, 3)), wrap)
    b = torch.roll(g(z, wrap), shifts=(cfg.up[0], 2 * cfg.up[1]), dims=(2, 3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_wrapped_descriptor_is_translation_invariant():
    torch.manual_seed(0)
    d = Descriptor(tiny_net())
    y = torch.randn(1, 3, 16, 16)
    e1 = d(y, (True, True))
    e2 = d(torch.roll(y, shifts=(4, 8), dims=(2, 3)), (True, True))  # multiples of the total stride
    torch.testing.assert_close(e1, e2, atol=1e-4, rtol=1e-5)


def test_config_round_trip():
    cfg = NetConfig(dims=3, g_widths=(5, 4))
    assert NetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("latent_convs, upsample", [(0, "nearest"), (2, "nearest"), (0, "linear")])
@pytest.mark.parametrize("wrap", [(False, False), (True, True)])
def test_windowed_generator_equals_whole_pass(latent_convs, upsample, wrap):
    torch.manual_seed(0)
    cfg = NetConfig(g_widths=(8, 8, 8), z_channels=4, g_latent_convs=latent_convs, g_upsample=upsample)
    g = Generator(cfg)
    z = torch.randn(1, 4, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(g.windowed(z, 5, wrap), g(z, wrap), atol=1e-5, rtol=1e-5)


def test_windowed_generator_video_splits_space_only():
    torch.manual_seed(0)
    cfg = tiny_net(dims=3)
    g = Generator(cfg)
    z = torch.randn(1, cfg.z_channels, 2, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(g.windowed(z, 4, (True, False, False)), g(z, (True, False, False)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrap", [(False, False), (True, True), (True, False)])
def test_windowed_refinement_equals_whole_image_chain(wrap):
    """Langevin over 16-px windows (plus halo) gives the whole-image chain's result."""
    from coopsynth.model import CoopModel

    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.zeros(3), torch.ones(3))
    y = torch.randn(1, 3, 56, 72)
    kw = dict(steps=2, delta=0.5, sigma=3.0, noise=1.0, seed=11, wrap=wrap)
    whole = m.revise_windowed(y, window=4096, **kw)  # one window: the plain whole-image chain
    windowed = m.revise_windowed(y, window=16, **kw)
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=1e-5)
    assert not torch.equal(whole, y)


def test_whole_window_chain_matches_plain_langevin_with_same_noise():
    """The windowed sampler with one window is descriptor_langevin with block noise."""
    from coopsynth.langevin import block_noise, descriptor_langevin
    from coopsynth.model import CoopModel

    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.zeros(3), torch.ones(3))
    y = torch.randn(1, 3, 24, 32)
    a = m.revise_windowed(y, steps=3, delta=0.5, sigma=3.0, noise=0.7, seed=5)
    b = descriptor_langevin(
        m.descriptor,
        y,
        steps=3,
        delta=0.5,
        sigma=3.0,
        noise=0.7,
        noise_fn=lambda i: block_noise(y.shape, (slice(0, 24), slice(0, 32)), i, 5),
        bounds=m.bounds(y),
    )
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("wrap", [(False, False, False), (True, False, False), (True, True, True)])
def test_windowed_generator_over_time_equals_whole_pass(wrap):
    """Long videos: windows of 2 latent frames (and 3 cells in space) give the whole pass."""
    torch.manual_seed(0)
    cfg = tiny_net(dims=3)
    g = Generator(cfg)
    assert g.halo(0) == 3 and g.halo(-1) == 2  # time is up-sampled less, so its halo is wider
    z = torch.randn(1, cfg.z_channels, 7, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(g.windowed(z, 3, wrap, time_window=2), g(z, wrap), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrap", [(False, False, False), (True, False, False)])
def test_windowed_refinement_over_time_equals_whole_video_chain(wrap):
    """Langevin over windows of 4 frames (plus a halo in time) gives the whole-video chain."""
    from coopsynth.model import CoopModel

    torch.manual_seed(0)
    m = CoopModel(tiny_net(dims=3), torch.zeros(3), torch.ones(3))
    y = torch.randn(1, 3, 22, 12, 10)
    kw = dict(steps=2, delta=0.5, sigma=3.0, noise=1.0, seed=3, wrap=wrap)
    whole = m.revise_windowed(y, window=(None, None, None), **kw)
    windowed = m.revise_windowed(y, window=(4, None, None), **kw)
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=1e-5)
    assert not torch.equal(whole, y)


@pytest.mark.parametrize(
    "scale, wrap",
    [((2, 2), (False, False)), ((2, 2), (True, False)), ((2, 2, 2), (False, True, True)), ((1, 2, 2), (True, False, False))],
)
def test_upsampled_conv_equals_upsampling_then_the_conv(scale, wrap):
    """The generator block's conv(pad(up(h))) computed at h's resolution (the 3 taps folded onto 2
    per output phase): the same numbers, replicate and circular padding alike, odd sizes too."""
    torch.manual_seed(0)
    d = len(scale)
    conv = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(3, 5, 3).double()
    h = torch.randn(2, 3, *((4, 5, 7) if d == 3 else (5, 7)), dtype=torch.float64)
    want = conv(pad(F.interpolate(h, scale_factor=scale, mode="nearest"), (1,) * d, wrap))
    got = _upsampled_conv(conv, pad(h, (1,) * d, wrap), scale)
    assert got.shape == want.shape == (2, 5, *(n * s for n, s in zip(h.shape[2:], scale, strict=True)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "scale, wrap, channels_last",
    [
        ((2, 2), (False, True), False),
        ((2, 2), (False, True), True),
        ((2, 2), (True, False), "asked"),
        ((1, 2, 2), (True, False, False), False),
        ((2, 2, 2), (False,) * 3, False),
    ],
)
@pytest.mark.parametrize("own_backward", [True, False])
def test_upsampled_conv_gradients_float64(scale, wrap, channels_last, own_backward, monkeypatch):
    """Input and weight gradients of the folded form are those of up-sampling then the conv,
    whatever the memory layout of its input (the interleave is a strided view of the conv's
    output, built from that output's own strides); a channels-last input gives a channels-last
    output (how a CPU samples), and so does a contiguous one where the caller asks ("asked": how
    a CPU trains the last block); any other gives a contiguous one. The interleave's backward
    writes every cell of its gradient: fresh memory is NaN here, so a cell it misses shows. Its
    copies run in slabs of one row here (COPY_SLAB), so the slab seams are held to it too. A
    channels-last output gets the interleave's own backward where OWN_INTERLEAVE_BACKWARD says
    so, autograd's gradient of the view elsewhere: both are held to the plain form."""
    monkeypatch.setattr(networks, "COPY_SLAB", 1)
    monkeypatch.setattr(networks, "OWN_INTERLEAVE_BACKWARD", {"cpu"} if own_backward else set())
    empty_strided = torch.empty_strided
    monkeypatch.setattr(torch, "empty_strided", lambda *a, **k: empty_strided(*a, **k).fill_(math.nan))
    torch.manual_seed(0)
    d = len(scale)
    conv = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(2, 3, 3).double()
    h = torch.randn(1, 2, *((3, 3, 4) if d == 3 else (3, 4)), dtype=torch.float64, requires_grad=True)

    def folded_fn(h):
        hp = pad(h, (1,) * d, wrap)
        if channels_last is True:  # the conv's output, which the interleave reads, then is channels-last too
            hp = hp.contiguous(memory_format=torch.channels_last)
        return _upsampled_conv(conv, hp, scale, channels_last == "asked")

    folded = folded_fn(h)
    plain = conv(pad(F.interpolate(h, scale_factor=scale, mode="nearest"), (1,) * d, wrap))
    assert folded.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert channels_last != "asked" or not folded.is_contiguous()  # 1 x 3 x 6 x 8: the two layouts differ
    own = type(folded.grad_fn).__name__ == "_InterleaveChannelsLastBackward"
    assert own == (own_backward and bool(channels_last) and d == 2)
    for out_grads, want in zip(
        torch.autograd.grad(folded.pow(2).sum(), (h, conv.weight, conv.bias)),
        torch.autograd.grad(plain.pow(2).sum(), (h, conv.weight, conv.bias)),
        strict=True,
    ):
        torch.testing.assert_close(out_grads, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(folded_fn, (h,))


@pytest.mark.parametrize("ups", [[0, 1], [1, 2], [0, 1, 2], [2]])
def test_folded_weight_sums_the_taps_each_phase_reads(ups):
    """Phase 0 of an up-sampled axis reads taps (w0, w1 + w2), phase 1 (w0 + w1, w2); phases are
    laid out with the first up-sampled axis most significant; autocast leaves the sums in float32."""
    torch.manual_seed(0)
    w = torch.randn(2, 3, *(3,) * (2 if max(ups) < 2 else 3), dtype=torch.float64)
    want = []
    for phase in itertools.product((0, 1), repeat=len(ups)):
        k = w
        for a, p in zip(ups, phase, strict=True):
            w0, w1, w2 = k.unbind(2 + a)
            k = torch.stack((w0, w1 + w2) if p == 0 else (w0 + w1, w2), 2 + a)
        want.append(k)
    torch.testing.assert_close(networks.folded_weight(w, ups), torch.cat(want), rtol=0, atol=1e-14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert networks.folded_weight(w.float(), ups).dtype == torch.float32


@pytest.mark.parametrize(
    "scale, wrap, last",
    [
        ((2, 2), (False, False), False),
        ((2, 2), (True, False), False),
        ((2, 2, 2), (False, True, True), False),
        ((1, 2, 2), (True, False, False), False),
        ((2, 2, 2), (False, True, True), True),
        ((1, 2, 2), (True, False, False), True),
    ],
)
def test_linear_upsampled_conv_equals_interpolating_then_the_conv(scale, wrap, last):
    """A linear block's conv(pad(linear_up(h))) computed at h's resolution (3 taps blended per
    output phase, then a pixel shuffle): the same output and the same input, weight and bias
    gradients as the generator's plain form (_up pads before interpolating), replicate and
    circular padding alike, odd sizes, and an axis not up-sampled (videos' time). `last`: a
    channels-last-3d video input, interleaved channels-last-3d (video sampling on a CPU)."""
    torch.manual_seed(0)
    d = len(scale)
    g = Generator(NetConfig(dims=d, g_upsample="linear"))
    conv = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(3, 5, 3).double()
    h = torch.randn(2, 3, *((4, 5, 7) if d == 3 else (5, 7)), dtype=torch.float64)
    if last:
        h = h.contiguous(memory_format=torch.channels_last_3d)
    h.requires_grad_(True)

    def folded_fn(h):
        return networks._linear_upsampled_conv(conv, pad(h, (1,) * d, wrap), scale, last)

    folded = folded_fn(h)
    plain = conv(pad(g._up(h, scale, wrap), (1,) * d, wrap))
    assert folded.shape == plain.shape == (2, 5, *(n * s for n, s in zip(h.shape[2:], scale, strict=True)))
    assert folded.is_contiguous(memory_format=torch.channels_last_3d) == last and folded.is_contiguous() != last
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(
        torch.autograd.grad(folded.pow(2).sum(), (h, conv.weight, conv.bias)),
        torch.autograd.grad(plain.pow(2).sum(), (h, conv.weight, conv.bias)),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(folded_fn, (h.detach()[:1, ..., :3, :4].clone().requires_grad_(),))


@pytest.mark.parametrize("dims", [2, 3])
def test_generator_gives_the_same_samples_with_either_block_formulation(monkeypatch, dims):
    """SUBPIXEL_MIN only chooses how a block is computed (the folded form pays from 16x16 inputs
    on a CPU): forced on or off everywhere, the generator's output is the same."""
    torch.manual_seed(0)
    g = Generator(tiny_net(dims)).double()
    z = torch.randn(2, g.cfg.z_channels, *((2, 3, 4) if dims == 3 else (3, 4)), dtype=torch.float64)
    monkeypatch.setattr(networks, "SUBPIXEL_MIN", {"cpu": 0})
    folded = g(z)
    monkeypatch.setattr(networks, "SUBPIXEL_MIN", {})
    plain = g(z)
    torch.testing.assert_close(folded, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims", [2, 3])
def test_linear_generator_gives_the_same_samples_folded_or_not(monkeypatch, dims):
    """LINEAR_FOLD_MIN only chooses how a linear block is computed: forced on or off everywhere,
    the generator's output and its latent's gradient are the same."""
    torch.manual_seed(0)
    g = Generator(tiny_net(dims, g_upsample="linear")).double()
    z = torch.randn(2, g.cfg.z_channels, *((2, 3, 4) if dims == 3 else (3, 4)), dtype=torch.float64, requires_grad=True)
    calls = []
    real = networks._linear_upsampled_conv
    monkeypatch.setattr(networks, "_linear_upsampled_conv", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(networks, "LINEAR_FOLD_MIN", {"cpu": 0})
    folded = g(z)
    assert len(calls) == len(g.blocks)
    monkeypatch.setattr(networks, "LINEAR_FOLD_MIN", {})
    plain = g(z)
    assert len(calls) == len(g.blocks)
    torch.testing.assert_close(folded, plain, rtol=1e-10, atol=1e-10)
    (gf,), (gp,) = (torch.autograd.grad(y.pow(2).sum(), (z,)) for y in (folded, plain))
    torch.testing.assert_close(gf, gp, rtol=1e-10, atol=1e-10)


def test_cpu_sampling_runs_the_generator_channels_last_with_the_same_result(monkeypatch):
    """Image sampling on a CPU runs the generator channels-last (faster there, benchmarks/speed.py),
    window by window too, in fp32 and bf16: the same samples as the contiguous layout up to
    rounding, handed on contiguous (videos: test_cpu_video_sampling_runs_channels_last_3d_and_training_contiguous)."""
    from coopsynth import model as model_module
    from coopsynth.accel import Accel
    from coopsynth.model import CoopModel

    seen = []
    real = networks._upsampled_conv
    monkeypatch.setattr(
        networks,
        "_upsampled_conv",
        lambda c, hp, s, *a: seen.append(hp.is_contiguous(memory_format=torch.channels_last)) or real(c, hp, s, *a),
    )
    monkeypatch.setattr(networks, "SUBPIXEL_MIN", {"cpu": 0})
    monkeypatch.setattr(model_module, "WINDOW", 3)  # several windows with halos: slices of a channels-last Z
    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.2), torch.device("cpu"), Accel(precision="fp32"))
    z = m.latent(2, (28, 36))
    got = m.generate(z, (27, 33))
    assert seen and all(seen)  # every folded block read a channels-last input
    assert got.is_contiguous() and got.shape == (2, 3, 27, 33)
    seen.clear()
    monkeypatch.setattr(model_module, "SAMPLE_CHANNELS_LAST", set())
    want = m.generate(z, (27, 33))
    assert seen and not any(seen)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    m.accel = Accel(precision="bf16")
    seen.clear()
    want = m.generate(z, (27, 33))
    assert seen and not any(seen)
    monkeypatch.setattr(model_module, "SAMPLE_CHANNELS_LAST", {"cpu"})
    seen.clear()
    got = m.generate(z, (27, 33))
    assert seen and all(seen)  # bf16: channels-last too
    assert got.is_contiguous() and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=BF16_RTOL, atol=BF16_ATOL)


def test_cpu_generator_runs_its_output_conv_channels_last_with_the_same_numbers(monkeypatch):
    """On a CPU the last folded block writes channels-last, so the output conv runs channels-last
    (faster there, benchmarks/speed.py), in training too and in bf16: the same output and gradients
    as the contiguous layout; earlier blocks stay contiguous; `generate` hands on contiguous."""
    from coopsynth import model as model_module
    from coopsynth.accel import Accel
    from coopsynth.model import CoopModel

    monkeypatch.setattr(networks, "SUBPIXEL_MIN", {"cpu": 0})
    seen = []
    real = networks._upsampled_conv
    monkeypatch.setattr(networks, "_upsampled_conv", lambda c, hp, s, last=False: seen.append(last) or real(c, hp, s, last))
    torch.manual_seed(0)
    g = Generator(tiny_net())
    z = torch.randn(2, g.cfg.z_channels, 3, 4)
    target = torch.randn(2, 3, 12, 16)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        g.zero_grad(set_to_none=True)
        out = g(z)
        (out - target).pow(2).mean().backward()
        return out.detach(), [p.grad.clone() for p in g.parameters()]

    out, grads = run()
    assert seen == [False] * (len(g.blocks) - 1) + [True]
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", set())
    want, want_grads = run()
    assert want.is_contiguous()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", {"cpu"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = g(z)
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()  # bf16 too
        monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", set())
        want = g(z)
        assert want.is_contiguous()
    torch.testing.assert_close(got, want, rtol=BF16_RTOL, atol=BF16_ATOL)
    monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", {"cpu"})
    monkeypatch.setattr(model_module, "SAMPLE_CHANNELS_LAST", set())  # a contiguous Z: only the last block is channels-last
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.2), torch.device("cpu"), Accel(precision="fp32"))
    assert m.generate(m.latent(2, (12, 16)), (12, 16)).is_contiguous()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_proposes_with_every_block_channels_last_and_the_same_numbers(monkeypatch, precision):
    """model.TRAIN_CHANNELS_LAST: on a CPU `propose` lays Z out channels-last, so every folded block
    runs channels-last (its interleave's own backward too); the same proposal and generator
    gradients as the contiguous layout up to rounding, in fp32 and in bf16."""
    from coopsynth import model as model_module
    from coopsynth.accel import Accel
    from coopsynth.model import CoopModel

    monkeypatch.setattr(networks, "SUBPIXEL_MIN", {"cpu": 0})
    layouts = []
    real = networks._upsampled_conv

    def spy(c, hp, s, last=False):
        layouts.append(hp.is_contiguous(memory_format=torch.channels_last) and not hp.is_contiguous())
        return real(c, hp, s, last)

    monkeypatch.setattr(networks, "_upsampled_conv", spy)
    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.2), torch.device("cpu"), Accel(precision=precision))
    z = m.latent(2, (12, 16))
    target = torch.randn(2, 3, 12, 16)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        layouts.clear()
        m.generator.zero_grad(set_to_none=True)
        y = m.propose(z)
        (y - target).pow(2).mean().backward()
        return y.detach(), [p.grad.clone() for p in m.generator.parameters()]

    out, grads = run()
    assert layouts == [True] * len(m.generator.blocks)
    monkeypatch.setattr(model_module, "TRAIN_CHANNELS_LAST", set())
    want, want_grads = run()
    assert layouts == [False] * len(m.generator.blocks)
    if precision == "fp32":
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    else:  # bf16: each layout sums in its own order, then rounds to 8 bits of mantissa
        torch.testing.assert_close(out, want, rtol=BF16_RTOL, atol=BF16_ATOL)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=BF16_RTOL, atol=BF16_ATOL * a.abs().max().item())


def _video_model(precision: str):
    """The tiny linear-up-sampling video model on a CPU in `precision`, from seed 0."""
    from coopsynth.accel import Accel
    from coopsynth.model import CoopModel

    torch.manual_seed(0)
    cfg = tiny_net(dims=3, g_upsample="linear")
    return CoopModel(cfg, torch.full((3,), 0.5), torch.full((3,), 0.2), torch.device("cpu"), Accel(precision=precision))


def _spy_output_conv(monkeypatch) -> list[bool]:
    """A list that gets, for each generator output conv from now on, whether its input is contiguous."""
    seen = []
    real = networks._output_conv
    monkeypatch.setattr(networks, "_output_conv", lambda c, h: seen.append(h.is_contiguous()) or real(c, h))
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_video_sampling_runs_channels_last_3d_and_training_contiguous(monkeypatch, precision):
    """Video sampling on a CPU runs the generator channels-last-3d (model.SAMPLE_CHANNELS_LAST),
    whole, window by window over space and time, and looping: every block and the output conv
    read that layout, and the samples equal the contiguous layout's up to rounding, handed on
    contiguous in float32. Training keeps its other blocks contiguous (channels-last-3d training
    was faster but scored worse on the flame clip, model.TRAIN_CHANNELS_LAST); its last block
    writes channels-last-3d for the output conv (networks.OUTPUT_CHANNELS_LAST)."""
    from coopsynth import model as model_module

    m = _video_model(precision)
    monkeypatch.setattr(networks, "LINEAR_FOLD_MIN", {"cpu": 0})  # every block folded, the tiny windows' too
    seen = _spy_output_conv(monkeypatch)
    m.propose(m.latent(2, (4, 12, 16))).sum().backward()
    assert seen == [False]
    tol = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": BF16_RTOL, "atol": BF16_ATOL}
    z = m.latent(1, (9, 20, 28))
    for window, time_window, wrap in [(96, None, None), (3, None, (True, True, False)), (96, 2, (True, False, False))]:
        monkeypatch.setattr(model_module, "WINDOW", window)
        monkeypatch.setattr(model_module, "video_window_frames", lambda h, w, t=time_window: t * m.net.up[0] if t else 10**9)
        seen.clear()
        monkeypatch.setattr(model_module, "SAMPLE_CHANNELS_LAST", {"cpu"})
        monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", {"cpu"})
        got = m.generate(z, (9, 19, 27), wrap)
        assert seen and not any(seen)  # channels-last-3d, window by window too
        assert got.is_contiguous() and got.dtype == torch.float32 and got.shape == (1, 3, 9, 19, 27)
        seen.clear()
        monkeypatch.setattr(model_module, "SAMPLE_CHANNELS_LAST", set())
        monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", set())
        want = m.generate(z, (9, 19, 27), wrap)
        assert seen and all(seen)
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_video_training_runs_its_output_conv_channels_last_3d_with_the_same_numbers(monkeypatch, precision):
    """networks.OUTPUT_CHANNELS_LAST for videos: in training (a contiguous Z) the last folded block
    writes channels-last-3d, and the output conv reads that layout, split in float32
    (SPLIT_OUTPUT_CONV) and whole under bf16 autocast; the same proposal and generator gradients
    as the contiguous layout up to rounding."""
    monkeypatch.setattr(networks, "LINEAR_FOLD_MIN", {"cpu": 0})
    m = _video_model(precision)
    z = m.latent(2, (4, 12, 16))
    target = torch.randn(2, 3, 4, 12, 16)
    seen, splits = _spy_output_conv(monkeypatch), []
    real_split = networks._split_output_conv
    monkeypatch.setattr(networks, "_split_output_conv", lambda c, h: splits.append(1) or real_split(c, h))

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen.clear()
        splits.clear()
        m.generator.zero_grad(set_to_none=True)
        y = m.propose(z)
        (y - target).pow(2).mean().backward()
        return y.detach(), [p.grad.clone() for p in m.generator.parameters()]

    out, grads = run()
    assert seen == [False] and len(splits) == (precision == "fp32")
    monkeypatch.setattr(networks, "OUTPUT_CHANNELS_LAST", set())
    want, want_grads = run()
    assert seen == [True] and not splits  # contiguous: the conv itself
    if precision == "fp32":
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(out, want, rtol=BF16_RTOL, atol=BF16_ATOL)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=BF16_RTOL, atol=BF16_ATOL * a.abs().max().item())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_split_output_conv_equals_the_conv_with_its_gradients_float64(dims, bias):
    """_split_output_conv (the last kernel axis as output channels, then shifted sums) is the
    conv: value and gradients for input, weight and bias, in float64, for a non-square kernel."""
    torch.manual_seed(0)
    conv = (nn.Conv2d(5, 3, (3, 4), bias=bias) if dims == 2 else nn.Conv3d(5, 2, (2, 3, 4), bias=bias)).double()
    x = torch.randn(2, 5, *((6, 9) if dims == 2 else (4, 6, 9)), dtype=torch.float64, requires_grad=True)
    got = networks._split_output_conv(conv, x)
    want = conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    params = [x, *conv.parameters()]
    torch.testing.assert_close(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g), rtol=1e-12, atol=1e-12)
    small = x[:1, :, ..., :5].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: networks._split_output_conv(conv, v), (small,))


def test_output_conv_splits_float32_channels_last_3d_cpu_inputs_only(monkeypatch):
    """_output_conv picks the split form for a float32 channels-last-3d CPU input outside autocast;
    contiguous, 2-D, bf16 or autocast inputs run the conv itself, as does any input where
    SPLIT_OUTPUT_CONV leaves the device out."""
    calls = []
    monkeypatch.setattr(networks, "_split_output_conv", lambda c, x: calls.append(1) or c(x))
    conv3, conv2 = nn.Conv3d(4, 3, 3), nn.Conv2d(4, 3, 3)
    x = torch.randn(1, 4, 5, 6, 7)
    last = x.contiguous(memory_format=torch.channels_last_3d)
    cases = [
        (conv3, last, 1),
        (conv3, x, 0),
        (conv2, torch.randn(1, 4, 6, 7).contiguous(memory_format=torch.channels_last), 0),
        (nn.Conv3d(4, 3, 3).bfloat16(), last.bfloat16(), 0),
    ]
    for c, inp, splits in cases:
        calls.clear()
        networks._output_conv(c, inp)
        assert len(calls) == splits
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        networks._output_conv(conv3, last)
    assert not calls
    monkeypatch.setattr(networks, "SPLIT_OUTPUT_CONV", set())
    networks._output_conv(conv3, last)
    assert not calls


def test_generator_folds_its_up_sampling_on_a_cpu_only(monkeypatch):
    """The folded blocks measured faster on a CPU and slower on CUDA (benchmarks/RESULTS.md):
    off a CPU (here the meta device, which only computes shapes) the plain form runs."""
    calls = []
    real = networks._upsampled_conv
    monkeypatch.setattr(networks, "_upsampled_conv", lambda *a: calls.append(1) or real(*a))
    g = Generator(NetConfig())
    z = torch.randn(1, g.cfg.z_channels, 16, 16)
    assert g(z).shape == (1, 3, 128, 128) and len(calls) == len(g.blocks)  # 16x16 inputs up: every block folds
    calls.clear()
    assert g.to("meta")(z.to("meta")).shape == (1, 3, 128, 128) and not calls


@pytest.mark.parametrize("dims", [2, 3])
def test_sampling_reports_every_window_of_each_phase_and_the_samples_do_not_change(monkeypatch, dims):
    """CoopModel.sample's callback: for each sample, the generator's windows then the refinement's,
    each counted 1..windows; the same samples as without a callback."""
    from coopsynth import model as model_module
    from coopsynth.accel import Accel
    from coopsynth.model import CoopModel

    monkeypatch.setattr(model_module, "WINDOW", 3)  # latent cells: several generator windows
    monkeypatch.setattr(model_module, "REFINE_WINDOW", 16)  # pixels: several refinement windows
    monkeypatch.setattr(model_module, "VIDEO_WINDOW_VOXELS", 4 * 24 * 24)  # videos: several time windows
    torch.manual_seed(0)
    n = 1 if dims == 3 else 2
    m = CoopModel(tiny_net(dims), torch.full((3,), 0.5), torch.full((3,), 0.2), torch.device("cpu"), Accel(precision="fp32"))
    size = (16, 24, 24) if dims == 3 else (40, 36)
    lang = {"delta": 0.3, "sigma": 1.0, "noise": 0.1}
    seen = []
    a = m.sample(n, size, refine=2, langevin=lang, generator=torch.Generator().manual_seed(1), callback=seen.append)
    b = m.sample(n, size, refine=2, langevin=lang, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for i in range(n):
        for phase in ("generator", "refine"):
            got = [(s["done"], s["windows"]) for s in seen if s["sample"] == i and s["phase"] == phase]
            windows = got[0][1]
            assert windows > 1 and got == [(k, windows) for k in range(1, windows + 1)], (i, phase, got)
    order = [k for k, _ in itertools.groupby((s["sample"], s["phase"]) for s in seen)]
    assert order == [(i, p) for i in range(n) for p in ("generator", "refine")]
    assert {s["samples"] for s in seen} == {n}


def test_outputs_smaller_than_the_descriptors_smallest_input_are_crops_of_one_that_size():
    """With refinement, a 5x3 (or 1x1) texture is the top-left corner of the 8x8 sample drawn
    with the same seed (8: the descriptor's total stride, its smallest input); without, it is
    generated at its own size."""
    from coopsynth.model import CoopModel
    from coopsynth.trainer import preset

    cfg = preset("default")
    torch.manual_seed(0)
    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2))
    assert m.descriptor.stride(-1) == m.descriptor.stride(-2) == 8
    lang = cfg.langevin()

    def draw(size, refine=2):
        return m.sample(1, size, refine=refine, langevin=lang, generator=torch.Generator().manual_seed(3))

    whole = draw((8, 8))
    assert torch.equal(draw((5, 3)), whole[..., :5, :3])
    assert draw((1, 1)).shape == (1, 3, 1, 1)
    assert draw((5, 3), refine=0).shape == (1, 3, 5, 3)


def test_fold_matrices_are_moved_once_per_device_and_dtype():
    w64 = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    moved = networks._fold_like(networks.LINEAR_FOLD, w64)
    assert moved.dtype == torch.float64 and torch.equal(moved, networks.LINEAR_FOLD.double())
    assert networks._fold_like(networks.LINEAR_FOLD, w64) is moved  # cached, not copied again
    assert networks._fold_like(networks.LINEAR_FOLD, w64.float()) is networks.LINEAR_FOLD  # already there


@pytest.mark.parametrize("dims", [2, 3])
def test_pad_keeps_a_half_precision_input_in_its_dtype_under_autocast_without_autograd(dims):
    """CPU autocast pads border-replicating in float32 (a copy there and one back for the conv
    after it); without autograd (sampling) `pad` pads a bf16 input as it is, the same numbers.
    Under autograd it still pads in float32, where the gradient of a border cell sums."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *(5, 6, 7)[-dims:]).to(torch.bfloat16)
    amount, wrap = (1,) * dims, (True,) + (False,) * (dims - 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.pad(x, (1,) * 2 * dims, mode="replicate").dtype == torch.float32  # what autocast alone does
        with torch.no_grad():
            got = pad(x.clone().requires_grad_(True), amount, wrap)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.float(), pad(x.float(), amount, wrap))
        xb = x.clone().requires_grad_(True)
        trained = pad(xb, amount, wrap)
    assert trained.dtype == torch.float32 and torch.equal(trained, got.float())  # autocast's float32 pad


def _pad_by_modes(x: torch.Tensor, amount: tuple, wrap: tuple[bool, ...]) -> torch.Tensor:
    """The definition `pad` follows: F.pad's circular mode on the wrapped axes, then replicate."""
    n = len(amount)
    rep, circ = [0] * (2 * n), [0] * (2 * n)
    for i, (a, w) in enumerate(zip(amount, wrap, strict=True)):
        j = 2 * (n - 1 - i)
        (circ if w else rep)[j : j + 2] = a if isinstance(a, tuple) else (a, a)
    if any(circ):
        x = F.pad(x, circ, mode="circular")
    return F.pad(x, rep, mode="replicate") if any(rep) else x


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_pad_equals_circular_then_replicate_padding_and_keeps_the_layout(dims, layout):
    """`pad` replicates every border, then overwrites the wrapped axes' borders with the far side:
    the same values and gradient as F.pad's circular mode then its replicate mode, for every
    mix of wrapped axes, uneven and one-sided amounts, corners included, in the input's memory
    layout (F.pad's circular mode writes a contiguous tensor; the convolutions after a
    channels-last pad run faster)."""
    fmt = {"contiguous": torch.contiguous_format, "channels-last": (torch.channels_last, torch.channels_last_3d)[dims - 2]}[
        layout
    ]
    torch.manual_seed(0)
    x = torch.randn(2, 4, *(5, 6, 7)[-dims:], dtype=torch.float64).contiguous(memory_format=fmt)
    amounts = [(1,) * dims, ((1, 2),) * dims, ((0, 2),) + ((2, 0),) * (dims - 1), (0,) * (dims - 1) + (3,)]
    for wrap in itertools.product((False, True), repeat=dims):
        for amount in amounts:
            xg = x.clone().requires_grad_(True)
            got, want = pad(xg, amount, wrap), _pad_by_modes(xg, amount, wrap)
            assert torch.equal(got, want), (wrap, amount)
            assert got.is_contiguous(memory_format=fmt)
            g = torch.randn_like(want)
            torch.testing.assert_close(
                torch.autograd.grad(got, xg, g)[0], torch.autograd.grad(want, xg, g)[0], rtol=0, atol=1e-14
            )
    small = x[:1, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pad(t, ((1, 2),) * dims, (True,) * dims), (small,))
    with pytest.raises(ValueError, match="circular padding of 8 on an axis of 7"):
        pad(x, (0,) * (dims - 1) + (8,), (True,) * dims)
