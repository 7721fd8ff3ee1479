import pytest
import torch

from coopsynth import histogram
from coopsynth.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from coopsynth.errors import CoopsynthError
from coopsynth.histogram import is_quantile_function, match, quantile_function
from coopsynth.model import CoopModel
from coopsynth.trainer import CoopTrainer, TrainConfig
from tests.conftest import texture_image, tiny_net


def _reference(h: int = 48, w: int = 40) -> torch.Tensor:
    """Two channels with unlike distributions in [0, 1]: a skewed one and a two-peaked one."""
    g = torch.Generator().manual_seed(0)
    skew = torch.rand(h, w, generator=g) ** 3
    peaks = torch.where(torch.rand(h, w, generator=g) < 0.3, 0.2, 0.8) + 0.05 * torch.randn(h, w, generator=g)
    return torch.stack([skew, peaks.clamp(0, 1)])  # (2, h, w)


def test_quantile_function_agrees_with_torch_quantile():
    ref = _reference()
    q = quantile_function(ref, points=11)
    want = torch.quantile(ref.flatten(1).double(), torch.linspace(0, 1, 11, dtype=torch.float64), dim=1).T
    torch.testing.assert_close(q.double(), want, rtol=0, atol=1e-6)
    assert q.shape == (2, 11)


def test_quantile_function_reads_visible_pixels_alone():
    ref = _reference()
    mask = torch.ones(1, *ref.shape[1:])
    mask[:, 10:30, 5:25] = 0
    hidden = ref.clone()
    hidden[:, 10:30, 5:25] = 7.0  # values only the hidden pixels have
    q = quantile_function(hidden, mask)
    torch.testing.assert_close(q, quantile_function(ref[:, mask[0] != 0][:, :, None]))
    assert q.max() <= 1


def test_matched_channels_take_the_reference_distribution_and_keep_their_order():
    ref = _reference()
    q = quantile_function(ref)
    x = torch.randn(2, 64, 56, generator=torch.Generator().manual_seed(1)) * torch.tensor([0.3, 2.0])[:, None, None]
    out = match(x, q)
    assert out.shape == x.shape and out.dtype == x.dtype
    # the output's quantiles are the reference's, up to the histogram's resolution
    torch.testing.assert_close(quantile_function(out, points=65), quantile_function(ref, points=65), rtol=0, atol=0.01)
    for c in range(2):  # one increasing map per channel: the order of the values is kept
        by_x = out[c].flatten()[x[c].flatten().argsort()]
        assert (by_x[1:] >= by_x[:-1]).all()


def test_matching_data_to_its_own_distribution_changes_little():
    ref = _reference()
    err = (match(ref, quantile_function(ref)) - ref).abs().flatten()
    # all but the rare values in a near-empty gap of the distribution (between the two peaks), where
    # a finite quantile table interpolates over the gap
    assert err.mean() < 0.001 and err.quantile(0.999) < 0.01


def test_matching_is_per_pixel_and_chunking_changes_nothing(monkeypatch):
    ref = _reference()
    q = quantile_function(ref)
    x = torch.rand(2, 32, 24, generator=torch.Generator().manual_seed(2))
    out = match(x, q)
    rolled = match(torch.roll(x, (5, 7), (1, 2)), q)  # a tile shifted is the same tile: the map is per pixel
    assert torch.equal(rolled, torch.roll(out, (5, 7), (1, 2)))
    monkeypatch.setattr(histogram, "CHUNK", 100)
    assert torch.equal(match(x, q), out)


def test_a_constant_channel_maps_to_the_reference_median():
    q = quantile_function(_reference())
    x = torch.full((2, 8, 8), 0.5)
    out = match(x, q)
    torch.testing.assert_close(out[:, 0, 0], q[:, q.shape[1] // 2])
    assert (out == out[:, :1, :1]).all()


def test_values_clamped_to_the_ends_take_the_middle_of_their_share():
    """A sample clamped to [0, 1] repeats its minimum and maximum: those pixels map to the middle
    of their share of the distribution (mid-ranks), the others above or below it in order."""
    q = quantile_function(torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(4)))
    x = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(5))
    x[:, :12] = 0.0  # 30% at the minimum
    x[:, -4:] = 1.0  # 10% at the maximum
    out = match(x, q)
    pos = torch.tensor([0.15, 0.95]) * (q.shape[1] - 1)
    torch.testing.assert_close(out[0, 0, 0], _at(q[0], pos[0]))
    torch.testing.assert_close(out[0, -1, 0], _at(q[0], pos[1]))
    assert (out[:, :12] == out[0, 0, 0]).all() and (out[:, -4:] == out[0, -1, 0]).all()
    middle = out[:, 12:-4]
    assert middle.min() > _at(q[0], 0.3 * (q.shape[1] - 1)) - 1e-3 and middle.max() < _at(q[0], 0.9 * (q.shape[1] - 1)) + 1e-3


def _at(qc: torch.Tensor, pos: torch.Tensor | float) -> torch.Tensor:
    j = int(pos)
    return qc[j] + (float(pos) - j) * (qc[j + 1] - qc[j])


def test_bad_quantile_functions_are_told_apart():
    q = quantile_function(_reference())
    assert is_quantile_function(q, 2)
    assert not is_quantile_function(q, 3)
    assert not is_quantile_function(q.flip(1), 2)  # decreasing
    assert not is_quantile_function(q[:, :1], 2)
    bad = q.clone()
    bad[0, 3] = float("nan")
    assert not is_quantile_function(bad, 2)
    assert not is_quantile_function([[0.0, 1.0]], 1)
    with pytest.raises(ValueError, match="3 quantile functions for 2 channels"):
        match(torch.rand(2, 4, 4), torch.rand(3, 5).sort(1).values)


def _model(dims: int) -> CoopModel:
    torch.manual_seed(0)
    m = CoopModel(tiny_net(dims), torch.full((3,), 0.5), torch.full((3,), 0.2))
    m.quantiles = quantile_function(torch.rand(3, 40, 40) ** 2)  # darker than what an untrained model makes
    return m


def test_image_samples_are_matched_by_default_and_videos_are_not():
    lang = {"delta": 0.1, "sigma": 1.0, "noise": 1.0}
    m = _model(2)
    a = m.sample(1, (32, 32), refine=1, langevin=lang, generator=torch.Generator().manual_seed(3))
    raw = m.sample(1, (32, 32), refine=1, langevin=lang, generator=torch.Generator().manual_seed(3), match=False)
    torch.testing.assert_close(a[0], match(raw[0], m.quantiles))
    eighths = m.quantiles[:, :: (m.quantiles.shape[1] - 1) // 8]  # (3, 9)
    torch.testing.assert_close(quantile_function(a[0], points=9), eighths, rtol=0, atol=0.02)
    v = _model(3)
    b = v.sample(1, (8, 16, 16), refine=0, langevin=lang, generator=torch.Generator().manual_seed(3))
    b_raw = v.sample(1, (8, 16, 16), refine=0, langevin=lang, generator=torch.Generator().manual_seed(3), match=False)
    b_on = v.sample(1, (8, 16, 16), refine=0, langevin=lang, generator=torch.Generator().manual_seed(3), match=True)
    assert torch.equal(b, b_raw) and not torch.equal(b, b_on)
    m.quantiles = None  # a model that does not know its data's distribution samples unmatched
    assert torch.equal(m.sample(1, (32, 32), refine=1, langevin=lang, generator=torch.Generator().manual_seed(3)), raw)


def test_matches_says_what_sample_does():
    """`CoopModel.matches`, which `pipeline.sample`, the progress strip and the motion fit ask:
    None is the default of the dims, and nothing matches without quantiles."""
    image, video = _model(2), _model(3)
    assert [image.matches(m) for m in (None, True, False)] == [True, True, False]
    assert [video.matches(m) for m in (None, True, False)] == [False, True, False]
    image.quantiles = None
    assert [image.matches(m) for m in (None, True, False)] == [False, False, False]


def _cfg() -> TrainConfig:
    return TrainConfig(net=tiny_net(), batch=2, crop=16, langevin_steps=2, steps=4)


def test_checkpoints_carry_the_training_data_quantiles(tmp_path):
    data = texture_image()
    mask = torch.ones(1, *data.shape[1:])
    mask[:, :8] = 0
    t = CoopTrainer(data, _cfg(), seed=0, mask=mask)
    torch.testing.assert_close(t.quantiles, quantile_function(data[:, 8:]))
    path = save_checkpoint(tmp_path / "m.pt", t.state_dict(), "texture", {"size": [48, 40]})
    m = model_from_checkpoint(load_checkpoint(path))
    torch.testing.assert_close(m.quantiles, t.quantiles, rtol=0, atol=0)
    t.restart(5)  # a fresh attempt keeps them
    assert t.model.quantiles is t.quantiles


def test_checkpoints_without_quantiles_load_and_damaged_ones_are_refused(tmp_path):
    t = CoopTrainer(texture_image(), _cfg(), seed=0)
    state = t.state_dict()
    old = {k: v for k, v in state.items() if k != "quantiles"}  # written before histogram matching
    path = save_checkpoint(tmp_path / "old.pt", old, "texture", {})
    assert model_from_checkpoint(load_checkpoint(path), path=path).quantiles is None
    for bad in (state["quantiles"][:2], state["quantiles"].flip(1)):
        path = save_checkpoint(tmp_path / "bad.pt", {**state, "quantiles": bad}, "texture", {})
        with pytest.raises(CoopsynthError, match=r"bad\.pt: its colour distribution \(quantiles\) is damaged"):
            model_from_checkpoint(load_checkpoint(path), path=path)
