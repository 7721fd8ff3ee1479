import pytest
import torch

from coopsynth.networks import NetConfig


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def tiny_net(dims: int = 2, channels: int = 3, **kw) -> NetConfig:
    """Networks small enough for float64 gradcheck and sub-second training steps."""
    base = dict(
        dims=dims,
        channels=channels,
        z_channels=4,
        g_widths=(8, 6),
        d_widths=(6, 8),
        d_kernels=(4, 4),
        g_time_up=(2, 1),
        d_time_down=(2, 1),
    )
    base.update(kw)
    return NetConfig(**base)


def texture_image(h: int = 48, w: int = 40, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A small procedural texture in [0, 1]: oriented stripes plus smoothed noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    base = 0.5 + 0.25 * torch.sin(0.7 * x + 0.3 * y)
    noise = torch.rand(channels, h, w, generator=g)
    noise = torch.nn.functional.avg_pool2d(noise[None], 3, 1, 1)[0]
    return (0.6 * base + 0.4 * noise).clamp(0, 1)


def video_clip(t: int = 8, h: int = 48, w: int = 40, channels: int = 3) -> torch.Tensor:
    """A small procedural dynamic texture (C, T, H, W) in [0, 1]: the texture drifting one pixel a frame."""
    img = texture_image(h, w + t, channels)
    return torch.stack([img[:, :, i : i + w] for i in range(t)], dim=1)
