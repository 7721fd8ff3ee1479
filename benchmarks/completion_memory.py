"""Completion's peak memory against `completion.memory_needed`, the estimate `complete` refuses by.

    python benchmarks/completion_memory.py              # images 512-2048 px, videos of 128x128 frames (about 5 minutes)
    python benchmarks/completion_memory.py --quick      # the two smaller sizes of each kind
    python benchmarks/completion_memory.py --one-pass   # and the larger cases as one pass, side by side (about 8)

Each case runs in a fresh process (peak resident memory is per process): it loads a model trained
here with the `fast` preset (on ../shared/data's efl_rock_01 and flame_rendered_castle), makes an
input of the case's size (random pixels: memory does not depend on them), marks a centre block of
a quarter of it missing (whole frames for videos) and completes it over the whole input
(`--context all`, so the case's size is the size worked on) with 2 latent inference steps (the
peak is reached at the first; the default 60 only take longer), the seam and the refinement.
Printed per case: the peak resident memory above what the process held just before the
completion (`reset_peak`), per pixel (voxel), the estimate, and the seconds. The estimate should
stay above the peak.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, header, publish  # noqa: E402

OUT = HERE / "out" / "completion_memory"
IMAGES = [(512, 512), (1024, 1024), (2048, 2048)]
VIDEOS = [(32, 128, 128), (128, 128, 128), (512, 128, 128)]


def measure(model_path: str, shape: tuple[int, ...], way: str) -> dict:
    """In this (fresh) process: complete an input of `shape` and report the peak memory. way:
    "windowed" (as `coopsynth complete` does) or "one pass" (the latent inference's gradient
    through the whole input at once, as before the windows)."""
    import torch

    from coopsynth import completion, pipeline
    from coopsynth.completion import complete, memory_needed

    if way == "one pass":
        completion.INFER_WINDOW = completion.INFER_VOXELS = 2**40

    model, blob = pipeline.load_model(model_path, "cpu")
    lv = blob["config_obj"].langevin(blob.get("delta"))
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(model.net.channels, *shape, generator=gen)
    missing = torch.zeros(shape, dtype=torch.bool)
    block = tuple(slice(n // 4, n - n // 4) for n in shape)
    missing[block if len(shape) == 2 else (block[0],)] = True
    before = reset_peak()
    t0 = time.perf_counter()
    complete(model, data, missing, langevin=lv, infer_steps=2, refine=6, context=None, generator=gen)
    seconds = time.perf_counter() - t0
    above = status_bytes("VmHWM") - before
    return {"shape": list(shape), "way": way, "above": above, "estimate": memory_needed(shape), "seconds": seconds}


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset this process's peak resident memory (VmHWM) to its current (Linux's clear_refs 5),
    and return the current: what the completion needs is its peak above what the process holds
    (freed blocks it keeps count as held, as they do in `coopsynth complete` after training)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return status_bytes("VmRSS")


def train(data: Path, name: str, ext: str, out: Path, reuse: bool) -> Path:
    from coopsynth import pipeline

    if reuse and (out / name / "model.pt").is_file():
        return out / name / "model.pt"
    job = pipeline.TrainJob(input=data / f"{name}.{ext}", output=out / name, preset="fast", force=True)
    pipeline.train(job)
    return out / name / "model.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true", help="the two smaller sizes of each kind")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="use the models a previous run left in --out")
    ap.add_argument("--one-pass", action="store_true", help="also each case over 1M pixels as one pass (the old way)")
    ap.add_argument("--case", nargs=3, metavar=("MODEL", "SHAPE", "WAY"), help=argparse.SUPPRESS)  # one case, in a child
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure(args.case[0], tuple(json.loads(args.case[1])), args.case[2])))
        return
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    image_model = train(args.data / "textures", "efl_rock_01", "png", args.out, args.reuse)
    video_model = train(args.data / "videos", "flame_rendered_castle", "mp4", args.out, args.reuse)
    cases = [(image_model, s, "windowed") for s in IMAGES[: 2 if args.quick else 3]]
    cases += [(video_model, s, "windowed") for s in VIDEOS[: 2 if args.quick else 3]]
    if args.one_pass:  # side by side: the same inputs with the inference's gradient in one pass
        cases += [(m, s, "one pass") for m, s, _ in list(cases) if math.prod(s) > 2**20]
    rows = []
    for model, shape, way in cases:
        child = [sys.executable, __file__, "--case", str(model), json.dumps(shape), way]
        r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        r["voxels"] = math.prod(shape)
        r["per"] = r["above"] / r["voxels"] / 1024
        r["what"] = f"{shape[-1]}x{shape[-2]}" + (f", {shape[0]} frames" if len(shape) == 3 else "")
        rows.append(r)
        print(f"  {r['what']} ({way}): {r['above'] / 2**30:.2f} GiB above the process ({r['per']:.2f} KiB each), "
              f"estimate {r['estimate'] / 2**30:.2f} GiB, {r['seconds']:.1f} s", flush=True)  # fmt: skip
    text = header("Completion's peak memory against its estimate (CPU, whole input, 2 inference steps)")
    text += "| input | inference | pixels (voxels) | peak above the process, GiB | KiB each | estimate, GiB | estimate / peak | seconds |\n"
    text += "|---|---|---|---|---|---|---|---|\n"
    for r in rows:
        text += (
            f"| {r['what']} | {r['way']} | {r['voxels'] / 1e6:.1f} M | {r['above'] / 2**30:.2f} | {r['per']:.2f} | {r['estimate'] / 2**30:.2f} | "
            f"{r['estimate'] / max(r['above'], 1):.2f}x | {r['seconds']:.1f} |\n"
        )
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
