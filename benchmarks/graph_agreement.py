"""How closely the CUDA-graph Langevin revision agrees with eager code, per precision and size.

    python benchmarks/graph_agreement.py                 # needs a CUDA device
    python benchmarks/graph_agreement.py --sizes 64,512

Per precision and size: capture the chain once (as coopsynth does), then for a few fresh starts and
noise draws compare the replay with the eager chain on the same inputs, and the eager chain with
itself (run twice: the floor, what non-deterministic kernels alone give). Reported: max |diff|, the
norm of the difference relative to the result and to the revision (ref - y0), and whether the
replay check `coopsynth.accel` applies passes. Default-preset descriptor, untrained weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import header, publish  # noqa: E402

from coopsynth.accel import Accel, GraphedLangevin, replay_agrees  # noqa: E402
from coopsynth.model import CoopModel, frozen  # noqa: E402
from coopsynth.trainer import preset  # noqa: E402


def compare(out: torch.Tensor, ref: torch.Tensor, y0: torch.Tensor) -> tuple[float, float, float]:
    d = (out - ref).double()
    return d.abs().max().item(), (d.norm() / ref.double().norm()).item(), (d.norm() / (ref - y0).double().norm()).item()


def agreement(precision: str, size: int, reps: int, device: torch.device) -> list[str]:
    cfg = preset("default")
    lang = cfg.langevin()
    accel = Accel(precision=precision, graphs=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.manual_seed(0)
    m = CoopModel(cfg.net, torch.full((3,), 0.5), torch.full((3,), 0.2), device, accel)
    g = GraphedLangevin(lambda x: m.energy(x), accel)
    rows = []
    with frozen(m.descriptor):
        y = torch.randn(cfg.batch, 3, size, size, device=device)
        bounds = m.bounds(y)
        entry = g._capture(y, cfg.langevin_steps, lang["delta"], lang["sigma"], lang["noise"], bounds)
        for r in range(reps):
            y0 = torch.randn(cfg.batch, 3, size, size, device=device)
            entry.static_y.copy_(y0)
            entry.static_noise.normal_()
            entry.graph.replay()
            out = entry.static_out.clone()
            chain = (entry.static_noise, cfg.langevin_steps, lang["delta"], lang["sigma"], lang["noise"], bounds)
            ref = g._chain(y0.clone(), *chain)
            ref2 = g._chain(y0.clone(), *chain)
            for label, a in (("replay vs eager", out), ("eager vs eager", ref2)):
                mx, rel, rel_rev = compare(a, ref, y0)
                ok = replay_agrees(a, ref, y0, precision)
                tol = 5e-2 if precision == "bf16" else 1e-3  # the first, element-wise check
                old = torch.allclose(a, ref, rtol=tol, atol=tol)
                rows.append(
                    f"| {precision} | {size} | {r} | {label} | {mx:.2e} | {rel:.2e} | {rel_rev:.2e} | {'yes' if ok else 'no'} | {'yes' if old else 'no'} |"
                )
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,256,512")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: needs a CUDA device")
        return
    device = torch.device("cuda")
    text = header("CUDA graph replay against eager code")
    text += "| precision | size | start | pair | max abs diff | ‖diff‖ / ‖ref‖ | ‖diff‖ / ‖ref − y0‖ | check passes | element-wise check passes |\n"
    text += "|---|---|---|---|---|---|---|---|---|\n"
    for p in args.precisions.split(","):
        for s in (int(x) for x in args.sizes.split(",")):
            text += "\n".join(agreement(p, s, args.reps, device)) + "\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
