"""Speed paths give the same numbers as the plain ones: space-to-depth first layer, the read-out
sums, channels-last, bf16 autocast, and the CUDA graph (its CPU fallback here; on a GPU itself)."""

import pytest
import torch
import torch.nn.functional as F

from coopsynth import accel as accel_module
from coopsynth.accel import Accel, cpu_has_bf16, replay_agrees
from coopsynth.errors import CoopsynthError
from coopsynth.model import CoopModel
from coopsynth.networks import Descriptor, _strided_conv, pad
from tests.conftest import tiny_net

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def plain_energy(d: Descriptor, y: torch.Tensor, wrap=None) -> torch.Tensor:
    """The descriptor written the obvious way: every conv as a module call, 1x1 heads as convs."""
    wrap = wrap or (False,) * d.cfg.dims
    h, e = y, y.new_zeros(y.shape[0])
    for layer, head in zip(d.layers, d.heads, strict=True):
        h = F.leaky_relu(layer(pad(h, d._pads(layer), wrap)), d.cfg.slope)
        e = e + head(h).flatten(1).sum(1)
    return e


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 3])
def test_space_to_depth_conv_equals_the_strided_conv(dims, channels):
    torch.manual_seed(0)
    d = Descriptor(tiny_net(dims, channels)).double()
    shape = (2, channels, 6, 14, 18) if dims == 3 else (2, channels, 14, 18)
    x = torch.randn(shape, dtype=torch.float64)
    layer = d.layers[0]
    torch.testing.assert_close(_strided_conv(layer, x), layer(x))
    odd = x[..., :-1]  # odd width: the plain path
    torch.testing.assert_close(_strided_conv(layer, odd), layer(odd))


@pytest.mark.parametrize("dims", [2, 3])
def test_descriptor_equals_the_plain_formulation_with_gradients(dims):
    torch.manual_seed(1)
    d = Descriptor(tiny_net(dims)).double()
    shape = (2, 3, 4, 16, 12) if dims == 3 else (2, 3, 16, 12)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for wrap in (None, (True,) * dims):
        e, e_ref = d(y, wrap), plain_energy(d, y, wrap)
        torch.testing.assert_close(e, e_ref)
        (g,) = torch.autograd.grad(e.sum(), y)
        (g_ref,) = torch.autograd.grad(e_ref.sum(), y)
        torch.testing.assert_close(g, g_ref)
    small = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True) if dims == 2 else None
    if small is not None:
        assert torch.autograd.gradcheck(lambda t: d(t), (small,))


def test_cpu_defaults_take_the_eager_path():
    a = Accel.for_device(torch.device("cpu"))
    assert (a.precision, a.graphs, a.channels_last) == ("tf32", False, False)
    with pytest.raises(CoopsynthError, match="--precision fp16"):
        Accel.for_device(torch.device("cpu"), "fp16")


def _model(accel: Accel | None = None) -> CoopModel:
    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.25), "cpu", accel)
    return m


def _revise(m: CoopModel, seed: int = 3) -> torch.Tensor:
    y0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return m.revise(y0, steps=4, delta=0.5, sigma=10.0, noise=0.3, generator=torch.Generator().manual_seed(seed))


def test_forced_graph_on_cpu_falls_back_with_the_same_result():
    ref = _revise(_model())
    m = _model(Accel(graphs=True))
    out = _revise(m)  # CPU tensors never reach the graph path: the eager code runs
    torch.testing.assert_close(out, ref)
    assert not m._graphs and not m.accel.fallbacks  # no capture was even tried


def test_graph_capture_failure_is_recorded_and_eager_result_returned(monkeypatch):
    """Make the graph path believe it is on CUDA: capture then fails on a CPU tensor, the eager
    chain runs instead, and the reason is recorded once."""
    ref = _revise(_model())
    m = _model(Accel(graphs=True))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    out = _revise(m)
    monkeypatch.undo()
    torch.testing.assert_close(out, ref)
    assert len(m.accel.fallbacks) == 1 and "capture failed" in m.accel.fallbacks[0]
    _revise(m)
    assert len(m.accel.fallbacks) == 1  # a broken shape is not retried


def test_cpu_bf16_units_are_read_from_the_flags():
    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : sse2 amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags : sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bf16("model name : some CPU\n")  # no flags line: no


def test_bf16_on_a_cpu_without_bf16_units_gets_a_warning():
    from coopsynth.accel import precision_warning

    cpu, without, with_ = torch.device("cpu"), "flags : sse2 avx2 avx512f\n", "flags : avx512f avx512_bf16\n"
    assert "no bf16 units" in precision_warning(cpu, "bf16", without)
    assert precision_warning(cpu, "bf16", with_) is None
    for precision in ("auto", "fp32", "tf32"):  # auto never picks emulated bf16
        assert precision_warning(cpu, precision, without) is None
    assert precision_warning(torch.device("cuda"), "bf16", without) is None  # a GPU's bf16 is its own


def test_auto_precision_samples_in_bf16_where_the_cpu_has_it(monkeypatch):
    """Images and videos alike (both measured: benchmarks/RESULTS.md)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(accel_module, "cpu_has_bf16", lambda cpuinfo=None: True)
    auto = Accel.for_device(cpu)
    assert auto.auto and auto.precision == "tf32"  # training: fp32 arithmetic on a CPU
    assert auto.for_sampling(cpu).precision == "bf16"
    assert Accel.for_device(cpu, "fp32").for_sampling(cpu).precision == "fp32"  # a chosen precision stands
    assert Accel(precision="tf32", auto=True).for_sampling(torch.device("cuda")).precision == "tf32"  # GPUs keep tf32
    monkeypatch.setattr(accel_module, "cpu_has_bf16", lambda cpuinfo=None: False)
    assert auto.for_sampling(cpu) is auto


def test_sampling_runs_in_the_sampling_precision_and_restores_the_model(tmp_path, monkeypatch):
    from coopsynth import pipeline
    from coopsynth.io import read_image
    from coopsynth.trainer import TrainConfig

    model = _model(Accel.for_device(torch.device("cpu")))
    trained = model.accel
    blob = {"config_obj": TrainConfig(net=tiny_net()), "kind": "texture", "meta": {"size": [24, 24]}, "delta": 1.0}
    images = {}
    for has in (False, True):
        monkeypatch.setattr(accel_module, "cpu_has_bf16", lambda cpuinfo=None, has=has: has)
        (path,) = pipeline.sample(model, blob, pipeline.SampleJob(tmp_path / str(has), samples=1, seed=3))
        images[has] = read_image(path)
        assert model.accel is trained
    assert images[True].shape == images[False].shape
    assert not torch.equal(images[True], images[False])  # bf16 really ran
    assert (images[True] - images[False]).abs().mean() < 0.05  # and drew the same texture


def test_using_restores_the_settings_after_an_error():
    m = _model()
    own, other = m.accel, Accel(precision="bf16")
    with pytest.raises(RuntimeError), m.using(other):
        assert m.accel is other
        raise RuntimeError("a failed sample")
    assert m.accel is own


def test_replay_check_tells_rounding_from_a_wrong_result():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, 64, 64, generator=g)
    ref = start + 0.05 * torch.randn(start.shape, generator=g)  # what a chain moved
    rounding = ref + 1e-4 * torch.randn(start.shape, generator=g)
    assert replay_agrees(rounding, ref, start, "fp32")
    outlier = rounding.clone()
    outlier[0, 0, 0, 0] += 0.01  # one element past an element-wise tolerance: still rounding
    assert replay_agrees(outlier, ref, start, "fp32")
    assert not replay_agrees(start, ref, start, "fp32")  # no revision at all
    assert not replay_agrees(ref.clamp(-0.5, 0.5), ref, start, "bf16")  # wrong bounds
    nan = rounding.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert not replay_agrees(nan, ref, start, "fp32")


def test_channels_last_gives_the_same_chain():
    ref = _revise(_model())
    out = _revise(_model(Accel(channels_last=True)))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close_and_float32():
    ref = _revise(_model())
    out = _revise(_model(Accel(precision="bf16")))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.equal(out, ref)  # the bf16 path really ran


def test_cli_rejects_an_unknown_precision(tmp_path):
    from typer.testing import CliRunner

    from coopsynth.cli import app
    from coopsynth.io import write_image
    from tests.conftest import texture_image

    img = write_image(tmp_path / "t.png", texture_image())
    r = CliRunner().invoke(app, ["train", str(img), "-o", str(tmp_path / "o"), "--steps", "1", "--precision", "fp8"])
    assert r.exit_code == 1 and "--precision fp8" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


REUSE = """
import resource, sys, torch
from coopsynth.accel import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported")
    raise SystemExit
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
mib = int(sys.argv[2])
x = torch.ones(mib << 18)  # float32: mib MiB
del x
before = faults()
x = torch.ones(mib * 9 // 10 << 18)  # fits in the block just freed
print(faults() - before)
"""


def _page_faults_of_a_reallocation(mode: str, mib: int) -> str:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", REUSE, mode, str(mib)], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_keep_freed_memory_reuses_a_freed_block_instead_of_paging_in_a_new_one():
    """In a fresh process each (the setting is process-wide): by default glibc hands a 160 MiB
    block (a 1024x1024 window's activation: 32 channels, batch 1) back to the kernel on free and
    pages in a new one for the next big tensor; once keep_freed_memory() has run (its default
    threshold: 256 MiB), the next tensor reuses the freed block."""
    kept = _page_faults_of_a_reallocation("keep", 160)
    if kept == "unsupported":
        pytest.skip("not glibc: keep_freed_memory is a no-op here")
    default = int(_page_faults_of_a_reallocation("default", 160))
    if default < 1000:
        pytest.skip(f"this allocator reused the block by itself ({default} page faults)")
    assert int(kept) < default / 10, (kept, default)


def test_keep_freed_memory_takes_thresholds_beyond_a_c_int(monkeypatch):
    """mallopt takes a C int: a threshold of 2 GiB or more (and the trim threshold, twice it) is
    clamped rather than wrapped to a negative number that glibc refuses; below that, as given."""
    import ctypes

    seen = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            seen.append((param, value))
            return 1

        def gnu_get_libc_version(self) -> bytes:
            return b"2.36"

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert accel_module.keep_freed_memory(4 << 30)
    assert seen == [(-3, 2**31 - 1), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    seen.clear()
    assert accel_module.keep_freed_memory(256 << 20)
    assert seen == [(-3, 256 << 20), (-1, 512 << 20)]


def test_the_command_line_tool_keeps_freed_memory(monkeypatch):
    from coopsynth import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("sys.argv", ["coopsynth", "--help"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0 and calls == [1]


def _cuda_pair(precision: str = "fp32") -> tuple[CoopModel, CoopModel]:
    """A graph-path model (the CUDA defaults) and an eager twin with the same weights."""
    torch.manual_seed(0)
    accel = Accel.for_device(torch.device("cuda"), precision)
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.25), "cuda", accel)
    eager = CoopModel(tiny_net(), m.mean, m.std, "cuda", Accel(precision=precision))
    eager.descriptor.load_state_dict(m.descriptor.state_dict())
    return m, eager


def _cuda_run(model: CoopModel, seed: int) -> torch.Tensor:
    y0 = torch.randn(2, 3, 32, 32, device="cuda", generator=torch.Generator(device="cuda").manual_seed(100))
    g = torch.Generator(device="cuda").manual_seed(seed)
    return model.revise(y0, steps=5, delta=0.5, sigma=10.0, noise=0.3, generator=g)


def _churn_allocator() -> None:
    """Allocate and free small blocks, so that memory nobody holds any more gets reused."""
    junk = [torch.randn(n, device="cuda") for n in (1, 3, 12, 64, 512, 6144) for _ in range(4)]
    del junk


@cuda
def test_cuda_graph_matches_eager_and_sees_weight_updates():
    m, eager = _cuda_pair()
    for seed in (1, 2, 3, 4):  # later replays too: the allocator has reused freed memory by then
        torch.testing.assert_close(_cuda_run(m, seed), _cuda_run(eager, seed), rtol=1e-4, atol=1e-4)
        _churn_allocator()
    assert m._graphs and not m.accel.fallbacks
    with torch.no_grad():  # an optimiser-style in-place update must reach the replay
        for p, q in zip(m.descriptor.parameters(), eager.descriptor.parameters(), strict=True):
            p.mul_(1.5)
            q.mul_(1.5)
    torch.testing.assert_close(_cuda_run(m, 5), _cuda_run(eager, 5), rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_graph_second_replay_is_checked():
    """A graph reading memory it no longer owns (simulated: its bounds overwritten after the first
    replay) is caught by the second replay's check, which returns the eager result."""
    m, eager = _cuda_pair()
    _cuda_run(m, 1)
    (entry,) = next(iter(m._graphs.values())).cache.values()
    entry.static_bounds[0].fill_(3.0)  # what a reused block would hold: the chain clamps to it
    torch.testing.assert_close(_cuda_run(m, 2), _cuda_run(eager, 2), rtol=1e-4, atol=1e-4)
    assert m.accel.fallbacks == ["a CUDA graph replay disagreed with eager code"]


@cuda
def test_cuda_capture_failing_half_way_leaves_random_draws_working():
    """A chain that waits for the host (an .item() in the energy) runs eagerly but cannot be
    captured: the capture fails after it began, the eager result comes back, and the device's
    default generator still draws (a failed capture used to leave it marked as capturing, so
    every later draw raised "Offset increment outside graph capture")."""
    m, eager = _cuda_pair()
    energy = m.energy
    m.energy = lambda y, wrap=None: energy(y, wrap) + 0.0 * y.sum().item()
    torch.cuda.manual_seed(7)
    before = torch.randn(5, device="cuda")
    torch.testing.assert_close(_cuda_run(m, 1), _cuda_run(eager, 1), rtol=1e-4, atol=1e-4)
    assert len(m.accel.fallbacks) == 1 and "capture failed" in m.accel.fallbacks[0]
    torch.cuda.manual_seed(7)
    torch.testing.assert_close(torch.randn(5, device="cuda"), before)


@cuda
def test_cuda_training_step_runs_with_graphs_and_bf16():
    from coopsynth.trainer import CoopTrainer, TrainConfig
    from tests.conftest import texture_image

    cfg = TrainConfig(net=tiny_net(), crop=16, batch=2, steps=3, langevin_steps=3)
    for precision in ("tf32", "bf16"):
        tr = CoopTrainer(texture_image(), cfg, device="cuda", seed=0, accel=Accel.for_device(torch.device("cuda"), precision))
        for _ in range(3):
            stats = tr.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
        assert not tr.model.accel.fallbacks
