"""The cooperative trainer: one `CoopTrainer.step()` is one CoopNets iteration.

    1. Z ~ N(0, I), Y0 = g(Z)                       the generator proposes
    2. Y = Langevin on the descriptor from Y0      the descriptor revises
    3. theta += grad [mean f(observed) - mean f(Y)] the descriptor learns from the revision
    4. alpha -= grad |Y - g(Z)|^2 / (2 s^2)         the generator learns to reproduce it

Observed data are random crops of one texture image (C, H, W) or one video (C, T, H, W),
standardised per channel. An optional mask (1 = visible) restricts both the descriptor's data term
and the generator's loss to visible pixels (completion). The trainer knows nothing of files,
progress bars or signals: the caller drives `step()` and saves `state_dict()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from . import distributed
from .accel import Accel
from .errors import CoopsynthError
from .histogram import quantile_function
from .model import CoopModel
from .networks import NetConfig

Tensor = torch.Tensor
RUNAWAY = 50.0  # a Langevin revision this large (RMS, standardised pixels) means a chain ran away
MIN_CROP_POSITIONS = 256  # masked data: the fewest crop positions training draws from (see _crop_starts)
WATCHDOG_WARMUP = 100  # iterations before the watchdog looks: early energies swing (leads of 0.5) while the nets find their feet
WATCHDOG_FLOOR = 1 / 16  # once collapses have cut the learning rates to this (4 halvings), the next one ends the run


@dataclass
class TrainConfig:
    net: NetConfig = field(default_factory=NetConfig)  # both networks' shapes
    crop: int = 64  # side of the random training crops, pixels (videos: space)
    crop_frames: int = 16  # videos: frames per training crop
    batch: int = 4  # Langevin chains per iteration, each started from g(Z) with a fresh Z
    steps: int = 1200  # training iterations
    langevin_steps: int = 6  # descriptor Langevin steps per iteration (and default sampling refinement)
    delta: float = 1.0  # Langevin step size: the gradient step is delta^2 / 2 (standardised pixels)
    sigma: float = 10.0  # std of the Gaussian reference q(Y) (standardised pixels)
    noise: float = 0.02  # scale of the Langevin noise; 1 = exact Langevin (see README: short-run)
    s: float = 0.3  # generator noise std in the MCMC-teaching loss |Y - g(Z)|^2 / (2 s^2)
    lr_d: float = 2e-3  # descriptor Adam learning rate
    lr_g: float = 3e-3  # generator Adam learning rate
    beta1: float = 0.5  # Adam beta1 for both networks
    energy_reg: float = 0.1  # penalty on squared mean per-position energies: stops the descriptor running away
    lr_decay: float = 0.1  # learning rates fall to this fraction along a cosine over `steps`
    balance: float = 0.0  # hold the descriptor while its lead f_obs - f_syn (EMA) exceeds this; 0 = never (measured worse)
    watchdog: float = 2.0  # a lead f_obs - f_syn (EMA) above this is a collapse: back to a balanced state, lr halved; 0 = off
    crop_pick: str = "any"  # masked data: "any" crop position, or the most "visible" ones (measured no steadier)
    sample_refine: int | None = None  # Langevin steps after the generator when sampling; None = langevin_steps
    sample_smooth: float = 0.0  # videos: latent correlation over time when sampling (Gaussian width, latent frames); slows motion
    match_motion: int = 0  # videos: at the end, set sample_refine (0..N) or sample_smooth so that samples move like the input
    matched_refine: int | None = None  # videos: sample_refine of histogram-matched samples (match_motion fits it); None = as raw
    matched_smooth: float | None = None  # videos: sample_smooth of matched samples (match_motion fits it); None = as raw
    clip: float = 0.0  # cap each network's gradient norm at this multiple of its running mean; 0 = off

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["net"] = NetConfig.from_dict(d["net"])
        return cls(**d)

    @property
    def refine(self) -> int:
        """Default sampling refinement."""
        return self.langevin_steps if self.sample_refine is None else self.sample_refine

    def sampling(self, matched: bool = False) -> tuple[int, float]:
        """Default (refinement, smoothing) of samples, histogram-matched or not: matching changes
        a video's contrast and so how much it seems to move, and match_motion fits each apart."""
        if matched and self.matched_refine is not None:
            return self.matched_refine, self.sample_smooth if self.matched_smooth is None else self.matched_smooth
        return self.refine, self.sample_smooth

    def langevin(self, delta: float | None = None) -> dict:
        """Keyword arguments of `CoopModel.revise` for these settings."""
        return {"delta": self.delta if delta is None else delta, "sigma": self.sigma, "noise": self.noise}


def preset(name: str, dims: int = 2, channels: int = 3) -> TrainConfig:
    """Named trade-offs. `default` is what the README's quality numbers are measured on."""
    if dims == 2:
        # linear up-sampling: nearest left blocky streaks (wood) and the same small worms on most
        # inputs; over 14 textures at 3 training seeds linear lowered the median SWD ratio at each
        # seed (1.25 / 1.16 / 1.23 -> 1.11 / 1.10 / 1.14), per texture 23 better and 19 worse, at
        # 1.14x the time per iteration (RESULTS.md, "Linear up-sampling in the image generator")
        base = TrainConfig(net=NetConfig(dims=2, channels=channels, g_upsample="linear"))
    else:  # videos: 3-D networks cost ~T times more per crop; smaller widths and crops keep a run in minutes
        # linear up-sampling: with nearest, the 4x up-sampling over time came out as blocks of 4
        # frames and the flame came out green; sample_refine 0: each refinement step adds flicker,
        # (motion ratio 0.76 -> 1.78 on foliage, 1.59 -> 2.59 on the flame for 0 -> 6 steps; RESULTS.md)
        net = NetConfig(dims=3, channels=channels, g_widths=(48, 32, 24), d_widths=(24, 48, 96), g_upsample="linear")
        # clip: without it a video run diverged every few hundred iterations (rolled back to ever
        # smaller Langevin steps until the descriptor won and the generator went flat); on textures
        # it was measured no better (--quick: 1.61 / 1.37 / 3.14 -> 1.75 / 1.02 / 3.66), so off there
        # match_motion: the generator's own videos move too little on some clips (foliage 0.50) and
        # too much on others (the flame, 1.6); refinement adds motion and a latent correlation over
        # time removes it, so the run picks one of them (benchmarks/RESULTS.md)
        base = TrainConfig(net=net, crop=48, crop_frames=16, batch=2, steps=1200, clip=3.0, sample_refine=0, match_motion=6)
    if name == "fast":
        return replace(base, steps=base.steps // 4)
    if name == "default":
        return base
    if name == "quality":
        return replace(base, steps=base.steps * 3, batch=base.batch * 2)
    raise CoopsynthError(f"unknown preset '{name}' (use fast, default or quality)")


def with_overrides(cfg: TrainConfig, **kw) -> TrainConfig:
    """A copy of cfg with the non-None keyword values replaced."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


def crop_size(cfg: TrainConfig, shape: tuple[int, ...], what: str = "the input") -> tuple[int, ...]:
    """Training crop ([T,] H, W) for data of spatial `shape`: cfg.crop (and crop_frames), shrunk to
    the data, a multiple of the generator's up-sampling factor; an error naming `what` where the
    data is smaller than one factor."""
    n = cfg.net
    want = (cfg.crop, cfg.crop) if n.dims == 2 else (cfg.crop_frames, cfg.crop, cfg.crop)
    axes = ("height", "width") if n.dims == 2 else ("frames", "height", "width")
    out = []
    for w, have, u, axis in zip(want, shape, n.up, axes, strict=True):
        c = min(w, have) // u * u
        if c < u:
            unit = "frames" if axis == "frames" else "pixels"
            raise CoopsynthError(f"{what}: {axis} {have} {unit} is too small to learn from (the minimum is {u})")
        out.append(c)
    return tuple(out)


def standardise_stats(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (C,) of data (C, ...) in [0, 1], over visible pixels if masked."""
    flat = x.flatten(1)
    if mask is None:
        return flat.mean(1), flat.std(1).clamp_min(0.02)
    m = mask.expand_as(x).flatten(1).float()
    n = m.sum(1).clamp_min(1)
    mean = (flat * m).sum(1) / n
    var = ((flat - mean[:, None]) ** 2 * m).sum(1) / n
    return mean, var.sqrt().clamp_min(0.02)


class CoopTrainer:
    """Owns a CoopModel, both optimisers, the data and the RNG; `step()` runs one iteration."""

    def __init__(
        self,
        data: Tensor,
        cfg: TrainConfig,
        device: str | torch.device = "cpu",
        seed: int = 0,
        mask: Tensor | None = None,
        shards: tuple[int, ...] = (0,),
        accel: Accel | None = None,
        weights: Tensor | None = None,
    ):
        """`shards`: the random streams this process draws from (crops, latents, Langevin noise),
        cfg.batch split evenly over them. One process with shards (0, 1) draws what two
        data-parallel processes with shards (0,) and (1,) draw together. `weights` (C,): each
        channel standardised to that std instead of 1 (a larger one weighs more in both networks'
        losses against the same Langevin noise; see `pipeline.map_weights`)."""
        dims = data.dim() - 1
        if dims != cfg.net.dims or data.shape[0] != cfg.net.channels:
            raise CoopsynthError(
                f"data of shape {tuple(data.shape)} does not fit a {cfg.net.dims}-D network with {cfg.net.channels} channels"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        if cfg.batch % len(shards):
            raise CoopsynthError(f"batch {cfg.batch} does not split evenly over {len(shards)} shards")
        self.shards = tuple(shards)
        mean, std = standardise_stats(data, mask)
        if weights is not None:
            std = std / weights.to(std)
        self.quantiles = quantile_function(data, mask)  # (C, n): for histogram-matched samples
        self._begin(seed, mean, std, accel)
        self.data = self.model.normalise(data.to(self.device))  # (C, [T,] H, W) standardised
        self.mask = None if mask is None else mask.to(self.device).float().expand_as(data[:1]).contiguous()  # (1, [T,] H, W)
        if self.mask is not None:
            self.data = self.data * self.mask  # hidden pixels never reach a network
        self.crop_size = crop_size(cfg, tuple(data.shape[1:]))  # (T,) H, W
        self.starts = self._crop_starts()
        self.progress: Callable[[], float] | None = None  # fraction of the run done, if not by steps

    def _begin(self, seed: int, mean: Tensor, std: Tensor, accel: Accel | None) -> None:
        """Initial weights, optimisers, random streams and counters, all from `seed`."""
        cfg = self.cfg
        torch.manual_seed(seed)  # network initialisation: the same in every process
        self.gens = [torch.Generator(device=self.device).manual_seed(seed + 7919 * s) for s in self.shards]
        self.gen = self.gens[0]
        self.model = CoopModel(cfg.net, mean, std, self.device, accel)
        self.model.quantiles = self.quantiles
        betas = (cfg.beta1, 0.999)
        self.opt_d = torch.optim.Adam(self.model.descriptor.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=cfg.lr_g, betas=betas)
        self.step_count = 0
        self.delta = cfg.delta  # current step size; lowered after a divergence
        self.gap = 0.0  # moving average of f_obs - f_syn per position: the descriptor's lead
        self.lead = 0.0  # the last iteration's f_obs - f_syn per position (the moving average lags it)
        self.lr_scale = 1.0  # halved at each collapse the watchdog catches
        self.grad_norms = [0.0, 0.0]  # running mean gradient norm of the descriptor, the generator

    def restart(self, seed: int) -> None:
        """Training afresh: new initial weights, optimisers and random streams from `seed`, on the
        same data, settings and shards (what a new trainer with that seed starts from)."""
        self._begin(seed, self.model.mean, self.model.std, self.model.accel)

    @property
    def descriptor(self):
        return self.model.descriptor

    @property
    def generator(self):
        return self.model.generator

    # ---- data ---------------------------------------------------------------------------------

    def _crop_starts(self) -> Tensor | None:
        """Masked data: the flat indices of the crop positions to draw from, those that see the most
        visible pixels; None = every position, uniformly. Every wholly visible position where there
        are enough of them (a large hole), else the best-covered tenth; never fewer than
        MIN_CROP_POSITIONS positions (or all of them), so that a small input still gives varied crops.

        The idea: crops that straddle a large hole teach the descriptor the hole's flat edge. Not the
        default, because the measurements disagree (RESULTS.md, "Completion: crop positions"): on
        the benchmark's centre holes it helped in one-thread runs (hole SWD ratio 3.45 -> 1.87 on
        skimage_grass, 6.87 -> 4.48 on efl_rock_01) and not in two-thread ones, where the run-to-run
        spread (1.25 to 6.9 on the rock) is larger than either effect."""
        if self.mask is None or self.cfg.crop_pick == "any":
            return None
        if self.cfg.crop_pick != "visible":
            raise CoopsynthError(f"crop_pick '{self.cfg.crop_pick}': use visible or any")
        pool = torch.nn.functional.avg_pool2d if self.mask.dim() == 3 else torch.nn.functional.avg_pool3d
        frac = pool(self.mask[None], self.crop_size, stride=1)[0, 0].flatten()  # visible fraction per position
        n = frac.numel()
        enough = max(math.ceil(0.01 * n), min(n, MIN_CROP_POSITIONS))
        whole = torch.nonzero(frac >= 1.0 - 1e-4).flatten()
        if len(whole) >= enough:
            return whole
        k = max(math.ceil(0.1 * n), min(n, MIN_CROP_POSITIONS))
        cut = frac.sort(descending=True).values[k - 1]
        return torch.nonzero(frac >= cut).flatten()  # the k best-covered, and any tied with the last

    def _crop_offsets(self, gen: torch.Generator) -> list[int]:
        spans = [have - c + 1 for c, have in zip(self.crop_size, self.data.shape[1:], strict=True)]
        if self.starts is None:
            return [int(torch.randint(0, n, (1,), generator=gen, device=self.device)) for n in spans]
        flat = int(self.starts[int(torch.randint(0, len(self.starts), (1,), generator=gen, device=self.device))])
        offsets = []
        for n in reversed(spans):
            flat, o = divmod(flat, n)
            offsets.append(o)
        return offsets[::-1]

    def observed_batch(self) -> tuple[Tensor, Tensor | None]:
        """cfg.batch random crops of the data (B, C, [T,] H, W), and of the mask (B, 1, ...) or None."""
        crops, masks = [], []
        per = self.cfg.batch // len(self.gens)
        for gen in self.gens:
            for _ in range(per):
                idx = [slice(None)]
                for c, o in zip(self.crop_size, self._crop_offsets(gen), strict=True):
                    idx.append(slice(o, o + c))
                crops.append(self.data[tuple(idx)])
                if self.mask is not None:
                    masks.append(self.mask[tuple(idx)])
        return torch.stack(crops), (torch.stack(masks) if masks else None)

    def _latents(self) -> Tensor:
        per = self.cfg.batch // len(self.gens)
        return torch.cat([self.model.latent(per, self.crop_size, g) for g in self.gens])  # (B, zc, [t,] h, w)

    def _noise(self, like: Tensor):
        """N(0, I) per Langevin step, each shard's chains from that shard's stream."""
        if len(self.gens) == 1:  # the usual case: no concatenation in the hot loop
            g = self.gen
            return lambda step: torch.randn(like.shape, generator=g, device=self.device)
        per = like.shape[0] // len(self.gens)
        shape = (per, *like.shape[1:])
        return lambda step: torch.cat([torch.randn(shape, generator=g, device=self.device) for g in self.gens])

    # ---- one iteration -------------------------------------------------------------------------

    def lr_factor(self) -> float:
        """Cosine from 1 to cfg.lr_decay over the run: by steps, or by `self.progress()` when set
        (a wall-clock budget sets it to the fraction of the time used)."""
        t = self.progress() if self.progress is not None else self.step_count / max(self.cfg.steps, 1)
        t = min(max(t, 0.0), 1.0)
        lo = self.cfg.lr_decay
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))

    def step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        for opt, lr in ((self.opt_d, cfg.lr_d), (self.opt_g, cfg.lr_g)):
            for group in opt.param_groups:
                group["lr"] = lr * self.lr_factor() * self.lr_scale
        obs, m = self.observed_batch()  # (B, C, [T,] H, W), (B, 1, ...) | None
        z = self._latents()  # (B, zc, [t,] h, w)
        y0 = model.propose(z)  # (B, C, [T,] H, W), graph kept for the generator update
        y0 = y0[(slice(None), slice(None)) + tuple(slice(0, c) for c in self.crop_size)]
        hidden = {} if m is None else {"known": torch.zeros((), device=self.device), "known_mask": (m == 0).expand_as(y0)}
        # masked (completion): the chains hold the hidden pixels at 0, as the data crops have them, so
        # that the revision optimises exactly what the descriptor is then scored on; revising them
        # freely let the chains tune the visible pixels to a context the descriptor never sees, and
        # the descriptor won outright (gimp_brick: f_obs - f_syn stuck at 10, magenta stripes)
        y = model.revise(y0.detach(), steps=cfg.langevin_steps, noise_fn=self._noise(y0), **hidden, **cfg.langevin(self.delta))

        # descriptor: ascend mean f(obs) - mean f(y), per position so the scale is size-free
        npos = float(math.prod(self.crop_size))
        syn = y if m is None else y * m  # masked data term: hidden pixels are compared as zeros on both sides
        f_obs, f_syn = (f / npos for f in model.energies(obs, syn))  # (B,), (B,), in one pass where it pays
        loss_d = f_syn.mean() - f_obs.mean() + cfg.energy_reg * (f_obs.pow(2).mean() + f_syn.pow(2).mean())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()

        # generator: MCMC teaching, regress g(Z) on the revised Y with the same Z
        diff = (y - y0) if m is None else (y - y0) * m
        loss_g = diff.pow(2).mean() / (2 * cfg.s * cfg.s)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()

        stats = {
            "step": self.step_count + 1,
            "f_obs": f_obs.mean().item(),
            "f_syn": f_syn.mean().item(),
            "loss_g": loss_g.item(),
            "revision": diff.detach().pow(2).mean().sqrt().item(),  # RMS change of the visible pixels
            "delta": self.delta,
        }
        bad = not all(math.isfinite(v) for v in stats.values()) or stats["revision"] > RUNAWAY
        if distributed.any_true(bad, self.device):  # every process rolls back together
            raise DivergenceError(stats)
        distributed.average_gradients(self.descriptor.parameters())
        distributed.average_gradients(self.generator.parameters())
        if cfg.clip > 0:
            stats["clipped"] = float(sum(self._clip(i, net) for i, net in enumerate((self.descriptor, self.generator))))
        # when the descriptor's lead grows beyond what L Langevin steps and the generator can close,
        # it only grows further (the "descriptor wins" collapse: a lead of ~10 per position against
        # ~0.1 in a healthy run; flat murky or saturated samples from then on). The watchdog stops
        # the run here: the caller returns to the last balanced state with smaller learning rates.
        # (balance, off by default, instead holds the descriptor while the generator catches up)
        held = False
        if self.cfg.balance > 0 or self.cfg.watchdog > 0:
            self.lead = distributed.mean_scalar(stats["f_obs"] - stats["f_syn"], self.device)
            self.gap = 0.9 * self.gap + 0.1 * self.lead
            stats["gap"] = self.gap
            if self.watching and self.gap > self.cfg.watchdog:
                raise CollapseError(stats)
            held = self.cfg.balance > 0 and self.gap > self.cfg.balance
        stats["held"] = float(held)
        if not held:
            self.opt_d.step()
        self.opt_g.step()
        self.step_count += 1
        return stats

    @property
    def balanced(self) -> bool:
        """Whether the descriptor's lead, its moving average and the last iteration's alike, is below
        half the watchdog's threshold: a state worth rolling back to (always, with the watchdog off).
        The average alone lags: a flame run saved a state 2 iterations into a collapse (average
        0.8, that iteration's lead 4.5) and rolled back to it four times in a row."""
        return not (self.cfg.watchdog > 0 and max(self.gap, self.lead) > self.cfg.watchdog / 2)

    def reseed(self, salt: int) -> None:
        """New random streams (crops, latents, Langevin noise), a function of the old seeds and
        `salt`: after a roll-back the retry then draws other data than the iterations that failed."""
        for g in self.gens:
            g.manual_seed((g.initial_seed() * 1_000_003 + salt) % 2**63)

    @property
    def watching(self) -> bool:
        """Whether a lead above cfg.watchdog stops the iteration now."""
        return self.cfg.watchdog > 0 and self.step_count >= WATCHDOG_WARMUP

    def _clip(self, i: int, net: torch.nn.Module) -> bool:
        """Scale the gradient of `net` down to cfg.clip x its running mean norm; True if it was.

        One spike (a batch where the descriptor suddenly dislikes the proposals: a revision many
        times the usual) would otherwise move Adam up to (1 - beta1) / sqrt(1 - beta2) ~ 16 learning
        rates at once, throwing the generator's output far out of the pixel range, which makes the
        next revision larger still: the video runs diverged this way every few hundred iterations.
        The gradients are identical in every process by now, so every process clips alike."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        mean = self.grad_norms[i]
        if not math.isfinite(norm):
            return False  # the divergence check above has already seen it
        cap = self.cfg.clip * mean
        clipped = mean > 0 and self.step_count >= 20 and norm > cap
        if clipped:
            for g in grads:
                g.mul_(cap / norm)
        self.grad_norms[i] = norm if mean == 0 else 0.95 * mean + 0.05 * min(norm, cap)
        return clipped

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "descriptor": self.descriptor.state_dict(),
            "generator": self.generator.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "step": self.step_count,
            "delta": self.delta,
            "gap": self.gap,
            "lead": self.lead,
            "lr_scale": self.lr_scale,
            "grad_norms": list(self.grad_norms),
            "mean": self.model.mean.clone(),
            "std": self.model.std.clone(),
            "quantiles": self.quantiles.clone(),
            "rng": self.gen.get_state(),
            "rng_shards": [g.get_state() for g in self.gens],
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.descriptor.load_state_dict(state["descriptor"])
        self.generator.load_state_dict(state["generator"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.step_count = int(state["step"])
        self.delta = float(state["delta"])
        self.gap = float(state.get("gap", 0.0))
        self.lead = float(state.get("lead", self.gap))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.grad_norms = [float(x) for x in state.get("grad_norms", [0.0, 0.0])]
        shard_states = state.get("rng_shards") or [state["rng"]]
        if len(shard_states) == len(self.gens):
            for g, st in zip(self.gens, shard_states, strict=True):
                g.set_state(st)
        else:
            self.gen.set_state(state["rng"])
        if "rng_ranks" in state:  # a data-parallel checkpoint: each process takes its own stream back
            rank, size = distributed.world()
            if len(state["rng_ranks"]) == size:
                self.gen.set_state(state["rng_ranks"][rank])
        torch.set_rng_state(state["torch_rng"])


class DivergenceError(RuntimeError):
    """A non-finite energy or loss in an iteration; the weights were not updated."""

    def __init__(self, stats: dict, message: str | None = None):
        super().__init__(message or f"non-finite values at step {stats.get('step')}: {stats}")
        self.stats = stats


class CollapseError(DivergenceError):
    """The descriptor's lead passed cfg.watchdog; the weights were not updated."""

    def __init__(self, stats: dict):
        super().__init__(stats, f"the descriptor ran away at step {stats.get('step')}: lead {stats.get('gap'):.2f} per position")
