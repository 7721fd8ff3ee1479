"""benchmarks/speed.py times the descriptor in other formulations that claim the same numbers:
hold them to it (float64, image and video networks, replicated and circular padding)."""

import sys
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
