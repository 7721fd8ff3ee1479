"""Rebuild docs/cork_samples.png, the README's picture: the bundled cork, then the four samples of
the README's first command, each shrunk to 200x200.

    coopsynth texture examples/cork.png -o /tmp/cork && python docs/cork_picture.py /tmp/cork
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from coopsynth.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
run = Path(sys.argv[1] if len(sys.argv) > 1 else "coopsynth-out/cork")
images = [read_image(ROOT / "examples" / "cork.png")] + [read_image(run / f"sample_{i:03d}.png") for i in range(4)]
tiles = [F.interpolate(x[None], size=(200, 200), mode="area")[0] for x in images]  # (3, 200, 200) each
gap = torch.ones(3, 200, 4)
row = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], dim=2)  # (3, 200, 1016)
border = torch.ones(3, 2, row.shape[2])
write_image(ROOT / "docs" / "cork_samples.png", torch.cat([border, row, border], dim=1))
