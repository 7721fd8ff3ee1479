import pytest
import torch

from coopsynth.langevin import descriptor_langevin, generator_posterior_langevin
from coopsynth.networks import Descriptor
from tests.conftest import tiny_net


def test_one_noise_free_step_matches_formula_quadratic():
    a = torch.tensor([0.5, -1.0, 2.0])
    energy = lambda y: -(a * y * y).sum(1)  # noqa: E731  f = -sum a y^2, df/dy = -2 a y
    y0 = torch.tensor([[1.0, 2.0, -3.0]])
    delta, sigma = 0.3, 2.0
    y1 = descriptor_langevin(energy, y0, steps=1, delta=delta, sigma=sigma, noise=0.0)
    expect = y0 - delta**2 / 2 * (y0 / sigma**2 - (-2 * a * y0))
    torch.testing.assert_close(y1, expect)


def test_one_noise_free_step_matches_formula_descriptor():
    torch.manual_seed(0)
    d = Descriptor(tiny_net()).double()
    y0 = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    delta, sigma = 0.1, 1.5
    y1 = descriptor_langevin(d, y0, steps=1, delta=delta, sigma=sigma, noise=0.0)
    y = y0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(y).sum(), y)
    torch.testing.assert_close(y1, y0 - delta**2 / 2 * (y0 / sigma**2 - g))


def test_noise_has_the_right_scale():
    energy = lambda y: y.sum(1) * 0  # noqa: E731  flat energy, huge sigma: pure noise
    y0 = torch.zeros(1, 200_000)
    y1 = descriptor_langevin(energy, y0, steps=1, delta=0.2, sigma=1e9, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(y1.std().item() - 0.1) < 0.002


def test_fixed_seed_reproduces_chain_and_other_seed_differs():
    torch.manual_seed(0)
    d = Descriptor(tiny_net())
    y0 = torch.randn(2, 3, 16, 16)

    def run(s):
        return descriptor_langevin(d, y0, steps=5, delta=0.5, sigma=3.0, noise=1.0, generator=torch.Generator().manual_seed(s))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_known_pixels_held_fixed():
    torch.manual_seed(0)
    d = Descriptor(tiny_net())
    y0 = torch.randn(1, 3, 16, 16)
    known = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :] = True
    y = descriptor_langevin(d, y0, steps=4, delta=0.5, sigma=3.0, noise=1.0, known=known, known_mask=mask)
    assert torch.equal(y[..., :8, :], known[..., :8, :])
    assert not torch.equal(y[..., 8:, :], known[..., 8:, :])


def test_weights_get_no_gradient_and_callback_runs():
    d = Descriptor(tiny_net())
    seen = []
    descriptor_langevin(d, torch.randn(1, 3, 16, 16), steps=3, delta=0.5, sigma=3.0, callback=lambda i: seen.append(i["step"]))
    assert seen == [0, 1, 2]
    assert all(p.grad is None for p in d.parameters())


def test_generator_posterior_step_matches_formula_and_lowers_error():
    w = torch.tensor([[2.0, -1.0], [0.5, 1.0], [1.0, 1.0]])  # linear generator g(z) = w z
    gen = lambda z: z @ w.T  # noqa: E731
    target = torch.tensor([[1.0, 2.0, 0.0]])
    z0 = torch.zeros(1, 2)
    delta, s = 0.3, 1.0
    z1 = generator_posterior_langevin(gen, z0, target=target, steps=1, delta=delta, s=s, noise=0.0)
    grad = (target - gen(z0)) @ w / s**2 - z0
    torch.testing.assert_close(z1, z0 + delta**2 / 2 * grad)
    z_many = generator_posterior_langevin(gen, z0, target=target, steps=50, delta=delta, s=s, noise=0.0)
    assert (target - gen(z_many)).pow(2).sum() < (target - gen(z0)).pow(2).sum()


def test_bounds_project_every_step():
    energy = lambda y: 100.0 * y.sum(1)  # noqa: E731  a strong push upward
    y0 = torch.zeros(1, 5)
    lo, hi = torch.full((1, 5), -1.0), torch.tensor([[0.5, 1.0, 2.0, 3.0, 4.0]])
    y = descriptor_langevin(energy, y0, steps=3, delta=1.0, sigma=10.0, noise=0.0, bounds=(lo, hi))
    assert torch.equal(y, hi)


def test_chunked_gradients_give_the_same_chain():
    torch.manual_seed(0)
    d = Descriptor(tiny_net()).double()
    y0 = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    kw = dict(steps=3, delta=0.5, sigma=5.0, noise=0.3)
    whole = descriptor_langevin(d, y0, generator=torch.Generator().manual_seed(1), **kw)
    for max_batch in (1, 2):
        part = descriptor_langevin(d, y0, generator=torch.Generator().manual_seed(1), max_batch=max_batch, **kw)
        torch.testing.assert_close(part, whole)


@pytest.mark.parametrize("scalar_clamp_min", [0, 2**62])  # the clamp channel by channel, and by bound tensors
def test_update_matches_the_plain_expression_and_leaves_its_input_alone(monkeypatch, scalar_clamp_min):
    """langevin_update is y - half (y / sigma^2 - grad) + scale * draw, clamped, rearranged."""
    import coopsynth.langevin as L
    from coopsynth.langevin import langevin_update

    monkeypatch.setattr(L, "SCALAR_CLAMP_MIN", scalar_clamp_min)

    g = torch.Generator().manual_seed(0)
    y, grad, draw = (torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    lo = torch.tensor([-1.0, -0.5, -2.0], dtype=torch.float64).view(3, 1, 1)  # shaped as CoopModel.bounds makes them
    hi = torch.tensor([0.8, 0.3, 1.5], dtype=torch.float64).view(3, 1, 1)
    y_before = y.clone()
    half, sigma, scale = 0.5 * 0.7**2, 1.3, 0.35
    plain = y - half * (y / sigma**2 - grad)
    torch.testing.assert_close(langevin_update(y, grad, None, half=half, sigma=sigma, scale=scale), plain)
    expect = torch.maximum(torch.minimum(plain + scale * draw, hi), lo)
    if scalar_clamp_min == 0:  # one bound a channel: clamped by numbers, never by the tensors

        def by_tensors(*a, **k):
            raise AssertionError("clamped by bound tensors")

        monkeypatch.setattr(torch, "clamp", by_tensors)
    noisy = langevin_update(y, grad, draw, half=half, sigma=sigma, scale=scale, bounds=(lo, hi))
    monkeypatch.undo()
    torch.testing.assert_close(noisy, expect)
    for k in range(3):  # each channel reached its own bounds, and was held there
        assert noisy[:, k].max() == hi.flatten()[k] and noisy[:, k].min() == lo.flatten()[k]
    assert torch.equal(y, y_before)


def test_block_noise_is_the_same_on_one_thread_or_many_and_for_any_region(monkeypatch):
    """Blocks drawn on several threads give the numbers one thread gives; a sub-region gets the
    slice of the whole field's draw; `out` is filled in place, whatever its layout."""
    import coopsynth.langevin as L

    shape, whole = (1, 2, 150, 130), (slice(0, 150), slice(0, 130))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        monkeypatch.setattr(L, "PARALLEL_NOISE_MIN", 2**62)
        serial = L.block_noise(shape, whole, 3, 11, block=32)
        monkeypatch.setattr(L, "PARALLEL_NOISE_MIN", 0)
        parallel = L.block_noise(shape, whole, 3, 11, block=32)
        part = L.block_noise(shape, (slice(40, 111), slice(7, 100)), 3, 11, block=32)
        out = torch.zeros(1, 2, 150, 130).contiguous(memory_format=torch.channels_last)
        filled = L.block_noise(shape, whole, 3, 11, block=32, out=out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(parallel, serial)
    assert torch.equal(part, serial[..., 40:111, 7:100])
    assert filled is out and torch.equal(out, serial)
    assert not torch.equal(L.block_noise(shape, whole, 4, 11, block=32), serial)  # another step, other numbers


def _noise_in_child(queue) -> None:
    import coopsynth.langevin as L

    L.PARALLEL_NOISE_MIN = 0
    torch.set_num_threads(2)
    queue.put(L.block_noise((1, 1, 40, 40), (slice(0, 40), slice(0, 40)), 0, 1, block=16).sum().item())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_block_noise_threads_survive_a_fork(monkeypatch):
    """A child forked after the parent drew noise on its threads draws on its own (the parent's
    workers do not exist there: without the at-fork reset it would wait for them forever)."""
    import multiprocessing

    import coopsynth.langevin as L

    monkeypatch.setattr(L, "PARALLEL_NOISE_MIN", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = L.block_noise((1, 1, 40, 40), (slice(0, 40), slice(0, 40)), 0, 1, block=16).sum().item()
    finally:
        torch.set_num_threads(threads)
    assert L._POOLS  # the parent's pool exists when the child is forked
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_noise_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == want
