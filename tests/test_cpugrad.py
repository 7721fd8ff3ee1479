"""The closed-form CPU energy gradient (coopsynth.cpugrad) against autograd, its pieces, its cache
and its fall-backs."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from coopsynth import cpugrad
from coopsynth.accel import Accel
from coopsynth.cpugrad import PackedDescriptor, grad_agrees, unpad
from coopsynth.langevin import descriptor_langevin
from coopsynth.model import CoopModel
from coopsynth.networks import Descriptor, depth_to_space, pad, space_to_depth
from tests.conftest import tiny_net


def _kernels_run(dtype: torch.dtype = torch.float32) -> bool:
    """Does this PyTorch have the packed oneDNN kernels, and do they run here (in dtype)? Probed
    with the raw operators, not through cpugrad, so that a bug there fails the tests instead of
    skipping them."""
    if cpugrad.unsupported(Descriptor(tiny_net()), torch.zeros(1, 3, 8, 8), dtype) is not None:
        return False
    ops, z, one = torch.ops.mkldnn, [0, 0], [1, 1]
    x, w = torch.ones(1, 4, 6, 6, dtype=dtype), torch.ones(8, 4, 2, 2, dtype=dtype)
    try:
        h = ops._convolution_pointwise(
            x, ops._reorder_convolution_weight(w, z, one, one, 1, [1, 4, 6, 6]), None, z, one, one, 1, "none", [], ""
        )
        wt = ops._reorder_convolution_transpose_weight(w, z, z, one, one, 1, [1, 8, 5, 5])
        gx = ops._convolution_transpose_pointwise(h, wt, None, z, z, one, one, 1, "none", [], "")
    except Exception:
        return False
    return gx.shape == x.shape and bool((gx > 0).all())


needs_onednn = pytest.mark.skipif(not _kernels_run(), reason="no packed oneDNN kernels in this PyTorch")
needs_onednn_bf16 = pytest.mark.skipif(not _kernels_run(torch.bfloat16), reason="no bf16 units or packed bf16 kernels here")


def _descriptor(cfg, seed=0):
    torch.manual_seed(seed)
    d = Descriptor(cfg).requires_grad_(False)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.3)  # every read-out and bias non-trivial
    return d


def _reference(d: Descriptor, y: torch.Tensor, wrap):
    """f and df/dY by autograd in float64."""
    d64 = copy.deepcopy(d).double()
    y64 = y.double().requires_grad_(True)
    f = d64(y64, wrap)
    (g,) = torch.autograd.grad(f.sum(), y64)
    return f.detach(), g


CASES = [
    (tiny_net(2), (2, 3, 16, 12), None),
    (tiny_net(2), (2, 3, 16, 12), (True, True)),
    (tiny_net(2), (1, 3, 16, 12), (True, False)),
    (tiny_net(2), (1, 3, 15, 13), (False, True)),  # odd sizes: no space-to-depth, odd output padding
    (tiny_net(2, channels=1, d_kernels=(3, 5)), (3, 1, 12, 10), None),  # odd kernels, uneven padding
    (tiny_net(2, d_widths=(6, 8, 4), d_kernels=(4, 4, 4)), (1, 3, 16, 16), None),  # three layers
    (tiny_net(3), (2, 3, 6, 12, 8), None),  # videos: the time axis strided by 2 in the first layer
    (tiny_net(3), (1, 3, 5, 10, 8), (True, False, True)),
]


@needs_onednn
@pytest.mark.parametrize(("cfg", "shape", "wrap"), CASES)
def test_closed_form_matches_autograd_in_float64(cfg, shape, wrap):
    d = _descriptor(cfg)
    y = torch.randn(shape)
    f, g = PackedDescriptor(d, shape, wrap)(y)
    f_ref, g_ref = _reference(d, y, wrap)
    assert f.dtype == g.dtype == torch.float32 and g.shape == y.shape
    scale = g_ref.abs().max().item()
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(f.double(), f_ref, rtol=1e-4, atol=1e-5 * f_ref.abs().max().item())


def _autocast_reference(d: Descriptor, y: torch.Tensor, wrap):
    """f and df/dY by autograd under bf16 autocast (what `--precision bf16` ran before)."""
    y = y.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        f = d(y, wrap).float()
    (g,) = torch.autograd.grad(f.sum(), y)
    return f.detach(), g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@needs_onednn_bf16
@pytest.mark.parametrize(("cfg", "shape", "wrap"), CASES)
def test_closed_form_in_bf16_matches_autocast_autograd(cfg, shape, wrap):
    """In bf16 the closed form rounds like autocast does: both sit about 0.4-1.5% (in norm) from
    the float64 gradient on these cases, and within 0.4% of each other."""
    d = _descriptor(cfg)
    y = torch.randn(shape)
    f, g = PackedDescriptor(d, shape, wrap, torch.bfloat16)(y)
    assert f.dtype == g.dtype == torch.float32 and g.shape == y.shape  # returned in float32
    _, g_ac = _autocast_reference(d, y, wrap)
    f_64, g_64 = _reference(d, y, wrap)
    assert _rel(g, g_ac) < 0.01
    assert _rel(g, g_64) < 0.03 and _rel(g_ac, g_64) < 0.03
    assert _rel(g, g_64) > 1e-4  # it did compute in bf16, not float32
    assert _rel(f, f_64) < 0.02


@pytest.mark.parametrize("wrap", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("amount", [((1, 1), (1, 1)), ((1, 2), (0, 3)), ((2, 0), (1, 1))])
def test_unpad_is_the_adjoint_of_pad(wrap, amount):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    v = torch.randn(pad(x, amount, wrap).shape, generator=g, dtype=torch.float64)
    # <pad(x), v> == <x, unpad(v)> for every x and v
    torch.testing.assert_close((pad(x, amount, wrap) * v).sum(), (x * unpad(v.clone(), amount, wrap)).sum())


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 3, 4, 6)])
def test_depth_to_space_inverts_space_to_depth(shape):
    x = torch.randn(shape)
    s = space_to_depth(x)
    assert s.shape == (*shape[:1], 4 * shape[1], *shape[2:-2], shape[-2] // 2, shape[-1] // 2)
    torch.testing.assert_close(depth_to_space(s), x, rtol=0, atol=0)
    torch.testing.assert_close(s[:, 1], x[:, 0, ..., 0::2, 1::2])  # channel 4c + 2p + q: row phase p, column phase q


def _model(accel=None, seed=0):
    torch.manual_seed(seed)
    return CoopModel(tiny_net(2), torch.full((3,), 0.5), torch.full((3,), 0.2), accel=accel)


def _revise(m, y0, wrap=None, callback=None):
    g = torch.Generator().manual_seed(3)
    return m.revise(y0, steps=4, delta=0.3, sigma=1.0, noise=0.5, generator=g, wrap=wrap, callback=callback)


@needs_onednn
def test_model_revision_takes_the_closed_form_and_matches_autograd():
    m = _model()
    y0 = torch.randn(3, 3, 16, 16)
    for wrap in (None, (True, True)):
        out = _revise(m, y0, wrap)
        with m.using(replace(m.accel, closed_form=False)):
            ref = _revise(m, y0, wrap)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    energies, ref_energies = [], []  # a callback gets f from the closed form, as autograd's
    _revise(m, y0, callback=lambda info: energies.append(info["energy"]))
    with m.using(replace(m.accel, closed_form=False)):
        _revise(m, y0, callback=lambda info: ref_energies.append(info["energy"]))
    assert len(energies) == 4
    torch.testing.assert_close(torch.stack(energies), torch.stack(ref_energies), rtol=1e-4, atol=1e-4)
    assert m.accel.fallbacks == []
    assert len(m._packed.cache) == 2 and len(m._packed.checked) == 2  # both wraps ran in closed form


def test_closed_form_is_off_where_autograd_must_run(monkeypatch):
    y = torch.zeros(1, 3, 8, 8)
    assert _model(Accel(closed_form=False)).closed_form(y) is None
    assert _model(Accel(channels_last=True)).closed_form(y) is None
    monkeypatch.setattr(cpugrad, "cpu_has_bf16", lambda: False)  # bf16 emulated in software: autograd
    m = _model(Accel(precision="bf16"))
    assert m.closed_form(y) is None
    assert m.accel.fallbacks == ["closed-form CPU gradient not used: this CPU has no bfloat16 units"]


@needs_onednn_bf16
def test_bf16_revision_takes_the_bf16_closed_form():
    m = _model(Accel(precision="bf16"))
    y0 = torch.randn(3, 3, 16, 16)
    out = _revise(m, y0)
    with m.using(replace(m.accel, closed_form=False)):
        ref = _revise(m, y0)  # bf16 autocast through autograd
    assert m.accel.fallbacks == []
    assert list(m._packed.checked) == [((3, 3, 16, 16), (), torch.bfloat16)]
    assert _rel(out - y0, ref - y0) < 0.02  # the chains' moves agree to bf16 rounding


def test_bf16_gets_a_looser_agreement_bound():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 3, 32, 32, generator=g)
    off = ref + 0.03 * ref.norm() / ref.numel() ** 0.5 * torch.randn(ref.shape, generator=g)  # 3% in norm
    assert grad_agrees(off, ref, torch.bfloat16) and not grad_agrees(off, ref)
    assert not grad_agrees(1.2 * ref, ref, torch.bfloat16)


@needs_onednn
def test_cache_repacks_when_the_weights_change_by_any_route():
    m = _model()
    y = torch.randn(2, 3, 16, 16)
    m.closed_form(y)(y)
    layer = m.descriptor.layers[1]
    with torch.no_grad():
        layer.weight.data.mul_(-2)  # through .data: the version counter does not move
    f, g = m.closed_form(y)(y)
    f_ref, g_ref = _reference(m.descriptor, y, None)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    m.descriptor.load_state_dict(_model(seed=1).descriptor.state_dict())
    f, g = m.closed_form(y)(y)
    f_ref, g_ref = _reference(m.descriptor, y, None)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


@needs_onednn
def test_a_wrong_closed_form_is_caught_on_first_use_and_autograd_takes_over(monkeypatch):
    m = _model()
    y = torch.randn(2, 3, 16, 16)
    right = PackedDescriptor.__call__

    def wrong(self, x, want_f=True):
        f, g = right(self, x, want_f)
        return f, 1.5 * g

    monkeypatch.setattr(PackedDescriptor, "__call__", wrong)
    f, g = m.closed_form(y)(y)
    f_ref, g_ref = _reference(m.descriptor, y, None)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    assert m.accel.fallbacks == ["the closed-form CPU gradient disagreed with autograd"]
    monkeypatch.setattr(PackedDescriptor, "__call__", right)
    m.closed_form(y)(y)
    assert (tuple(y.shape), (), torch.float32) in m._packed.broken and not m._packed.cache  # that shape stays on autograd


@needs_onednn
def test_a_failing_kernel_falls_back_to_autograd_and_says_why(monkeypatch):
    m = _model()
    y = torch.randn(2, 3, 16, 16)

    def fail(self, x, want_f=True):
        raise RuntimeError("no kernel for this\nsecond line")

    monkeypatch.setattr(PackedDescriptor, "__call__", fail)
    f, g = m.closed_form(y)(y)
    _, g_ref = _reference(m.descriptor, y, None)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    assert m.accel.fallbacks == ["closed-form CPU gradient failed: RuntimeError: no kernel for this"]


def test_missing_kernels_are_named(monkeypatch):
    class NoOps:
        pass

    monkeypatch.setattr(torch.ops, "mkldnn", NoOps())
    why = cpugrad.unsupported(Descriptor(tiny_net()), torch.zeros(1, 3, 8, 8))
    assert why == "this PyTorch has no torch.ops.mkldnn._reorder_convolution_weight"
    m = _model()
    assert m.closed_form(torch.zeros(1, 3, 8, 8)) is None
    assert m.accel.fallbacks == ["closed-form CPU gradient not used: " + why]


def test_grad_check_tells_a_kink_from_a_wrong_gradient():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 3, 32, 32, generator=g)
    kink = ref.clone()
    kink[0, 0, :4, :4] += 0.3  # one activation on the other side of zero moves a few pixels
    assert grad_agrees(kink, ref)
    assert not grad_agrees(1.2 * ref, ref)
    assert not grad_agrees(torch.full_like(ref, float("nan")), ref)


def test_langevin_uses_the_given_gradient_per_chunk():
    calls = []

    def energy_grad(y, want_f):
        calls.append((y.shape[0], want_f))
        return (-0.5 * y.flatten(1).pow(2).sum(1) if want_f else None), -y  # -|y|^2 / 2 and its gradient

    y0 = torch.ones(5, 1, 2, 2)
    kw = dict(steps=2, delta=1.0, sigma=1e9, noise=0, max_batch=2, energy_grad=energy_grad)
    y = descriptor_langevin(lambda y: 1 / 0, y0, **kw)
    assert calls == [(2, False), (2, False), (1, False)] * 2  # never autograd on `energy`, chunked like it
    torch.testing.assert_close(y, y0 * 0.25, rtol=1e-6, atol=0)  # y <- y - y / 2, twice (sigma term ~ 0)
    calls.clear()
    seen = []
    descriptor_langevin(lambda y: 1 / 0, y0, **kw, callback=lambda info: seen.append(info["energy"]))
    assert calls == [(2, True), (2, True), (1, True)] * 2  # a callback asks for f, whole across the chunks
    torch.testing.assert_close(seen[1], torch.full((5,), -0.5), rtol=1e-6, atol=0)  # f of step 1's input, y0 / 2


@needs_onednn
def test_closed_form_skips_the_energy_only_when_told():
    cfg, shape, wrap = CASES[1]
    d = _descriptor(cfg)
    y = torch.randn(shape)
    packed = PackedDescriptor(d, shape, wrap)
    f, g = packed(y)
    none, g2 = packed(y, want_f=False)
    assert none is None and f is not None
    torch.testing.assert_close(g2, g, rtol=0, atol=0)


@needs_onednn
def test_cli_run_says_when_the_closed_form_fell_back_and_logs_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from coopsynth.cli import app
    from coopsynth.io import write_image
    from tests.conftest import texture_image

    write_image(tmp_path / "t.png", texture_image(32, 32))
    args = ["texture", str(tmp_path / "t.png"), "--steps", "2", "--samples", "1", "--preset", "fast"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    assert "fell back" not in r.output
    assert json.loads((tmp_path / "ok" / "log.jsonl").read_text().splitlines()[-1])["eager_fallbacks"] == []

    def fail(self, x, want_f=True):
        raise RuntimeError("kernel missing")

    monkeypatch.setattr(PackedDescriptor, "__call__", fail)
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "slow")])
    assert r.exit_code == 0, r.output
    reason = "closed-form CPU gradient failed: RuntimeError: kernel missing"
    assert f"the Langevin revision fell back to slower code: {reason}" in " ".join(r.output.split())
    assert json.loads((tmp_path / "slow" / "log.jsonl").read_text().splitlines()[-1])["eager_fallbacks"] == [reason]


def _force_paddings(monkeypatch, switch: float, dtypes=(torch.float32, torch.bfloat16)) -> None:
    """Make _pick_padding time every layer (any size, these dtypes) and take the wider output
    padding whenever it is under `switch` times the natural one's time (inf: always; 0: never)."""
    monkeypatch.setattr(cpugrad, "DECONV_TUNE_DTYPES", dtypes)
    monkeypatch.setattr(cpugrad, "DECONV_TUNE_MIN", 0)
    monkeypatch.setattr(cpugrad, "DECONV_SWITCH", switch)
    monkeypatch.setattr(cpugrad, "_PADDINGS", {})


@needs_onednn
@pytest.mark.parametrize(("cfg", "shape", "wrap"), CASES)
def test_a_wider_output_padding_gives_the_same_gradient(monkeypatch, cfg, shape, wrap):
    """conv^T with one more row and column, cropped (what _pick_padding may choose), matches
    float64 autograd; refusing it leaves the natural padding and the same bits as before."""
    d = _descriptor(cfg)
    y = torch.randn(shape)
    f0, g0 = PackedDescriptor(d, shape, wrap)(y)
    _force_paddings(monkeypatch, float("inf"))
    packed = PackedDescriptor(d, shape, wrap)
    f, g = packed(y)
    free = len(shape) == 4 and any(  # images only: video layers keep their natural padding
        s > 1 and p == 0 for L in packed.layers for s, p in zip(L.stride, L.natural_padding, strict=True)
    )
    assert any(L.cropped for L in packed.layers) == free and (free or not cpugrad._PADDINGS)
    f_ref, g_ref = _reference(d, y, wrap)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    torch.testing.assert_close(f, f0)
    _force_paddings(monkeypatch, 0.0)
    packed = PackedDescriptor(d, shape, wrap)
    f1, g1 = packed(y)
    assert not any(L.cropped for L in packed.layers)
    assert torch.equal(g1, g0) and torch.equal(f1, f0)


@needs_onednn_bf16
def test_a_wider_output_padding_in_bf16_matches_autocast(monkeypatch):
    cfg, shape, wrap = CASES[0]
    d = _descriptor(cfg)
    y = torch.randn(shape)
    _force_paddings(monkeypatch, float("inf"), (torch.bfloat16,))
    packed = PackedDescriptor(d, shape, wrap, torch.bfloat16)
    _, g = packed(y)
    assert any(L.cropped for L in packed.layers)
    _, g_ac = _autocast_reference(d, y, wrap)
    assert _rel(g, g_ac) < 0.01


# a second layer on space_to_depth of its input (4 channels): its bias repeats per phase
FOLD_CASES = [*CASES, (tiny_net(2, d_widths=(4, 8)), (2, 3, 16, 16), (True, False))]


@needs_onednn
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize(("cfg", "shape", "wrap"), FOLD_CASES)
def test_the_read_out_as_conv_transpose_bias_gives_the_same_gradient(monkeypatch, cfg, shape, wrap, wide):
    """Large layers add the read-out of their input as conv^T's bias and take it off the padded
    border (replicated and circular, odd sizes, space-to-depth, videos), alone and with a wider
    output padding: float64 autograd's gradient either way."""
    monkeypatch.setattr(cpugrad, "BIAS_FOLD_MIN", 0)
    if wide:
        _force_paddings(monkeypatch, float("inf"))
    d = _descriptor(cfg)
    y = torch.randn(shape)
    packed = PackedDescriptor(d, shape, wrap)
    assert packed.biases[0] is None and all(b is not None for b in packed.biases[1:])
    if cfg.d_widths[0] == 4:
        assert packed.layers[1].depth and packed.biases[1].shape == (16,)
    f, g = packed(y)
    f_ref, g_ref = _reference(d, y, wrap)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    torch.testing.assert_close(f.double(), f_ref, rtol=1e-4, atol=1e-5 * f_ref.abs().max().item())


@needs_onednn
def test_small_layers_add_the_read_out_themselves():
    """Below BIAS_FOLD_MIN the loop adds u (fewer calls than the border correction)."""
    cfg, shape, wrap = CASES[0]
    packed = PackedDescriptor(_descriptor(cfg), shape, wrap)
    assert all(b is None for b in packed.biases)
