"""A small hole in a large image: completing the hole's region against completing the whole image.

    python benchmarks/completion_region.py                  # 4 textures, whole images, a 96 px hole (about 15 minutes)
    python benchmarks/completion_region.py --tile 2048 --grid 2 --only efl_rock_01 --contexts all,64 --seeds 1

`coopsynth complete` works on the missing pixels' bounding box widened by the networks' reach and
`--context` pixels (`completion.regions`, one per group of far-apart holes), not on the whole image.
Per texture: the whole image (or, with --tile N, the image mirrored out to N px a side: still the
same texture, only bigger) with one centre square hole (--grid K: K x K holes); coopsynth trains
once on the visible pixels, then completes the holes with each --contexts value ("all" = the whole
image, the behaviour before regions) and --seeds seeds from that one model. Printed per context: the recovery error (0-255) and the hole SWD ratio
(../shared/EVALUATION.md, "Completion"), each the mean over the seeds, the seconds of one
completion after training, and the speed-up over "all" in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, fmt, header, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.completion import complete, default_refine, parse_context, regions  # noqa: E402
from coopsynth.io import read_image  # noqa: E402

TEXTURES = ["efl_rock_01", "efl_wood_01", "skimage_grass", "skimage_gravel"]  # the largest in the data (512-640 px)
OUT = HERE / "out" / "completion_region"


def mirrored(img: torch.Tensor, side: int) -> torch.Tensor:
    """img (C, H, W) mirrored out (reflection, repeated as needed) to side x side."""
    while min(img.shape[1:]) < side:
        h, w = img.shape[1:]
        img = F.pad(img[None], (0, min(w - 1, side - w), 0, min(h - 1, side - h)), mode="reflect")[0]
    return img[:, :side, :side].contiguous()


def holes(h: int, w: int, side: int, grid: int = 1) -> torch.Tensor:
    """Square holes of `side` px at the centres of a grid x grid tiling of the image."""
    m = torch.zeros(h, w, dtype=torch.bool)
    for i in range(grid):
        for j in range(grid):
            y, x = (2 * i + 1) * h // (2 * grid) - side // 2, (2 * j + 1) * w // (2 * grid) - side // 2
            m[y : y + side, x : x + side] = True
    return m


def run_item(path: Path, args: argparse.Namespace, contexts: list[int | None]) -> list[dict]:
    img = read_image(path)
    img = (mirrored(img, args.tile) if args.tile else img).contiguous()
    img = (img * 255).round() / 255  # the 8-bit grid
    h, w = img.shape[1:]
    missing = holes(h, w, args.hole, args.grid)
    work = args.out / path.stem
    t0 = time.perf_counter()
    job = pipeline.TrainJob(input=work / "masked.png", output=work, preset=args.preset, seed=0, force=True)
    trainer = pipeline.train(job, mask=~missing[None], data=img)["trainer"]
    print(f"  {path.stem} ({w}x{h}): trained in {time.perf_counter() - t0:.0f} s", flush=True)
    lv = trainer.cfg.langevin(trainer.delta)
    rows = []
    for ctx in contexts:
        boxes = regions(trainer.model.net, missing, ctx)
        errors, ratios, secs = [], [], []
        for seed in range(args.seeds):
            gen = torch.Generator().manual_seed(seed)
            t1 = time.perf_counter()
            done = complete(
                trainer.model, img, missing, langevin=lv, refine=default_refine(trainer.cfg.langevin_steps, 1),
                context=ctx, generator=gen,
            )  # fmt: skip
            secs.append(time.perf_counter() - t1)
            scores = metrics.completion_metrics(done, img, missing, seed)
            errors.append(scores["recovery_error"])
            ratios.append(scores["hole_swd_ratio"])
        row = {
            "item": f"{path.stem} ({w}x{h})",
            "context": "all" if ctx is None else str(ctx),
            "region": " + ".join(f"{b[1].stop - b[1].start}x{b[0].stop - b[0].start}" for b in boxes),
            "error": sum(errors) / len(errors),
            "spread": (max(errors) - min(errors)) / 2,
            "ratio": sum(ratios) / len(ratios),
            "seconds": sum(secs) / len(secs),
        }
        rows.append(row)
        print(
            f"  {row['item']} context {row['context']} (region {row['region']}): error {row['error']:.1f} "
            f"+- {row['spread']:.1f}, hole SWD ratio {row['ratio']:.2f}, {row['seconds']:.1f} s",
            flush=True,
        )
    base = next((r["seconds"] for r in rows if r["context"] == "all"), None)
    for r in rows:
        r["speedup"] = base / r["seconds"] if base else float("nan")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "textures")
    ap.add_argument("--only", default=None, help="comma-separated texture names (default: the four largest)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--hole", type=int, default=96, help="each hole's side, pixels")
    ap.add_argument("--grid", type=int, default=1, help="holes at the centres of a K x K grid (1 = one centre hole)")
    ap.add_argument("--tile", type=int, default=0, help="mirror each image out to this side first (0 = as it is)")
    ap.add_argument("--contexts", default="all,128,64,32,0", help="--context values to compare ('all' = the whole image)")
    ap.add_argument("--seeds", type=int, default=3, help="completions per context (seeds 0..N-1), scores averaged")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    contexts = [parse_context(c) for c in args.contexts.split(",")]
    names = args.only.split(",") if args.only else TEXTURES
    files = [args.data / f"{n}.png" for n in names if (args.data / f"{n}.png").exists()]
    rows = [r for p in files for r in run_item(p, args, contexts)]
    what = (
        f"a {args.hole} px hole" if args.grid == 1 else f"{args.grid**2} holes of {args.hole} px (a {args.grid}x{args.grid} grid)"
    )
    text = header(f"Completion of {what}: the holes' regions against the whole image, preset `{args.preset}`")
    text += (
        f"Recovery error (0-255, the mean over {args.seeds} seeds, +- half the range) / hole SWD ratio "
        "(1 = like the truth) / seconds of one completion after training / speed-up over `--context all`.\n\n"
    )
    text += "| image | --context | region | error | hole SWD ratio | seconds | speed-up |\n|---|---|---|---|---|---|---|\n"
    for r in rows:
        text += (
            f"| {r['item']} | {r['context']} | {r['region']} | {r['error']:.1f} +- {r['spread']:.1f} | "
            f"{fmt(r['ratio'])} | {r['seconds']:.2f} | {fmt(r['speedup'])}x |\n"
        )
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
