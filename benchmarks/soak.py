"""Soak test: many back-to-back `coopsynth texture --preset fast` runs on real textures with random
seeds, through the real command line; counts errors, NaN in outputs, divergence roll-backs, and
the collapse watchdog's fresh starts and early ends.

    python benchmarks/soak.py                 # 20 runs over ../shared/data/textures
    python benchmarks/soak.py --runs 5
    python benchmarks/soak.py --input examples/cork.png --preset default --runs 6   # one input, many seeds
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, header, publish  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "textures")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--input", type=Path, default=None, help="one image for every run (default: a random one from --data)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.input is not None:
        if not args.input.is_file():
            print(f"skipped: no file at {args.input}")
            return
        files = [args.input]
    elif not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    else:
        files = sorted(p for p in args.data.iterdir() if p.suffix.lower() == ".png")
    import imageio.v3 as iio

    rng = random.Random(args.seed)
    rows, errors, nans, rollbacks, restarts, early = [], 0, 0, 0, 0, 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            f = rng.choice(files)
            seed = rng.randrange(2**31)
            out = Path(tmp) / f"run{i}"
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "coopsynth",
                    "texture",
                    str(f),
                    "-o",
                    str(out),
                    "--preset",
                    args.preset,
                    "--seed",
                    str(seed),
                    "--samples",
                    "2",
                ],
                capture_output=True,
                text=True,
            )
            secs = time.perf_counter() - t0
            ok = r.returncode == 0
            errors += not ok
            # PNG pixels are integers, so NaN cannot show there directly: check the model's weights,
            # the logged energies, and that no sample is flat (a NaN turned into one value)
            events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
            bad = 0
            if (out / "model.pt").exists():
                blob = torch.load(out / "model.pt", weights_only=True)
                tensors = [t for part in ("descriptor", "generator") for t in blob[part].values()]
                bad += sum(int(not torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
            for e in events:
                bad += sum(
                    int(not math.isfinite(v))
                    for k, v in e.items()
                    if k in ("f_obs", "f_syn", "loss_g", "revision") and isinstance(v, float)
                )
            for s in sorted(out.glob("sample_*.png")):
                bad += int(iio.imread(s).std() == 0)
            nans += bad
            rb = sum(1 for e in events if e.get("event") == "divergence")
            rollbacks += rb
            rs = sum(1 for e in events if e.get("event") == "restart")
            restarts += rs
            stop = next((e for e in reversed(events) if e.get("event") == "stopped"), {})
            early += stop.get("reason") == "collapse"
            rows.append(
                f"| {i + 1} | {f.stem} | {seed} | {'ok' if ok else 'exit ' + str(r.returncode)} | {rb} | {rs} | "
                f"{stop.get('reason', '?')} at {stop.get('step', '?')} | {secs:.0f} |"
            )
            print(rows[-1], (r.stderr.strip().splitlines() or [""])[-1] if not ok else "", flush=True)
    text = header(f"Soak: {args.runs} back-to-back `coopsynth texture --preset {args.preset}` runs")
    text += (
        f"**{args.runs - errors}/{args.runs} runs exited 0; {nans} non-finite weights, energies or flat samples; "
        f"{rollbacks} divergence roll-backs; {restarts} fresh starts after an early collapse end, in {args.runs} runs "
        f"({args.runs + restarts} attempts); {early} runs ended by the watchdog; {(time.perf_counter() - t_all) / 60:.0f} min.**\n\n"
    )
    text += (
        "| run | texture | seed | result | roll-backs | fresh starts | stopped | seconds |\n|---|---|---|---|---|---|---|---|\n"
    )
    text += "\n".join(rows) + "\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
