import pytest
import torch

from coopsynth import metrics as M
from tests.conftest import texture_image


@pytest.fixture(scope="module")
def halves():
    img = texture_image(96, 160, seed=4)
    return M.split_halves(img)  # (3, 96, 80) each


def test_split_halves_along_longer_side():
    tr, ho = M.split_halves(torch.zeros(3, 10, 30))
    assert tr.shape == ho.shape == (3, 10, 15)
    tr, ho = M.split_halves(torch.zeros(1, 31, 10))
    assert tr.shape == ho.shape == (1, 15, 10)


def test_identical_sets_give_zero_swd(halves):
    tr, _ = halves
    assert M.swd([tr], [tr], seed=0) < 0.03


def test_swd_repeats_exactly_with_same_seed(halves):
    tr, ho = halves
    assert M.swd([tr], [ho], seed=5) == M.swd([tr], [ho], seed=5)
    assert M.copy_index([tr, ho], ho, tr, seed=1) == M.copy_index([tr, ho], ho, tr, seed=1)
    assert M.swd([tr], [ho], seed=5) != M.swd([tr], [ho], seed=6)


def test_verbatim_crop_gives_copy_index_zero(halves):
    tr, ho = halves
    crops = [tr[:, 10:60, 5:70], tr[:, 30:90, 0:50]]
    assert M.copy_index(crops, ho, tr) < 0.02
    assert M.copy_index([ho], ho, tr) == pytest.approx(1.0, abs=0.1)  # different random queries


def test_blur_scores_between_real_and_noise(halves):
    tr, ho = halves
    g = torch.Generator().manual_seed(0)
    real = M.random_crops(tr, (48, 48), 4, torch.Generator().manual_seed(9))
    blurred = [M._blur(M._blur(c[None]))[0] for c in real]
    noise = [torch.rand(c.shape, generator=g) for c in real]
    r_real = M.swd_ratio(real, ho, tr)["swd_ratio"]
    r_blur = M.swd_ratio(blurred, ho, tr)["swd_ratio"]
    r_noise = M.swd_ratio(noise, ho, tr)["swd_ratio"]
    assert r_real < r_blur < r_noise


def test_diversity_zero_for_identical_samples(halves):
    tr, ho = halves
    assert M.diversity([ho, ho, ho], tr) == 0.0
    assert M.diversity([tr[:, :48], ho[:, :48], ho[:, 48:]], tr) > 0.3


def test_grey_and_rgb_inputs(halves):
    tr, ho = halves
    g_tr, g_ho = tr.mean(0, keepdim=True), ho.mean(0, keepdim=True)
    out = M.texture_metrics([g_ho[:, :40], g_ho[:, 40:]], g_ho, g_tr)
    assert set(out) == {"swd_samples", "swd_real", "swd_ratio", "copy_index", "diversity"}


def test_laplacian_pyramid_reconstructs():
    x = torch.rand(1, 3, 32, 24)
    levels = M.laplacian_pyramid(x, 3)
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(32, 24), (16, 12), (8, 6)]
    rec = levels[-1]
    for lap in reversed(levels[:-1]):
        up = torch.zeros_like(lap)
        up[..., ::2, ::2] = rec
        rec = lap + 4 * M._blur(up)
    torch.testing.assert_close(rec, x, atol=1e-5, rtol=1e-5)


def test_frozen_video_has_motion_ratio_zero():
    g = torch.Generator().manual_seed(0)
    moving = torch.rand(3, 6, 32, 32, generator=g)
    frozen = moving[:, :1].expand(3, 6, 32, 32).contiguous()
    out = M.video_metrics([frozen, frozen + 0.0], moving, moving)
    assert out["motion_ratio"] == 0.0
    assert M.video_metrics([moving], moving, moving)["motion_ratio"] == pytest.approx(1.0)


def test_video_st_swd_identical_is_small():
    v = torch.rand(3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    assert M.swd([v], [v], temporal=3) < 0.03


def test_recovery_error_counts_missing_pixels_only():
    truth = torch.zeros(3, 8, 8)
    done = truth.clone()
    missing = torch.zeros(8, 8, dtype=torch.bool)
    missing[:4] = True
    done[:, :4] = 0.5
    done[:, 4:] = 1.0  # wrong visible pixels do not count
    assert M.recovery_error(done, truth, missing) == pytest.approx(127.5)


def test_hole_swd_ratio_of_truth_is_one(halves):
    tr, _ = halves
    missing = torch.zeros(tr.shape[1:], dtype=torch.bool)
    missing[30:60, 20:60] = True
    out = M.completion_metrics(tr, tr, missing)
    assert out["recovery_error"] == 0.0 and out["hole_swd_ratio"] == pytest.approx(1.0)


def _noise_with_hole(side: int, hole: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = (0.5 + 0.1 * torch.randn(3, side, side, generator=g)).clamp(0, 1)
    missing = torch.zeros(side, side, dtype=torch.bool)
    missing[hole[0] : hole[1], hole[0] : hole[1]] = True
    return img, missing


def test_pyramid_hole_swd_ratio_of_truth_is_one():
    truth, missing = _noise_with_hole(128, (32, 96))
    out = M.completion_metrics(truth, truth, missing)
    assert out["pyramid_swd_ratio"] == pytest.approx(1.0)


def test_pyramid_hole_swd_sees_coarse_structure_at_its_coarse_levels():
    """A fill with the truth's fine grain plus soft blobs ~30 pixels wide: the blobs move the
    coarse levels' SWD far more than the finest band's (each level sees its own scale); the ratio
    is the mean of the levels' ratios."""
    truth, missing = _noise_with_hole(128, (32, 96))
    g = torch.Generator().manual_seed(1)
    grain = (0.5 + 0.1 * torch.randn(3, 128, 128, generator=g)).clamp(0, 1)
    blobs = torch.nn.functional.interpolate(torch.randn(1, 1, 4, 4, generator=g), size=(128, 128), mode="bicubic")[0]
    plain = M.pyramid_hole_swd(torch.where(missing, grain, truth), missing)
    blobby = M.pyramid_hole_swd(torch.where(missing, (grain + 0.2 * blobs).clamp(0, 1), truth), missing)
    assert len(plain) == 3
    assert blobby[2] / plain[2] > 3 * (blobby[0] / plain[0])
    real = M.pyramid_hole_swd(truth, missing)
    done = torch.where(missing, (grain + 0.2 * blobs).clamp(0, 1), truth)
    ratio = M.completion_metrics(done, truth, missing)["pyramid_swd_ratio"]
    assert ratio == pytest.approx(sum(b / r for b, r in zip(blobby, real, strict=True)) / 3, rel=1e-6)
    assert ratio > 1.5


def test_pyramid_hole_swd_refuses_holes_too_small_for_its_levels():
    truth, missing = _noise_with_hole(64, (28, 36))  # 8x8: 2x2 at the coarsest level
    with pytest.raises(ValueError, match="no whole 7x7 patch"):
        M.pyramid_hole_swd(truth, missing)
    out = M.completion_metrics(truth, truth, missing)
    assert out["pyramid_swd_ratio"] is None and out["hole_swd_ratio"] == pytest.approx(1.0)
