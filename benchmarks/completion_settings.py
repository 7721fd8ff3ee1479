"""Completion settings from one trained model: how much of the benchmark's spread is the draw.

    python benchmarks/completion_settings.py --quick                       # 3 textures, centre hole
    python benchmarks/completion_settings.py --quick --masks blocks --average 8
    python benchmarks/completion_settings.py --quick --reuse --refines 0,2,4,6,8,12
    python benchmarks/completion_settings.py --quick --reuse --masks centre,blocks --seams 0,2,8,inf

Per texture and mask (as in benchmarks/completion.py): train once on the visible pixels (or take the
model a previous run left in --out with --reuse), then complete with each sampling refinement count
(--refines), latent inference length (--infer) and seam length (--seams), each with --seeds
different seeds, and score the recovery error and hole SWD ratio. The table gives each setting's
median and range over the seeds: what one `coopsynth complete` run can land on, from the same
model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, fmt, header, median, publish  # noqa: E402
from completion import QUICK, benchmark_mask, held_out_crop  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.completion import complete  # noqa: E402

OUT = HERE / "out" / "completion_settings"


def model_for(img: torch.Tensor, missing: torch.Tensor, work: Path, preset: str, seed: int, reuse: bool):
    """A model trained on the visible pixels (or the one already in `work` with reuse) and its delta."""
    if not (reuse and (work / "model.pt").exists()):
        job = pipeline.TrainJob(input=work / "masked.png", output=work, preset=preset, seed=seed, force=True)
        pipeline.train(job, mask=~missing[None], data=img)
    model, blob = pipeline.load_model(work / "model.pt", "cpu")
    return model, blob["config_obj"].langevin(float(blob.get("delta", blob["config_obj"].delta)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "textures")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--only", default=None)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--masks", default="centre", help="centre, blocks or both")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="training seed (and the block mask's)")
    ap.add_argument("--seeds", type=int, default=4, help="completion seeds per setting")
    ap.add_argument("--refines", default="0,6", help="sampling refinement counts to score")
    ap.add_argument("--infer", default="60", help="latent inference step counts to score")
    ap.add_argument("--seams", default="8", help="seam lengths (pixels; 0 = off) to score")
    ap.add_argument("--average", type=int, default=1, help="score the mean of this many completions")
    ap.add_argument("--reuse", action="store_true", help="score the models a previous run left in --out")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in {".png", ".jpg"})
    names = QUICK if args.quick else (args.only.split(",") if args.only else None)
    if names:
        files = [p for p in files if p.stem in names]
    if not set(args.masks.split(",")) <= {"centre", "blocks"}:
        ap.error(f"--masks {args.masks}: use centre, blocks or both")
    refines = [int(v) for v in args.refines.split(",")]
    infers = [int(v) for v in args.infer.split(",")]
    seams = [float(v) for v in args.seams.split(",")]
    settings = list(itertools.product(infers, refines, seams))  # (infer, refine, seam)
    rows = []  # (texture, mask, (infer, refine, seam), [(error, ratio)] over seeds)
    for path in files:
        img = held_out_crop(path, args.max_side)
        h, w = img.shape[1:]
        for mname in args.masks.split(","):
            missing = benchmark_mask(mname, h, w, args.seed)
            model, lv = model_for(img, missing, args.out / path.stem / mname, args.preset, args.seed, args.reuse)
            for setting in settings:
                infer, refine, seam = setting
                scores = []
                for s in range(args.seeds):
                    gen = torch.Generator().manual_seed(s)
                    done = complete(
                        model,
                        img,
                        missing,
                        langevin=lv,
                        refine=refine,
                        infer_steps=infer,
                        average=args.average,
                        seam=seam,
                        generator=gen,
                    )
                    m = metrics.completion_metrics(done, img, missing, args.seed)
                    scores.append((m["recovery_error"], m["hole_swd_ratio"], m["pyramid_swd_ratio"]))
                rows.append((path.stem, mname, setting, scores))
                cells = " ".join(f"{e:.1f}/{r:.2f}/{fmt(p)}" for e, r, p in scores)
                print(f"  {path.stem} {mname} infer {infer} refine {refine} seam {seam:g}: {cells}", flush=True)
    (args.out / f"settings-{args.masks.replace(',', '-')}-average{args.average}.json").write_text(json.dumps(rows))
    text = header(f"Completion settings from one model, preset `{args.preset}`, {args.seeds} completion seeds")
    text += (
        f"average of {args.average} completion(s) per score; error (0-255), hole SWD ratio and pyramid hole SWD ratio "
        "(3 scales; – where the hole is too small for it): median [min-max] over the seeds\n\n"
    )
    text += (
        "| texture | mask | infer | refine | seam | error | hole SWD ratio | pyramid ratio |\n|---|---|---|---|---|---|---|---|\n"
    )

    def spread(xs: list[float | None], digits: int = 2) -> str:
        xs = [x for x in xs if x is not None]
        return f"{fmt(median(xs), digits)} [{fmt(min(xs), digits)}-{fmt(max(xs), digits)}]" if xs else "–"

    for name, mname, (infer, refine, seam), scores in rows:
        es, rs, ps = zip(*scores, strict=True)
        text += f"| {name} | {mname} | {infer} | {refine} | {seam:g} | {spread(es, 1)} | {spread(rs)} | {spread(ps)} |\n"
    text += "\nmedian over textures of the per-texture medians, error / hole SWD ratio / pyramid ratio:\n\n"
    text += "| mask | infer | refine | seam | error | hole SWD ratio | pyramid ratio |\n|---|---|---|---|---|---|---|\n"
    for mname in dict.fromkeys(r[1] for r in rows):
        for infer, refine, seam in settings:
            per = [sc for _, mm, st, sc in rows if (mm, st) == (mname, (infer, refine, seam))]
            err, ratio, pyr = (median([median([v[i] for v in sc if v[i] is not None]) for sc in per]) for i in range(3))
            text += f"| {mname} | {infer} | {refine} | {seam:g} | **{fmt(err, 1)}** | **{fmt(ratio)}** | **{fmt(pyr)}** |\n"
    publish(text + "\n", not args.no_write)


if __name__ == "__main__":
    main()
