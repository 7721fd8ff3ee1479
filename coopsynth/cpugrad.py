"""The descriptor's energy and its input gradient on a CPU in closed form, for Langevin.

Langevin needs df/dY at every step and nothing else: no weight gradients. Autograd gets it by
recording the forward pass and running generic backward kernels, which on a CPU re-lay the
weights into oneDNN's blocked format twice per layer and step, run the padding's backward as a
scatter, and keep every activation's graph. For this network the input gradient has a short
closed form. With a_i = conv_i(pad(h_{i-1})), h_i = leaky(a_i), h_{-1} = Y and
f = sum over layers and positions of u_i . h_i (+ biases), u_i the read-out weights of layer i:

    g_i    = leaky'(a_i) * (u_i + pad^T conv_{i+1}^T g_{i+1})     (g_last: the u term alone)
    df/dY  = pad^T conv_0^T g_0

`PackedDescriptor` computes f and df/dY like that for one input shape: the weights are laid out
for oneDNN once (per shape, and again whenever an optimiser step changes them), each forward
convolution runs with its leaky ReLU fused, and each conv^T reads its packed weights.
leaky'(a) is read from h (same sign, the slope being positive). The same numbers as autograd up
to float rounding; the speed-up is in benchmarks/RESULTS.md (Speed, "Langevin revision paths").
Under bf16 precision (CPUs with bf16 units) it computes in bf16 as autocast would: packed bf16
weights, bf16 activations and gradient, float32 f and df/dY out.

The packed kernels are private PyTorch operators (`torch.ops.mkldnn`, the ones inductor uses on
CPUs). Where they are missing, fail, or disagree with autograd on a shape's first use, the caller
goes back to autograd (`CoopModel.revise`, through `PackedGrads`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from .accel import agrees_in_norm, cpu_has_bf16
from .langevin import EnergyGrad
from .networks import Descriptor, depth_stride, depth_to_space, depth_weight, folds_to_depth, pad, space_to_depth

Tensor = torch.Tensor
KERNELS = (  # torch.ops.mkldnn operators used here
    "_reorder_convolution_weight",
    "_convolution_pointwise",
    "_reorder_convolution_transpose_weight",
    "_convolution_transpose_pointwise",
)
MAX_SHAPES = 8  # packed shapes kept per model (training uses one or two; windows and previews more)
BIAS_FOLD_MIN = 1 << 21  # conv^T adds the read-out below as its bias from outputs of this many values (PackedDescriptor)
DECONV_TUNE_DTYPES = (torch.bfloat16,)  # where _pick_padding runs (float32: at most 1.35x, below DECONV_SWITCH)
DECONV_TUNE_MIN = 1 << 21  # ... for a layer input of this many values or more (a 1024x1024 window's is 9.2 million)
DECONV_SWITCH = 0.5  # _pick_padding leaves the natural output padding only for one this much faster
_PADDINGS: dict[tuple, list[int]] = {}  # _pick_padding's choices, per shape, for this process


def unpad(g: Tensor, amount: tuple[tuple[int, int], ...], wrap: tuple[bool, ...]) -> Tensor:
    """The adjoint of `networks.pad`: fold the gradient on a padded tensor's border back onto the
    positions it was copied from (the edge for replicated axes, the far side for circular ones).
    Works in place on g, which it consumes, and returns a view of it."""
    n = len(amount)
    for i, ((lo, hi), w) in enumerate(zip(amount, wrap, strict=True)):
        if not (lo or hi):
            continue
        ax = g.dim() - n + i
        size = g.shape[ax] - lo - hi
        if w:  # the lo entries before are copies of the last lo, the hi after of the first hi
            if lo:
                g.narrow(ax, lo + size - lo, lo).add_(g.narrow(ax, 0, lo))
            if hi:
                g.narrow(ax, lo, hi).add_(g.narrow(ax, lo + size, hi))
        else:  # replicated: every padded entry is a copy of the edge
            if lo:
                g.narrow(ax, lo, 1).add_(_fold(g.narrow(ax, 0, lo), ax))
            if hi:
                g.narrow(ax, lo + size - 1, 1).add_(_fold(g.narrow(ax, lo + size, hi), ax))
        g = g.narrow(ax, lo, size)
    return g


def _unbias(g: Tensor, amount: tuple[tuple[int, int], ...], u: Tensor) -> None:
    """Take u (1, C, 1, ...) off every entry of a padded g's border (`networks.pad`'s amount, (lo,
    hi) per axis), each entry once, in place: the border is made of copies, whose gradient `unpad`
    folds onto what they copy, and u belongs to each position of the layer's input once."""
    n = len(amount)
    for i, (lo, hi) in enumerate(amount):
        ax = g.dim() - n + i
        size = g.shape[ax]
        if lo:
            g.narrow(ax, 0, lo).sub_(u)
        if hi:
            g.narrow(ax, size - hi, hi).sub_(u)
        g = g.narrow(ax, lo, size - lo - hi)  # the corners were done with this axis


def _fold(border: Tensor, ax: int) -> Tensor:
    """The sum of a border's slices along ax (kept as one slice), without a reduction for one."""
    return border if border.shape[ax] == 1 else border.sum(ax, keepdim=True)


def unsupported(d: Descriptor, y: Tensor, dtype: torch.dtype = torch.float32) -> str | None:
    """Why the closed form does not apply to this descriptor and input, computing in `dtype`
    (float32, or bfloat16 as under bf16 autocast), or None: it does."""
    if y.device.type != "cpu" or y.dtype != torch.float32:
        return "not a float32 CPU tensor"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch has no oneDNN"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"no closed form in {dtype}"
    if dtype == torch.bfloat16 and not cpu_has_bf16():
        return "this CPU has no bfloat16 units"
    if d.cfg.slope <= 0:
        return "the leaky ReLU slope is not positive"
    if d.layers[0].weight.dtype != torch.float32:
        return "the weights are not float32"
    ops = torch.ops.mkldnn
    for name in KERNELS:
        if not hasattr(ops, name):
            return f"this PyTorch has no torch.ops.mkldnn.{name}"
    return None


def _pick_padding(w: Tensor, da_shape: list[int], natural: list[int], stride: list[int]) -> list[int]:
    """The output padding for conv^T of one layer and shape, in bf16: the natural one, or 1 on
    every strided axis whose natural padding is 0 (one more row and column, which get no gradient
    and are cropped) where that runs in under DECONV_SWITCH of the time. oneDNN's bf16 transposed
    convolution (brgemm on AMX) runs some output sizes 3-5x slower than one row and column more:
    a 1024x1024 refinement window's second layer took 40 ms a step, 8.7 ms with the extra row and
    column (benchmarks/RESULTS.md). The two are timed once per shape and process (on zeros, the
    better of two runs each); the wide margin keeps the choice the same from run to run, and the
    results of both agree up to bf16 rounding. Images only: a video window's layers ran fastest
    with their natural padding (1.4-2.3x faster than with a frame, row or column more)."""
    free = [i for i, (p, s) in enumerate(zip(natural, stride, strict=True)) if p == 0 and s > 1]
    if not free:
        return natural
    key = (tuple(da_shape), tuple(w.shape), tuple(stride), tuple(natural), torch.get_num_threads())
    if key not in _PADDINGS:
        wide = [1 if i in free else p for i, p in enumerate(natural)]
        da = torch.zeros(da_shape, dtype=w.dtype)  # (B, O, ...) the layer's output shape
        ops, zeros, ones = torch.ops.mkldnn, [0] * len(stride), [1] * len(stride)
        took = []
        for op in (natural, wide):
            packed = ops._reorder_convolution_transpose_weight(w, zeros, op, stride, ones, 1, da_shape)
            runs = []
            for _ in range(2):  # the first includes oneDNN's set-up for the shape
                t = time.perf_counter()
                ops._convolution_transpose_pointwise(da, packed, None, zeros, op, stride, ones, 1, "none", [], "")
                runs.append(time.perf_counter() - t)
            took.append(min(runs))
        _PADDINGS[key] = wide if took[1] < DECONV_SWITCH * took[0] else natural
    return _PADDINGS[key]


class _Layer:
    """One descriptor layer planned for one input shape, computing in `dtype`."""

    def __init__(self, d: Descriptor, i: int, shape: tuple[int, ...], dtype: torch.dtype):
        layer = d.layers[i]
        self.pads = d._pads(layer)  # ((lo, hi) per axis)
        padded = tuple(s + lo + hi for s, (lo, hi) in zip(shape[2:], self.pads, strict=True))
        self.depth = folds_to_depth(layer, padded)  # computed on space_to_depth of the padded input
        w = (depth_weight(layer.weight) if self.depth else layer.weight).to(dtype)  # (O, I, [kt,] k0, k1)
        stride = depth_stride(layer) if self.depth else tuple(layer.stride)
        x_size = (*padded[:-2], padded[-2] // 2, padded[-1] // 2) if self.depth else padded
        x_shape = [shape[0], w.shape[1], *x_size]
        out = tuple((n - k) // s + 1 for n, k, s in zip(x_size, w.shape[2:], stride, strict=True))
        natural = [n - ((o - 1) * s + k) for n, o, k, s in zip(x_size, out, w.shape[2:], stride, strict=True)]
        self.stride = list(stride)
        self.zeros = [0] * len(stride)
        self.ones = [1] * len(stride)
        self.x_size = list(x_size)
        self.x_numel = math.prod(x_shape)  # values of the (padded) input, and of conv^T's output
        ops = torch.ops.mkldnn
        with torch.no_grad():
            self.w_fwd = ops._reorder_convolution_weight(w.contiguous(), self.zeros, self.stride, self.ones, 1, x_shape)
            da_shape = [shape[0], w.shape[0], *out]
            self.out_padding = natural
            if dtype in DECONV_TUNE_DTYPES and len(stride) == 2 and self.x_numel >= DECONV_TUNE_MIN:
                self.out_padding = _pick_padding(w.contiguous(), da_shape, natural, self.stride)
            self.w_bwd = ops._reorder_convolution_transpose_weight(
                w.contiguous(), self.zeros, self.out_padding, self.stride, self.ones, 1, da_shape
            )
        self.natural_padding = natural
        self.cropped = self.out_padding != natural  # conv^T then writes an extra row or column, cut off
        self.bias = layer.bias.detach().to(dtype)
        self.read_out = d.heads[i].weight.detach().reshape(1, -1, *(1,) * len(stride))  # u_i (1, O, 1, ...), float32
        self.read_out_c = self.read_out.to(dtype)  # the same in the computing dtype, for the gradient
        self.read_bias = d.heads[i].bias.detach()  # (1,)
        self.out_shape = (shape[0], w.shape[0], *out)


class PackedDescriptor:
    """f(Y) and df/dY of a descriptor for float32 inputs of one shape (see the module docstring).
    `dtype` bfloat16 computes as bf16 autocast does: the convolutions, activations and gradient in
    bf16 (oneDNN accumulates in float32), f and the returned df/dY in float32."""

    def __init__(
        self, d: Descriptor, shape: tuple[int, ...], wrap: tuple[bool, ...] | None = None, dtype: torch.dtype = torch.float32
    ):
        self.wrap = tuple(wrap) if wrap else (False,) * d.cfg.dims
        self.slope = d.cfg.slope
        self.dtype = dtype
        self.layers: list[_Layer] = []
        for i in range(len(d.layers)):
            layer = _Layer(d, i, shape, dtype)
            self.layers.append(layer)
            shape = layer.out_shape
        # the read-outs' biases, summed over every layer's positions: f's constant term, (1,)
        self.f_bias = sum(math.prod(L.out_shape[2:]) * L.read_bias for L in self.layers)
        # conv^T of layer i adds u_{i-1}, the read-out of its input, as its bias (df/dh_{i-1} =
        # u_{i-1} + pad^T conv_i^T g_i) where its output has BIAS_FOLD_MIN values or more:
        # oneDNN fuses it, where a separate broadcast add of a large bf16 tensor took as long as
        # the layer's forward convolution; below that, the border correction costs more calls
        # than it saves. (I,), or (4I,) where the layer runs on space_to_depth of its input
        # (channel 4c + 2p + q belongs to c); None: added to g by the loop
        self.biases: list[Tensor | None] = [None] + [
            below.read_out_c.flatten().repeat_interleave(4 if L.depth else 1) if L.x_numel >= BIAS_FOLD_MIN else None
            for below, L in zip(self.layers[:-1], self.layers[1:], strict=True)
        ]

    @torch.no_grad()
    def __call__(self, y: Tensor, want_f: bool = True) -> tuple[Tensor | None, Tensor]:
        """(f (B,), df/dY like y); f is None where not `want_f` (a Langevin step without a
        callback never reads it: its reductions cost about 4% of a 64 px step)."""
        ops = torch.ops.mkldnn
        hs = []
        h = y.contiguous().to(self.dtype)  # (B, C, [T,] H, W)
        for L in self.layers:
            x = pad(h, L.pads, self.wrap)
            if L.depth:
                x = space_to_depth(x)
            h = ops._convolution_pointwise(x, L.w_fwd, L.bias, L.zeros, L.stride, L.ones, 1, "leaky_relu", [self.slope], "")
            hs.append(h)  # (B, O, ...) halved
        f = self.f_bias.expand(y.shape[0]) if want_f else None  # (B,)
        g = None
        for i in reversed(range(len(self.layers))):
            L, h = self.layers[i], hs[i]
            if want_f:
                f = f + h.flatten(2).sum(2, dtype=torch.float32) @ L.read_out.flatten()
            if g is None:  # the top layer: df/dh = u_i
                dh = L.read_out_c.expand_as(h)
            else:  # df/dh = u_i + what came down: u_i is in g already where the layer above took it as its bias
                dh = g if self.biases[i + 1] is not None else g.add_(L.read_out_c)
            da = torch.ops.aten.leaky_relu_backward(dh, h, self.slope, False)  # df/da
            gx = ops._convolution_transpose_pointwise(
                da, L.w_bwd, self.biases[i], L.zeros, L.out_padding, L.stride, L.ones, 1, "none", [], ""
            )  # df/d(the padded input) + u_{i-1} (the read-out of the layer below, as a fused bias), (B, I, ...) doubled
            if L.cropped:
                gx = gx[(..., *(slice(0, n) for n in L.x_size))]
            if L.depth:
                gx = depth_to_space(gx)
            if self.biases[i] is not None:  # the border entries are copies of others: u_{i-1} off them, before they fold
                _unbias(gx, L.pads, self.layers[i - 1].read_out_c)
            g = unpad(gx, L.pads, self.wrap)  # df/d(the layer's input)
        return f, g.float()


def grad_agrees(fast: Tensor, ref: Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Does a closed-form gradient agree with autograd's? In norm: a leaky ReLU input within
    rounding of zero may take the other slope in either computation, which moves a few elements
    by a lot; a wrong kernel or layout is off by about the whole gradient. bf16 gets a looser
    bound: the closed form and autocast's autograd both round to bf16, differently (within 0.4%
    of each other in tests/test_cpugrad.py, and 0.4-3% from the exact gradient)."""
    return agrees_in_norm(fast, ref, ref.double().norm(), 0.05 if dtype == torch.bfloat16 else 0.02)


class PackedGrads:
    """PackedDescriptors of one model, per (shape, wrap), packed afresh when the weights change.

    `for_input(y, wrap, dtype)`, called once per Langevin revision, returns the callable
    (y, want_f) -> (f, df/dy) to use (`langevin.EnergyGrad`), or None for autograd. The weights
    are compared by value with those last packed, so any change (an optimiser step, a roll-back,
    an edit through `.data`) is seen. The first call of each shape is checked against autograd; a
    failure or disagreement sends that shape back to autograd for good and is noted once (`note`:
    the run's eager-fallback list)."""

    def __init__(
        self, descriptor: Descriptor, energy: Callable[[Tensor, tuple[bool, ...] | None], Tensor], note: Callable[[str], None]
    ):
        self.descriptor = descriptor
        self.energy = energy  # (y, wrap) -> f: the autograd reference
        self.note = note
        self.weights: list[Tensor] = []  # copies of the weights the cache was packed from
        self.cache: dict[tuple, PackedDescriptor] = {}
        self.checked: set[tuple] = set()
        self.broken: set[tuple] = set()

    def for_input(self, y: Tensor, wrap: tuple[bool, ...] | None, dtype: torch.dtype = torch.float32) -> EnergyGrad | None:
        why = unsupported(self.descriptor, y, dtype)
        if why is not None:
            self.note(f"closed-form CPU gradient not used: {why}")
            return None
        now = [p.detach() for p in self.descriptor.parameters()]
        if len(now) != len(self.weights) or not all(torch.equal(a, b) for a, b in zip(now, self.weights, strict=True)):
            self.cache.clear()
            self.weights = [p.clone() for p in now]
        return lambda x, want_f=True: self._call(x, wrap, dtype, want_f)

    def _call(self, y: Tensor, wrap, dtype: torch.dtype, want_f: bool) -> tuple[Tensor | None, Tensor]:
        key = (tuple(y.shape), tuple(wrap or ()), dtype)
        if key not in self.broken:
            try:
                packed = self.cache.get(key)
                if packed is None:
                    if len(self.cache) >= MAX_SHAPES:
                        self.cache.pop(next(iter(self.cache)))
                    packed = self.cache[key] = PackedDescriptor(self.descriptor, key[0], wrap, dtype)
                f, g = packed(y, want_f)
            except Exception as e:  # a missing or failing kernel: autograd for this shape from now on
                self.broken.add(key)
                first = str(e).splitlines()[0][:100] if str(e) else ""
                self.note(f"closed-form CPU gradient failed: {type(e).__name__}: {first}")
            else:
                if key in self.checked:
                    return f, g
                self.checked.add(key)
                ref_f, ref_g = self._autograd(y, wrap)
                if grad_agrees(g, ref_g, dtype):
                    return f, g
                self.broken.add(key)
                self.cache.pop(key, None)
                self.note("the closed-form CPU gradient disagreed with autograd")
                return ref_f, ref_g
        return self._autograd(y, wrap)

    def _autograd(self, y: Tensor, wrap) -> tuple[Tensor, Tensor]:
        y = y.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.energy(y, wrap)
            (g,) = torch.autograd.grad(f.sum(), y)
        return f.detach(), g
