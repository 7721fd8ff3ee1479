"""Completion's peak memory against `completion.memory_needed`, the estimate `complete` refuses by.

    python benchmarks/completion_memory.py              # images 512-2048 px, videos of 128x128 frames (about 8 minutes)
    python benchmarks/completion_memory.py --quick      # the smaller half of each

Each case runs in a fresh process (peak resident memory is per process): it loads a model trained
here with the `fast` preset (on ../shared/data's efl_rock_01 and flame_rendered_castle), makes an
input of the case's size (random pixels: memory does not depend on them), marks a centre block of
a quarter of it missing (whole frames for videos) and completes it over the whole input
(`--context all`, so the case's size is the size worked on) with 2 latent inference steps (the
peak is reached at the first; the default 60 only take longer), the seam and the refinement.
Printed per case: the peak above the process's own before the completion, per pixel (voxel),
the estimate, and the seconds. The estimate should stay above the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def measure(model_path: str, shape: tuple[int, ...]) -> dict:
    """In this (fresh) process: complete an input of `shape` and report the peak memory."""
    import torch

    from coopsynth import pipeline
    from coopsynth.completion import complete, memory_needed

    model, blob = pipeline.load_model(model_path, "cpu")
    lv = blob["config_obj"].langevin(blob.get("delta"))
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(model.net.channels, *shape, generator=gen)
    missing = torch.zeros(shape, dtype=torch.bool)
    block = tuple(slice(n // 4, n - n // 4) for n in shape)
    missing[block if len(shape) == 2 else (block[0],)] = True
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    complete(model, data, missing, langevin=lv, infer_steps=2, refine=6, context=None, generator=gen)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"shape": list(shape), "above": peak - before, "estimate": memory_needed(shape), "seconds": seconds}


def train(data: Path, name: str, ext: str, out: Path) -> Path:
    from coopsynth import pipeline

    job = pipeline.TrainJob(input=data / f"{name}.{ext}", output=out / name, preset="fast", force=True)
    pipeline.train(job)
    return out / name / "model.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true", help="the two smaller sizes of each kind")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--case", nargs=2, metavar=("MODEL", "SHAPE"), help=argparse.SUPPRESS)  # one case, in a child
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure(args.case[0], tuple(json.loads(args.case[1])))))
        return
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    image_model = train(args.data / "textures", "efl_rock_01", "png", args.out)
    video_model = train(args.data / "videos", "flame_rendered_castle", "mp4", args.out)
    cases = [(image_model, s) for s in IMAGES[: 2 if args.quick else 3]]
    cases += [(video_model, s) for s in VIDEOS[: 2 if args.quick else 3]]
    rows = []
    for model, shape in cases:
        child = [sys.executable, __file__, "--case", str(model), json.dumps(shape)]
        r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        n = 1
        for s in shape:
            n *= s
        r["per"] = r["above"] / n / 1024
        rows.append(r)
        what = "x".join(map(str, shape[::-1][:2])) + (f", {shape[0]} frames" if len(shape) == 3 else "")
        print(f"  {what}: {r['above'] / 2**30:.2f} GiB above the process ({r['per']:.2f} KiB each), "
              f"estimate {r['estimate'] / 2**30:.2f} GiB, {r['seconds']:.1f} s", flush=True)  # fmt: skip
    text = header("Completion's peak memory against its estimate (CPU, whole input, 2 inference steps)")
    text += "| input | pixels (voxels) | peak above the process, GiB | KiB each | estimate, GiB | estimate / peak | seconds |\n"
    text += "|---|---|---|---|---|---|---|\n"
    for r in rows:
        shape = r["shape"]
        what = f"{shape[-1]}x{shape[-2]}" + (f", {shape[0]} frames" if len(shape) == 3 else "")
        n = 1
        for s in shape:
            n *= s
        text += (
            f"| {what} | {n / 1e6:.1f} M | {r['above'] / 2**30:.2f} | {r['per']:.2f} | {r['estimate'] / 2**30:.2f} | "
            f"{r['estimate'] / max(r['above'], 1):.2f}x | {r['seconds']:.1f} |\n"
        )
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
