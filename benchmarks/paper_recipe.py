"""The CoopNets reference settings of ../shared/METHOD.md, "images (TF, 64 px)" column, run here.

Benchmark-only: the authors' published architecture and hyper-parameters, written from the
description in METHOD.md (not their code), trained on 64x64 random crops for a wall-clock budget,
so that coopsynth's table can show "the paper's recipe, run here, for the same minutes".
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from coopsynth.langevin import descriptor_langevin

SIZE = 64  # crop side
Z_DIM = 100
BATCH = 144  # chains per iteration, restarted from the generator
L, DELTA, SIGMA = 15, 0.002, 0.016  # descriptor Langevin
LR_D, LR_G, BETA1 = 0.007, 1e-4, 0.5
S = 0.3  # generator reference std in the teaching loss


class Descriptor(nn.Module):
    """conv 64@5x5/2, 128@3x3/2, 256@3x3/1, leaky ReLU 0.2, then a linear layer."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, 64, 5, 2, 2)
        self.c2 = nn.Conv2d(64, 128, 3, 2, 1)
        self.c3 = nn.Conv2d(128, 256, 3, 1, 1)
        self.fc = nn.Linear(256 * (SIZE // 4) ** 2, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.c1(y), 0.2)
        h = F.leaky_relu(self.c2(h), 0.2)
        h = F.leaky_relu(self.c3(h), 0.2)
        return self.fc(h.flatten(1))[:, 0]  # (B,)


class Generator(nn.Module):
    """z 100 -> 4x4 deconv 512 -> 5x5/2 deconvs 256, 128, 64, 3 with batch norm, tanh."""

    def __init__(self, c: int):
        super().__init__()
        chans = [512, 256, 128, 64]
        self.first = nn.Sequential(nn.ConvTranspose2d(Z_DIM, 512, 4), nn.BatchNorm2d(512), nn.ReLU())
        layers = []
        for a, b in zip(chans, chans[1:], strict=False):
            layers += [nn.ConvTranspose2d(a, b, 5, 2, 2, output_padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [nn.ConvTranspose2d(64, c, 5, 2, 2, output_padding=1), nn.Tanh()]
        self.rest = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(z[:, :, None, None]))  # (B, C, 64, 64)


def _cooperate(d, g, opt_d, opt_g, observed, latent, chains: int, steps: int, delta: float, sigma: float, seconds: float) -> int:
    """The CoopNets iteration for `seconds`: propose, revise (exact Langevin), update both; returns iterations."""
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        obs = observed()
        y0 = g(latent(chains))
        d.requires_grad_(False)
        y = descriptor_langevin(d, y0.detach(), steps=steps, delta=delta, sigma=sigma, noise=1.0)
        d.requires_grad_(True)
        loss_d = d(y).mean() - d(obs).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = (y - y0).pow(2).sum() / (2 * S * S) / chains
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        it += 1
    return it


def _final_samples(d, g, z: torch.Tensor, steps: int, delta: float, sigma: float, lo, hi) -> torch.Tensor:
    g.eval()
    with torch.no_grad():
        y0 = g(z)
    d.requires_grad_(False)
    y = descriptor_langevin(d, y0, steps=steps, delta=delta, sigma=sigma, noise=1.0)
    y = torch.nan_to_num(y, nan=0.0).clamp(-1, 1)
    return (y + 1) / 2 * (hi - lo) + lo


def train_and_sample(train: torch.Tensor, seconds: float, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Train on random 64x64 crops of `train` (C, H, W) in [0, 1] for `seconds`; return k samples
    (k, C, 64, 64) in [0, 1] (the revised Y, as the paper shows) and the iteration count."""
    torch.manual_seed(seed)
    c, h, w = train.shape
    lo, hi = train.min(), train.max()
    data = (train - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1  # min-max to [-1, 1]
    size = min(SIZE, h, w)
    if size < SIZE:  # a small input: upsample so that 64x64 crops exist (the recipe's fixed size)
        data = F.interpolate(data[None], scale_factor=SIZE / size, mode="bilinear", align_corners=False)[0]
        h, w = data.shape[1:]
    d, g = Descriptor(c), Generator(c)
    opt_d = torch.optim.Adam(d.parameters(), lr=LR_D, betas=(BETA1, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=LR_G, betas=(BETA1, 0.999))

    def observed() -> torch.Tensor:
        ys = torch.randint(0, h - SIZE + 1, (BATCH,))
        xs = torch.randint(0, w - SIZE + 1, (BATCH,))
        return torch.stack([data[:, y : y + SIZE, x : x + SIZE] for y, x in zip(ys.tolist(), xs.tolist(), strict=True)])

    it = _cooperate(d, g, opt_d, opt_g, observed, lambda n: torch.randn(n, Z_DIM), BATCH, L, DELTA, SIGMA, seconds)
    return _final_samples(d, g, torch.randn(k, Z_DIM), L, DELTA, SIGMA, lo, hi), it


# ----------------------------------------------------------------------------------------------
# Dynamic textures: the spatial-temporal settings of METHOD.md (STGConvNet / ST-CoopNets column)

ST_L, ST_DELTA, ST_SIGMA = 15, 0.002, 0.016
ST_LR_D, ST_LR_G = 0.01, 2e-4
ST_CHAINS = 3


class STDescriptor(nn.Module):
    """3-D conv 120@(5x7x7, stride (2,3,3)), 30@(3x5x5, stride (1,2,2)), 5@(2x3x3); ReLU; energy = sum."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv3d(c, 120, (5, 7, 7), (2, 3, 3), (2, 3, 3))
        self.c2 = nn.Conv3d(120, 30, (3, 5, 5), (1, 2, 2), (1, 2, 2))
        self.c3 = nn.Conv3d(30, 5, (2, 3, 3), 1, (1, 1, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(y))
        h = F.relu(self.c2(h))
        return self.c3(h).flatten(1).sum(1)  # (B,)


class STGenerator(nn.Module):
    """z (B, 64, T/8, H/16, W/16) -> 3-D deconvolutions doubling (T,) H, W, batch norm + ReLU, tanh."""

    def __init__(self, c: int):
        super().__init__()
        chans = [64, 128, 64, 32]
        layers = []
        for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
            st = (2, 2, 2) if i < 3 else (1, 2, 2)
            layers += [nn.ConvTranspose3d(a, b, (4, 4, 4), st, 1), nn.BatchNorm3d(b), nn.ReLU()]
        layers += [nn.ConvTranspose3d(32, c, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def train_and_sample_video(train: torch.Tensor, seconds: float, k: int = 2, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Train on the whole clip `train` (C, T, H, W) in [0, 1] (T a multiple of 8, H and W of 16)
    for `seconds`; return k videos of the same size (the revised Y) and the iteration count."""
    torch.manual_seed(seed)
    c, t, h, w = train.shape
    lo, hi = train.min(), train.max()
    data = ((train - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1)[None]  # (1, C, T, H, W) in [-1, 1]
    d, g = STDescriptor(c), STGenerator(c)
    opt_d = torch.optim.Adam(d.parameters(), lr=ST_LR_D, betas=(BETA1, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=ST_LR_G, betas=(BETA1, 0.999))
    zshape = (64, t // 8, h // 16, w // 16)
    it = _cooperate(
        d, g, opt_d, opt_g, lambda: data, lambda n: torch.randn(n, *zshape), ST_CHAINS, ST_L, ST_DELTA, ST_SIGMA, seconds
    )
    return _final_samples(d, g, torch.randn(k, *zshape), ST_L, ST_DELTA, ST_SIGMA, lo, hi), it
