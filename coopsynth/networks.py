"""The two ConvNets of CoopNets, for images (dims=2) and videos (dims=3) from one code path.

Descriptor  f(Y; theta): bottom-up, fully convolutional; the energy of Y is the sum over every
    position of 1x1 read-outs of every layer (a multi-scale FRAME-like energy), so any size works
    and the gradient of f with respect to one pixel does not depend on the image size.
Generator   g(Z; alpha): top-down, fully convolutional from a spatial (spatio-temporal) latent
    map Z ~ N(0, I); each block up-samples by 2 (NetConfig.g_upsample: nearest, or linear as
    the presets use) and convolves (on a CPU from 16x16 inputs up as one convolution at the
    input's resolution, see _upsampled_conv and _linear_upsampled_conv), so the output is any
    size: a latent of (h, w) gives (h * 2^n, w * 2^n).

Tensors are (B, C, H, W) for images and (B, C, T, H, W) for videos. Padding is explicit, one mode
per axis: "wrap" axes are padded circularly (a tileable texture, a looping video), the others by
replicating the border.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class NetConfig:
    dims: int = 2  # 2: images (B, C, H, W); 3: videos (B, C, T, H, W)
    channels: int = 3  # data channels: 1 grey, 3 colour
    z_channels: int = 16  # channels of the latent map
    g_widths: tuple[int, ...] = (96, 64, 32)  # generator block widths, coarse to fine; 2x up-sampling per block
    g_time_up: tuple[int, ...] = (2, 2, 1)  # videos: up-sampling over time per generator block (1 or 2)
    d_widths: tuple[int, ...] = (32, 64, 128)  # descriptor layer widths; each layer halves the size
    d_time_down: tuple[int, ...] = (2, 1, 1)  # videos: down-sampling over time per descriptor layer
    d_kernels: tuple[int, ...] = (4, 4, 4)  # descriptor kernel sides (stride 2 each)
    slope: float = 0.2  # leaky ReLU slope in both networks
    g_upsample: str = "nearest"  # generator up-sampling: nearest or linear (bi/tri-linear)
    g_latent_convs: int = 0  # extra 3x3 convs at the latent resolution (cheap; widen the generator's reach)

    @property
    def up(self) -> tuple[int, ...]:
        """Generator up-sampling factor per axis, (T,) H, W."""
        s = 2 ** len(self.g_widths)
        if self.dims == 2:
            return (s, s)
        t = 1
        for u in self.g_time_up[: len(self.g_widths)]:
            t *= u
        return (t, s, s)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _conv(dims: int, cin: int, cout: int, k: tuple[int, ...], stride: tuple[int, ...] = 1) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(cin, cout, k, stride=stride, padding=0)


HALF_DTYPES = (torch.bfloat16, torch.float16)


def pad(x: Tensor, amount: tuple[int, ...], wrap: tuple[bool, ...]) -> Tensor:
    """Pad the trailing len(amount) axes of x by amount[i] on each side (pairs (before, after)
    when amount[i] is a tuple); circular where wrap[i], border-replicating elsewhere, in x's memory
    layout. One border-replicating pad of every axis, then each wrapped axis's borders overwritten
    by the far side's cells (corners included, axis by axis): F.pad's circular mode writes a
    contiguous tensor whatever x's layout, which for a channels-last 32x512x512 activation took 3x
    as long (26 against 8.7 ms, ad-hoc) and a copy back for the next convolution."""
    n = len(amount)
    sides, spans = [0] * (2 * n), []
    for i, a in enumerate(amount):
        lo, hi = a if isinstance(a, tuple) else (a, a)
        j = 2 * (n - 1 - i)  # F.pad lists the last axis first
        sides[j : j + 2] = [lo, hi]
        spans.append((lo, hi))
    if not any(sides):
        return x
    if x.dtype in HALF_DTYPES and not (x.requires_grad and torch.is_grad_enabled()) and torch.is_autocast_enabled(x.device.type):
        # autocast would pad in float32: copies there and back, the same numbers. Not under
        # autograd: the gradient of a padded border sums there in float32, here in bf16
        with torch.autocast(x.device.type, enabled=False):
            out = F.pad(x, sides, mode="replicate")
    else:
        out = F.pad(x, sides, mode="replicate")
    for i, ((lo, hi), w) in enumerate(zip(spans, wrap, strict=True)):
        if not w or not (lo or hi):  # a replicated border stands as padded
            continue
        ax = x.dim() - n + i
        size = x.shape[ax]
        if lo > size or hi > size:
            raise ValueError(f"circular padding of {max(lo, hi)} on an axis of {size}")
        if lo:
            out.narrow(ax, 0, lo).copy_(out.narrow(ax, size, lo))  # before: the last lo cells
        if hi:
            out.narrow(ax, lo + size, hi).copy_(out.narrow(ax, lo, hi))  # after: the first hi cells
    return out


def channels_innermost(x: Tensor) -> bool:
    """Is x (B, C, ...) laid out with its channels innermost, channels-last (a slice of such a tensor too)?"""
    return x.shape[1] > 1 and x.stride(1) == 1 and math.prod(x.shape[2:]) > 1


def circular_extend(x: Tensor, amount: tuple[int, ...]) -> Tensor:
    """Extend the trailing len(amount) axes of x circularly by amount[i] on each side (any amount,
    wrapping as many times as needed)."""
    for i, a in enumerate(amount):
        if a:
            ax = x.dim() - len(amount) + i
            n = x.shape[ax]
            x = x.index_select(ax, torch.arange(-a, n + a, device=x.device) % n)
    return x


class Descriptor(nn.Module):
    """Energy f(Y) (B,) of Y (B, C, [T,] H, W): a sum over positions of every layer's read-out."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dims
        self.layers = nn.ModuleList()
        self.heads = nn.ModuleList()
        cin = cfg.channels
        for i, (w, k) in enumerate(zip(cfg.d_widths, cfg.d_kernels, strict=True)):
            kt, st = (min(k, 3), cfg.d_time_down[i]) if d == 3 else (None, None)
            kernel = (k, k) if d == 2 else (kt, k, k)
            stride = (2, 2) if d == 2 else (st, 2, 2)
            self.layers.append(_conv(d, cin, w, kernel, stride))
            self.heads.append(_conv(d, w, 1, (1,) * d))
            cin = w

    def reach(self, axis: int = -1) -> int:
        """Pixels (frames for axis 0 of a video) on each side of a pixel that its energy gradient
        depends on (the receptive radius along that axis of the trailing [T,] H, W)."""
        r, jump = 0, 1
        for layer in self.layers:
            r += (layer.kernel_size[axis] - 1) * jump
            jump *= layer.stride[axis]
        return r

    def stride(self, axis: int = -1) -> int:
        """Total stride along an axis: windows must start on multiples of it to see the same grid."""
        s = 1
        for layer in self.layers:
            s *= layer.stride[axis]
        return s

    def _pads(self, layer: nn.Module) -> tuple:
        # "same"-style padding for a stride-s conv: total k - s split over both sides
        out = []
        for k, s in zip(layer.kernel_size, layer.stride, strict=True):
            tot = max(k - s, 0)
            out.append((tot // 2, tot - tot // 2))
        return tuple(out)

    def forward(self, y: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        wrap = wrap or (False,) * self.cfg.dims
        h = y  # (B, C, [T,] H, W)
        energy = y.new_zeros(y.shape[0])
        for layer, head in zip(self.layers, self.heads, strict=True):
            h = F.leaky_relu(_strided_conv(layer, pad(h, self._pads(layer), wrap)), self.cfg.slope)  # (B, w, ...) halved
            # sum over positions of a 1x1 read-out = the read-out of the per-channel sums (exact, and
            # one reduction instead of a one-channel convolution)
            n = h[0, 0].numel()
            energy = energy + h.flatten(2).sum(2) @ head.weight.flatten() + n * head.bias  # (B,)
        return energy  # (B,)


def _strided_conv(layer: nn.Module, x: Tensor) -> Tensor:
    """layer(x) for an already padded x. A stride-2 convolution with an even spatial kernel over few
    input channels (the descriptor's first layer) is computed as a stride-1 convolution of the
    space-to-depth input with the same weights rearranged: the same numbers, but 4x the input
    channels and a quarter of the positions, which CPU convolution kernels run about twice as fast
    (forward and input gradient). Other layers, and odd sizes, use the layer as it is."""
    if not folds_to_depth(layer, x.shape):
        return layer(x)
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    return conv(space_to_depth(x), depth_weight(layer.weight), layer.bias, stride=depth_stride(layer))


def folds_to_depth(layer: nn.Module, shape: torch.Size | tuple[int, ...]) -> bool:
    """Does _strided_conv compute `layer` on an input of this (padded) shape through space-to-depth?"""
    k, s = layer.kernel_size[-2:], layer.stride[-2:]
    return layer.in_channels <= 4 and s == (2, 2) and not (k[0] % 2 or k[1] % 2 or shape[-2] % 2 or shape[-1] % 2)


def depth_stride(layer: nn.Module) -> tuple[int, ...]:
    """The stride of the space-to-depth form of `layer`: 1 in space (time keeps its own)."""
    return (1, 1) if len(layer.stride) == 2 else (layer.stride[0], 1, 1)


def space_to_depth(x: Tensor) -> Tensor:
    """(B, C, [T,] H, W) -> (B, 4C, [T,] H/2, W/2): channel 4c + 2p + q holds the pixels of row
    phase p and column phase q of channel c."""
    lead = x.shape[:-2]  # (B, C, [T])
    H, W = x.shape[-2:]
    nd = x.dim()
    # (B, C, [T,] H/2, 2, W/2, 2) -> (B, C, 2, 2, [T,] H/2, W/2)
    x = x.reshape(*lead, H // 2, 2, W // 2, 2)
    order = (0, 1, nd - 1, nd + 1, *range(2, nd - 2), nd - 2, nd)
    return x.permute(order).reshape(lead[0], lead[1] * 4, *lead[2:], H // 2, W // 2)


def depth_to_space(x: Tensor) -> Tensor:
    """The inverse of space_to_depth: (B, 4C, [T,] h, w) -> (B, C, [T,] 2h, 2w)."""
    b, c4 = x.shape[:2]
    h, w = x.shape[-2:]
    t = x.shape[2:-2]  # () or (T,)
    x = x.reshape(b, c4 // 4, 2, 2, *t, h, w)  # (B, C, p, q, [T,] h, w)
    e = len(t)
    order = (0, 1, *range(4, 4 + e), 4 + e, 2, 5 + e, 3)  # (B, C, [T,] h, p, w, q)
    return x.permute(order).reshape(b, c4 // 4, *t, 2 * h, 2 * w)


def depth_weight(w: Tensor) -> Tensor:
    """A stride-2 kernel (O, C, [kt,] k0, k1) with even k0, k1 as the equivalent stride-1 kernel
    (O, 4C, [kt,] k0/2, k1/2) over space_to_depth of the input."""
    o, c = w.shape[:2]
    k0, k1 = w.shape[-2:]
    w = w.reshape(o, c, *w.shape[2:-2], k0 // 2, 2, k1 // 2, 2)
    wd = w.dim()
    worder = (0, 1, wd - 3, wd - 1, *range(2, wd - 4), wd - 4, wd - 2)
    return w.permute(worder).reshape(o, c * 4, *w.shape[2:-4], k0 // 2, k1 // 2)


# Nearest 2x up-sampling then a 3-tap convolution (taps w0 w1 w2), per output phase a (even or odd
# position): the output at 2i + a reads the input at i - 1 + a and i + a, with 2 taps: (w0, w1 + w2)
# for a = 0, (w0 + w1, w2) for a = 1.
# Per device type, from how many input positions per channel a generator block uses _upsampled_conv.
# CPU: from 16x16 (ad-hoc, one block, batch 4: 1.7x at 16x16, 0.7x at 8x8). CUDA: never (on an
# H100 it made training iterations 1.2-1.35x slower at 64-256 px crops, benchmarks/RESULTS.md: its
# strided interleave and that view's gradient cost more than the arithmetic it saves). Types not
# listed: never.
SUBPIXEL_MIN = {"cpu": 256}
# Per device type: does the generator's last folded block write its output channels-last (images;
# videos channels-last-3d), so that the output conv (to the data's few channels) runs so, forward
# and backward? On a CPU that 32 -> 3 conv is slow in the contiguous layout (forward and backward,
# batch 4: 4.2 ms against 3.1 channels-last at 64 px, 16.1 against 6.0 at 128, ad-hoc); the
# generator's whole pass was 1.04-1.08x faster at 64 px crops and 0.95-1.04x at 128
# (benchmarks/speed.py --only layouts). The interleave is a copy either way. Image training lays Z
# out channels-last instead (model.TRAIN_CHANNELS_LAST: every block), so for images this serves a
# contiguous Z (a library caller's). Video training keeps its other blocks contiguous
# (model.TRAIN_CHANNELS_LAST); its 24 -> 3 output conv took 27-36 ms forward and backward
# contiguous, 11-12 channels-last-3d at the default video crop (ad-hoc); a training iteration is
# 1.15-1.17x faster with the last block channels-last-3d, a video completion 1.29x
# (benchmarks/speed.py --only outconv).
OUTPUT_CHANNELS_LAST = {"cpu"}
# Per device type: does a float32 channels-last-3d output conv run as _split_output_conv? On a CPU
# oneDNN runs the video generator's 24 -> 3 conv (3x3x3) at 7-15% of the machine's matrix-product
# peak: with three output channels its kernels have little to vectorise over. Split, the conv's
# forward and backward took 8.4 against 11.5 ms at the default video crop (ad-hoc), the
# generator's pass 1.04-1.05x, a training iteration 1.00-1.02x, a 64-frame fp32 video sample
# 1.01-1.09x (speed.py --only outconv). bf16 ran 2-4x slower split, and 2-D training gained
# nothing (ad-hoc), so neither splits.
SPLIT_OUTPUT_CONV = {"cpu"}
# Per device type: does a channels-last interleave (above) run its own backward
# (_InterleaveChannelsLast), rather than autograd's gradient of the strided view? Measured on CPUs
# only (benchmarks/speed.py --only interleave); on CUDA no block is folded.
OWN_INTERLEAVE_BACKWARD = {"cpu"}
# Bytes of one slab of that backward's copy: ad-hoc, the channels-last gradient of a 256 px crop's
# last block copied back in 7 ms in slabs of 0.5-1 MiB, 24 ms in one piece; 2 MiB slabs were no
# faster, 4 MiB ones 1.8x slower at 512 px.
COPY_SLAB = 1 << 20


_FOLDS_MOVED: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}  # the fold matrices on other devices and dtypes


def _fold_like(fold: Tensor, w: Tensor) -> Tensor:
    """fold (a module constant) on w's device and in its dtype, copied there once: on a GPU every
    forward pass would otherwise copy it from the host."""
    if fold.device == w.device and fold.dtype == w.dtype:
        return fold
    key = (id(fold), w.device, w.dtype)
    if key not in _FOLDS_MOVED:
        _FOLDS_MOVED[key] = fold.to(w)
    return _FOLDS_MOVED[key]


def _fold_taps(fold: Tensor, w: Tensor, ups: list[int], phase_major: bool) -> Tensor:
    """w (O, I, [3,] 3, 3) with the 3 taps of each up-sampled axis (indices into the trailing
    axes) combined per output phase by fold (phase, new tap, old tap): one einsum, in w's dtype
    (sums of taps, not a product to round). Laid out (P * O, I, ...) when phase_major (the first
    up-sampled axis most significant), else (O * P, I, ...) (a pixel shuffle's order)."""
    letters = iter("abcdefghjklmnqrsuvwxyz")
    axes = [next(letters) for _ in range(w.dim() - 2)]  # w's own tap axes
    phases, taps, out_axes = [], [], list(axes)
    for a in ups:
        p, t = next(letters), next(letters)
        phases.append(p)
        taps.append(p + t + axes[a])
        out_axes[a] = t
    out = "".join(phases) + "oi" if phase_major else "o" + "".join(phases) + "i"
    spec = ",".join([*taps, "oi" + "".join(axes)]) + "->" + out + "".join(out_axes)
    with torch.autocast(w.device.type, enabled=False):
        k = torch.einsum(spec, *([_fold_like(fold, w)] * len(ups)), w)
    return k.reshape(-1, *k.shape[len(ups) + 1 :])  # the phases and O (or O and the phases) as one axis


NEAREST_FOLD = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # (phase, 2 taps, 3 taps)


def folded_weight(w: Tensor, ups: list[int]) -> Tensor:
    """The kernels of _upsampled_conv: w (O, I, [3,] 3, 3) with the 3 taps of each up-sampled axis
    (indices into the trailing axes) folded to 2 per output phase, as (P * O, I, ...), P = 2^len(ups),
    phase-major with the first up-sampled axis most significant. One einsum against the 0/1 fold
    matrices (a quarter of the time of per-phase stacks, forward and backward), in w's dtype."""
    return _fold_taps(NEAREST_FOLD, w, ups, phase_major=True)


def _upsampled_conv(conv: nn.Module, hp: Tensor, scale: tuple[int, ...], channels_last: bool = False) -> Tensor:
    """conv(pad(nearest_up(h, scale))) from hp = pad(h) (padded by one on every axis), without
    the up-sampled tensor: one convolution at h's resolution whose output channels are the
    2^k output phases of the k up-sampled axes, each with its 2-tap kernel along those axes (the
    3-tap kernel folded), then interleaved. Equal up to float rounding for replicate and circular
    padding alike (padding commutes with nearest up-sampling), with (2/3)^k of the arithmetic.
    `scale`: 1 or 2 per trailing axis. A 2-D output up-sampled along both axes is channels-last
    where hp is (CPU sampling) or `channels_last` asks for it, else contiguous."""
    d = len(scale)
    ups = [a for a, s in enumerate(scale) if s == 2]
    o = conv.out_channels
    bias = None if conv.bias is None else conv.bias.repeat(2 ** len(ups))
    y = (F.conv2d if d == 2 else F.conv3d)(hp, folded_weight(conv.weight, ups), bias)  # (B, P*O, [n+1 | n] per axis)
    size = [n - 2 for n in hp.shape[2:]]  # h's own size
    given_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
    full = (y.shape[0], o, *(n * s for n, s in zip(size, scale, strict=True)))
    if d == 2 and len(ups) == 2 and (given_last or channels_last):
        # a channels-last input stays channels-last, or the caller asked: the same gather, written into that layout
        if y.device.type in OWN_INTERLEAVE_BACKWARD:
            return _InterleaveChannelsLast.apply(y, o)
        out = torch.empty(full, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        _split_phases(out).copy_(_phase_view(y, o, ups, size))
        return out
    return _phase_view(y, o, ups, size).reshape(full)  # one copy; autograd's gradient of the view


# Linear 2x up-sampling (align_corners=False: the output at 2i + a blends the input at i and at its
# neighbour on side a, 3/4 and 1/4) then a 3-tap convolution, per output phase a: the output at
# 2i + a reads the input at i - 1, i and i + 1. LINEAR_FOLD[a][j][t]: the weight of input tap j
# (i - 1, i, i + 1) in conv tap t (-1, 0, +1), the up-sampled neighbours at the edges included
# (they are the padded input's blends, for replicate and circular padding alike).
LINEAR_FOLD = torch.tensor(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],
    ]
)  # (phase, input tap, conv tap); _fold_taps casts it to the weight's dtype and device
# Per device type, from how many input positions per channel a linear generator block folds its
# up-sampling into one convolution at the input's resolution (_linear_upsampled_conv), rather than
# interpolate, pad and convolve the up-sampled tensor: the same arithmetic without the up-sampled
# tensor and its gradient. CPU: from 16x16 (ad-hoc, one block forward and backward, batch 4,
# channels-last: 0.59x at 8x8, 1.21x at 16x16, 1.89x at 32x32, 2.24x at 64x64). CUDA: not
# measured, so never. Types not listed: never.
LINEAR_FOLD_MIN = {"cpu": 256}


def _linear_upsampled_conv(conv: nn.Module, hp: Tensor, scale: tuple[int, ...], channels_last: bool = False) -> Tensor:
    """conv(pad(linear_up(h, scale))) from hp = pad(h) (padded by one on every axis): one 3-tap
    convolution at h's resolution whose output channels are (O, the 2^k output phases of the k
    up-sampled axes), each phase's kernel the conv's taps blended by LINEAR_FOLD, then interleaved
    (a pixel shuffle). Equal up to float rounding, for replicate and circular padding alike.
    `scale`: 1 or 2 per trailing axis. `channels_last` (videos; a 2-D pixel shuffle keeps its
    input's layout by itself): hp is channels-last-3d, and so is the output (_interleave_last)."""
    d = len(scale)
    ups = [a for a, s in enumerate(scale) if s == 2]
    o = conv.out_channels
    if channels_last and d == 3:
        return _interleave_last(_conv_phase_major(conv, hp, ups), o, scale)
    k = _fold_taps(LINEAR_FOLD, conv.weight, ups, phase_major=False)  # (O * P, I, 3...)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(2 ** len(ups))
    y = (F.conv2d if d == 2 else F.conv3d)(hp, k, bias)  # (B, O * P, n...) h's own size
    if d == 2 and len(ups) == 2:
        return F.pixel_shuffle(y, 2)  # (B, O, 2 n0, 2 n1)
    b, n = y.shape[0], y.shape[2:]
    y = y.reshape(b, o, *([2] * len(ups)), *n)  # (B, O, phase per up-sampled axis, n...)
    order, shape = [0, 1], [b, o]
    for a in range(d):
        order.append(2 + len(ups) + a)
        if a in ups:
            order.append(2 + ups.index(a))
        shape.append(n[a] * scale[a])
    return y.permute(order).reshape(shape)  # (B, O, [2] t, 2 h, 2 w)


def _conv_phase_major(conv: nn.Module, hp: Tensor, ups: list[int]) -> Tensor:
    """The folded convolution of _linear_upsampled_conv for a channels-last-3d hp, its output
    channels phase-major (P * O), so that each phase's O channels lie together: (B, P * O, n...),
    channels-last-3d (the weight laid out so too: oneDNN then keeps the layout)."""
    k = _fold_taps(LINEAR_FOLD, conv.weight, ups, phase_major=True)  # (P * O, I, 3, 3, 3)
    bias = None if conv.bias is None else conv.bias.repeat(2 ** len(ups))
    return F.conv3d(hp, k.contiguous(memory_format=torch.channels_last_3d), bias)


def _interleave_last(y: Tensor, o: int, scale: tuple[int, ...]) -> Tensor:
    """y (B, P * O, n...) channels-last, phase-major, interleaved as (B, O, n * scale...),
    channels-last too. y is stored (B, n..., phase bits..., O); the output (B, per axis (n, its
    phase bit), O): one copy that moves runs of O channels. The contiguous interleave moves single
    values a channel's length apart, and the next convolution reorders it back: a 64-frame 256x256
    video sample took 2.9-3.1x as long in bf16 that way, 1.3-1.5x in fp32 (speed.py --only layouts)."""
    b, n, d = y.shape[0], y.shape[2:], len(scale)
    ups = [a for a, s in enumerate(scale) if s == 2]
    x = y.permute(0, *range(2, 2 + d), 1)  # (B, n..., P * O), a view of the storage
    x = x.reshape(b, *n, *([2] * len(ups)), o)  # (B, n..., phase bits..., O)
    order = [0]
    for a in range(d):
        order.append(1 + a)
        if a in ups:
            order.append(1 + d + ups.index(a))
    x = x.permute(*order, 1 + d + len(ups)).reshape(b, *(m * s for m, s in zip(n, scale, strict=True)), o)
    return x.permute(0, d + 1, *range(1, d + 1))  # (B, O, n * scale...), stored channels-last


def _phase_view(y: Tensor, o: int, ups: list[int], size: list[int]) -> Tensor:
    """The conv output y (B, P*O, [n+1 | n] per axis) of _upsampled_conv as (B, O, then per axis
    n_a [, 2]): out[b, o, .., 2i + p, ..] = y[b, phase * O + o, .., i + p, ..] along each up-sampled
    axis, a strided view of y (phase p's crop starts p cells in) built from y's own strides. One
    copy of it is the interleaved output, whose gradient is one scatter: per-phase slices would
    cost a zero-filled y-sized gradient each."""
    sy = y.stride()
    shape, stride = [y.shape[0], o], [sy[0], sy[1]]
    for a in range(len(size)):
        shape.append(size[a])
        stride.append(sy[2 + a])
        if a in ups:  # the phase bit of this axis: its channel block, and one cell further in
            shape.append(2)
            stride.append(sy[1] * o * 2 ** (len(ups) - 1 - ups.index(a)) + sy[2 + a])
    return y.as_strided(shape, stride, y.storage_offset())


def _split_phases(x: Tensor) -> Tensor:
    """An interleaved 2-D output (B, O, 2 n0, 2 n1) as (B, O, n0, 2, n1, 2), _phase_view's shape: a view, in any layout."""
    return x.unflatten(3, (x.shape[3] // 2, 2)).unflatten(2, (x.shape[2] // 2, 2))


def _copy_in_slabs(dst: Tensor, src: Tensor) -> None:
    """dst.copy_(src) for tensors (B, O, rows, ...), over slabs of rows of about COPY_SLAB bytes."""
    rows = max(1, COPY_SLAB * src.shape[2] // max(1, src.numel() * src.element_size()))
    for r in range(0, src.shape[2], rows):
        k = min(rows, src.shape[2] - r)
        dst.narrow(2, r, k).copy_(src.narrow(2, r, k))


class _InterleaveChannelsLast(torch.autograd.Function):
    """The interleave of a 2-D _upsampled_conv into a channels-last output, with its own backward.
    Forward: one copy per phase (1.0-1.4x faster than one copy, whose innermost loop runs over a
    phase bit's 2 cells; slabs gain nothing here). Backward: the gradient copied back into a tensor
    laid out as y, in slabs of rows (a channels-last to contiguous copy reads with a stride: in
    slabs it stays in cache, 3.4-3.5x faster at 256 and 512 px crops), zeroing only the cells no
    phase reads, where autograd's gradient of the view zero-fills all of y and copies in one
    piece. A training crop's last block, forward and backward: 1.06-1.09x at 64 px, 1.23-1.27x at
    128 px (ad-hoc); whole passes and iterations: benchmarks/speed.py --only interleave."""

    @staticmethod
    def forward(ctx, y: Tensor, o: int) -> Tensor:
        b, _, n0, n1 = y.shape  # (B, 4*O, n0 + 1, n1 + 1)
        n0, n1 = n0 - 1, n1 - 1
        out = torch.empty(b, o, 2 * n0, 2 * n1, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        dst = _split_phases(out)  # (B, O, n0, 2, n1, 2)
        src = _phase_view(y, o, [0, 1], [n0, n1])  # (B, O, n0, 2, n1, 2)
        for p, q in itertools.product((0, 1), (0, 1)):
            dst[:, :, :, p, :, q].copy_(src[:, :, :, p, :, q])  # (B, O, n0, n1)
        ctx.geometry = (y.shape, y.stride(), o)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        shape, stride, o = ctx.geometry
        n0, n1 = shape[2] - 1, shape[3] - 1
        gy = torch.empty_strided(shape, stride, dtype=g.dtype, device=g.device)  # (B, 4*O, n0 + 1, n1 + 1) as y
        _copy_in_slabs(_phase_view(gy, o, [0, 1], [n0, n1]), _split_phases(g))
        blocks = gy.unflatten(1, (2, 2, o))  # (B, p, q, O, n0 + 1, n1 + 1): phase 0 reads cells 0..n-1, phase 1 cells 1..n
        blocks[:, 0, :, :, n0].zero_()
        blocks[:, 1, :, :, 0].zero_()
        blocks[:, :, 0, :, :, n1].zero_()
        blocks[:, :, 1, :, :, 0].zero_()
        return gy, None


Slices = tuple[slice, ...]


def window_slices(
    cells: tuple[int, ...],
    wins: tuple[int, ...],
    halos: tuple[int, ...],
    up: tuple[int, ...],
    off: tuple[int, ...] | None = None,
) -> list[tuple[Slices, Slices, Slices]]:
    """The windows of a latent of `cells` per axis, `wins` cells each plus `halos` on either side:
    per window (src: its cells in the latent extended circularly by `off` per side, or the latent
    itself; keep: the part of its output that is its own, without the halo's; dst: where that part
    goes in the whole output), with the generator's up-sampling `up` per axis."""
    off = off or (0,) * len(cells)
    out = []
    for corner in itertools.product(*(range(0, n, w) for n, w in zip(cells, wins, strict=True))):
        src, keep, dst = [], [], []
        for a, c in enumerate(corner):
            e = min(c + wins[a], cells[a])
            lo = max(c - halos[a], -off[a]) + off[a]
            hi = min(e + halos[a], cells[a] + off[a]) + off[a]
            src.append(slice(lo, hi))
            t0 = (c + off[a] - lo) * up[a]
            keep.append(slice(t0, t0 + (e - c) * up[a]))
            dst.append(slice(c * up[a], e * up[a]))
        out.append((tuple(src), tuple(keep), tuple(dst)))
    return out


def _output_conv(conv: nn.Module, x: Tensor) -> Tensor:
    """The generator's output conv of x (padded): _split_output_conv where SPLIT_OUTPUT_CONV says
    so (a float32 channels-last-3d x, not under autocast), else the conv itself."""
    split = x.dim() == 5 and x.device.type in SPLIT_OUTPUT_CONV and x.dtype == torch.float32
    if split and channels_innermost(x) and not torch.is_autocast_enabled(x.device.type):
        return _split_output_conv(conv, x)
    return conv(x)


def _split_output_conv(conv: nn.Module, x: Tensor) -> Tensor:
    """conv(x) for a conv with few output channels (no padding, stride 1), its last kernel axis
    moved into the output channels: a conv whose kernel has width 1 and O * k outputs (channel
    o * k + j: output o's column tap j) over every column, then the k column-shifted slices of
    those summed. The same arithmetic, plus k - 1 additions per output value; the same numbers up
    to float rounding. The bias rides on tap 0."""
    w = conv.weight  # (O, I, ..., k)
    o, k = w.shape[0], w.shape[-1]
    taps = w.movedim(-1, 1).flatten(0, 1).unsqueeze(-1)  # (O * k, I, ..., 1)
    bias = None if conv.bias is None else F.pad(conv.bias[:, None], (0, k - 1)).flatten()  # (O * k,): b_o on tap 0
    y = (F.conv2d if w.dim() == 4 else F.conv3d)(x, taps, bias).unflatten(1, (o, k))  # (B, O, k, ..., W)
    n = x.shape[-1] - k + 1
    out = y[:, :, 0, ..., :n]
    for j in range(1, k):
        out = out + y[:, :, j, ..., j : j + n]
    return out  # (B, O, ..., n)


class Generator(nn.Module):
    """Y = g(Z) (B, C, [T,] H, W) from Z (B, z_channels, [t,] h, w)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dims
        k3 = (3,) * d
        self.inp = _conv(d, cfg.z_channels, cfg.g_widths[0], k3)
        self.latent_convs = nn.ModuleList(_conv(d, cfg.g_widths[0], cfg.g_widths[0], k3) for _ in range(cfg.g_latent_convs))
        self.blocks = nn.ModuleList()
        cin = cfg.g_widths[0]
        for w in cfg.g_widths:
            self.blocks.append(_conv(d, cin, w, k3))
            cin = w
        self.out = _conv(d, cin, cfg.channels, k3)

    def _scale(self, i: int) -> tuple[int, ...]:
        if self.cfg.dims == 2:
            return (2, 2)
        return (self.cfg.g_time_up[i], 2, 2)

    def forward(self, z: Tensor, wrap: tuple[bool, ...] | None = None) -> Tensor:
        d = self.cfg.dims
        wrap = wrap or (False,) * d
        one = (1,) * d
        # a video Z laid out channels-last-3d (CPU sampling, model.SAMPLE_CHANNELS_LAST) keeps that
        # layout through every block; the input conv may drop it (16 channels in: not oneDNN's)
        last3 = d == 3 and channels_innermost(z)
        h = F.leaky_relu(self.inp(pad(z, one, wrap)), self.cfg.slope)  # (B, w0, [t,] h, w)
        if last3:
            h = h.contiguous(memory_format=torch.channels_last_3d)
        for conv in self.latent_convs:
            h = h + F.leaky_relu(conv(pad(h, one, wrap)), self.cfg.slope)  # residual, same shape
        for i, conv in enumerate(self.blocks):
            scale = self._scale(i)
            if self.cfg.g_upsample == "nearest" and h[0, 0].numel() >= SUBPIXEL_MIN.get(h.device.type, math.inf):
                last = i == len(self.blocks) - 1 and h.device.type in OUTPUT_CHANNELS_LAST  # the output conv's layout
                h = _upsampled_conv(conv, pad(h, one, wrap), scale, last)  # (B, w, [2t,] 2h, 2w), the same numbers
            elif self.cfg.g_upsample == "linear" and h[0, 0].numel() >= LINEAR_FOLD_MIN.get(h.device.type, math.inf):
                # a video's last block writes channels-last-3d for the output conv (OUTPUT_CHANNELS_LAST)
                out_last = d == 3 and i == len(self.blocks) - 1 and h.device.type in OUTPUT_CHANNELS_LAST
                h = _linear_upsampled_conv(conv, pad(h, one, wrap), scale, last3 or out_last)  # (B, w, [2t,] 2h, 2w)
            else:
                h = conv(pad(self._up(h, scale, wrap), one, wrap))  # (B, w, [2t,] 2h, 2w)
            h = F.leaky_relu(h, self.cfg.slope)
            if last3:
                h = h.contiguous(memory_format=torch.channels_last_3d)  # a no-op after a folded block
        return _output_conv(self.out, pad(h, one, wrap))  # (B, C, [T,] H, W), standardised pixel scale

    def _up(self, h: Tensor, scale: tuple[int, ...], wrap: tuple[bool, ...]) -> Tensor:
        if self.cfg.g_upsample == "nearest":
            return F.interpolate(h, scale_factor=scale, mode="nearest")
        # linear: pad one cell first so wrapped axes interpolate across the seam, then crop
        mode = "bilinear" if self.cfg.dims == 2 else "trilinear"
        h = F.interpolate(pad(h, (1,) * self.cfg.dims, wrap), scale_factor=scale, mode=mode, align_corners=False)
        crop = tuple(slice(s, h.shape[2 + i] - s) for i, s in enumerate(scale))
        return h[(slice(None), slice(None)) + crop]

    def halo(self, axis: int = -1) -> int:
        """Latent cells on each side that can change an output pixel of a cell, along one axis of
        the trailing [t,] h, w: each 3-conv reaches one cell of its own resolution (1 / the
        up-sampling so far, in latent cells), plus one for linear up-sampling's support."""
        reach, up = Fraction(1 + self.cfg.g_latent_convs), 1  # the input conv and latent convs
        for i in range(len(self.blocks)):
            up *= self._scale(i)[axis]
            reach += Fraction(1, up)  # the block's conv after up-sampling
        reach += Fraction(1, up)  # the output conv
        return math.ceil(reach) + (1 if self.cfg.g_upsample == "linear" else 0)

    def windowed(
        self,
        z: Tensor,
        window: int,
        wrap: tuple[bool, ...] | None = None,
        time_window: int | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """g(Z) computed over windows of `window` latent cells in space (and `time_window` in time
        for videos; None = all of it), each with a halo, stitched: equal to a whole pass up to
        float rounding, with memory bounded by the window. `callback(done, windows)` after each."""
        d = self.cfg.dims
        wrap = tuple(wrap) if wrap else (False,) * d
        wins = (window, window) if d == 2 else (time_window or z.shape[2], window, window)
        sp = tuple(z.shape[2:])
        if all(n <= w for n, w in zip(sp, wins, strict=True)):
            y = self(z, wrap)
            if callback is not None:
                callback(1, 1)
            return y
        split = tuple(n > w for n, w in zip(sp, wins, strict=True))
        halos = tuple(self.halo(a) if split[a] else 0 for a in range(d))
        up = self.cfg.up
        # wrapped axes that are split: pad circularly once (by index, so any halo works), so every
        # window sees its true neighbours; wrapped axes that are whole: the network pads them
        off = tuple(h if w else 0 for h, w in zip(halos, wrap, strict=True))
        zp = circular_extend(z, off)
        if channels_innermost(z):  # windows of a channels-last Z run channels-last (index_select may not keep it)
            zp = zp.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
        inner = tuple(w and not s for w, s in zip(wrap, split, strict=True))
        out = None
        windows = window_slices(sp, wins, halos, up, off)
        for k, (src, keep, dst) in enumerate(windows):
            yw = self(zp[(..., *src)], inner)
            if out is None:  # videos: in the windows' layout (a copy between layouts is a strided gather)
                fmt = torch.channels_last_3d if d == 3 and channels_innermost(yw) else torch.contiguous_format
                shape = (*yw.shape[:2], *(n * u for n, u in zip(sp, up, strict=True)))
                out = torch.empty(shape, dtype=yw.dtype, device=yw.device, memory_format=fmt)
            out[(..., *dst)] = yw[(..., *keep)]
            if callback is not None:
                callback(k + 1, len(windows))
        return out

    def latent_shape(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Latent (z_channels, [t,] h, w) whose output covers `size` ([T,] H, W)."""
        return (self.cfg.z_channels, *(-(-s // u) for s, u in zip(size, self.cfg.up, strict=True)))
