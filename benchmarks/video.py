"""Dynamic-texture benchmark: the video protocol of ../shared/EVALUATION.md.

    python benchmarks/video.py                   # tree_foliage_opencv and flame_rendered_castle
    python benchmarks/video.py --only tree_foliage_opencv --methods coopsynth
    python benchmarks/video.py --methods coopsynth --reuse --refines 0,1,2,3,6   # sampling settings, no training
    python benchmarks/video.py --methods coopsynth --sample-precisions bf16      # the same samples computed in bf16

Per clip: scale and trim it as a default `coopsynth video` run does, split it into left and right
halves over all frames, train on the left, draw k videos of the left half's size and length, and
score them against the right half: spatial and spatio-temporal SWD ratios, motion ratio, copy
index, diversity. coopsynth is scored as `coopsynth video` samples (the preset's refinement) and, from
the same model and latents, with --refine L. Peer: the authors' spatial-temporal settings (benchmarks/paper_recipe.py) for the same
minutes. A frame strip (input vs samples) per clip goes to benchmarks/out/video/<clip>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, REUSE_SUFFIX, as_worst, attempt, contact_sheet, failed_count, fmt, header, median, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.histogram import quantile_function  # noqa: E402
from coopsynth.video import motion_matched_sampling, prepare_video  # noqa: E402

CLIPS = ["tree_foliage_opencv", "flame_rendered_castle"]
OUT = HERE / "out" / "video"


def run_coopsynth(
    train: torch.Tensor,
    k: int,
    seed: int,
    preset: str,
    work: Path,
    refines: list[int] | None,
    reuse: bool,
    overrides: dict | None = None,
    matched: bool = False,
    refit: bool = False,
    sample_precisions: tuple[str, ...] = (),
) -> tuple[dict, float, str]:
    """Train once (or, with `reuse`, load the model the last run left in `work`); then samples
    with each refinement count from the same latents: "coopsynth" is the preset's own count. With
    `matched`, also the preset's samples histogram-matched to the training clip ("coopsynth
    matched"; videos sample unmatched by default) and, with `refit`, matched samples at the sampling
    settings whose matched videos move most like the clip ("coopsynth matched, motion refit").
    Every row samples in the precision `coopsynth video` samples with (`Accel.for_sampling`: bf16
    on a CPU with bf16 units). `sample_precisions`: the preset's samples again, from the same model
    and latents, computed in each of these precisions ("coopsynth, P sampling"; the note gives
    each row's sampling seconds)."""
    ckpt = work / "model.pt"
    if reuse and ckpt.exists():
        model, blob = pipeline.load_model(ckpt, "cpu")
        cfg, delta = blob["config_obj"], float(blob.get("delta", blob["config_obj"].delta))
        secs, note = float(blob["meta"]["seconds"]), f"{blob['step']} it (reused model)"
        if model.quantiles is None:  # a model from before histogram matching: what training now stores
            model.quantiles = quantile_function(train)
    else:
        t0 = time.perf_counter()
        job = pipeline.TrainJob(
            input=work / "train.mp4", output=work, preset=preset, seed=seed, force=True, overrides=overrides or {}
        )
        res = pipeline.train(job, data=train)
        tr = res["trainer"]
        model, cfg, delta = tr.model, tr.cfg, tr.delta
        secs, note = time.perf_counter() - t0, f"{res['steps']} it, {res.get('rollbacks', 0)} roll-backs"
    trained = model.accel
    model.accel = trained.for_sampling(model.device)  # as `coopsynth video` samples
    out = {}
    for refine in dict.fromkeys([cfg.refine, *(refines if refines is not None else [cfg.langevin_steps])]):
        name = "coopsynth" if refine == cfg.refine else f"coopsynth --refine {refine}"
        gen = torch.Generator(device=model.device).manual_seed(seed + 1)  # the same latents for every count
        smooth = cfg.sample_smooth if refine == cfg.refine else 0.0  # --refine L rows: the plain latents, as before
        t0 = time.perf_counter()
        s = model.sample(k, tuple(train.shape[1:]), refine=refine, langevin=cfg.langevin(delta), generator=gen, smooth=smooth)
        out[name] = list(s)
        if refine == cfg.refine and sample_precisions:
            note += f"; sampling {time.perf_counter() - t0:.2f} s in {model.accel.precision}"
            for sp in sample_precisions:
                gen = torch.Generator(device=model.device).manual_seed(seed + 1)
                t0 = time.perf_counter()
                with model.using(replace(trained, precision=sp)):
                    s = model.sample(
                        k, tuple(train.shape[1:]), refine=refine, langevin=cfg.langevin(delta), generator=gen, smooth=smooth
                    )
                out[f"coopsynth, {sp} sampling"] = list(s)
                note += f", {time.perf_counter() - t0:.2f} s in {sp}"
    if matched:
        refine, smooth = cfg.sampling(matched=True)  # a model from before the matched fit: the raw one's
        gen = torch.Generator(device=model.device).manual_seed(seed + 1)
        s = model.sample(
            k, tuple(train.shape[1:]), refine=refine, langevin=cfg.langevin(delta), generator=gen, smooth=smooth, match=True
        )
        out["coopsynth matched"] = list(s)
        note += f"; matched: refine {refine}, smooth {smooth:g}"
        if refit:  # the motion fit measured on matched videos, as if training had fitted it so
            with model.using(trained):  # in the training precision, as training fits it
                steps, smooth, _ = motion_matched_sampling(
                    model,
                    train.to(model.device),
                    max_steps=cfg.match_motion or 6,
                    langevin=cfg.langevin(delta),
                    seed=seed,
                    match=True,
                )
            gen = torch.Generator(device=model.device).manual_seed(seed + 1)
            s = model.sample(
                k, tuple(train.shape[1:]), refine=steps, langevin=cfg.langevin(delta), generator=gen, smooth=smooth, match=True
            )
            out["coopsynth matched, motion refit"] = list(s)
            note += f"; refit on matched videos: refine {steps}, smooth {smooth:g}"
    return out, secs, note


def run_paper(train: torch.Tensor, k: int, seed: int, seconds: float) -> tuple[list, float, str]:
    from paper_recipe import train_and_sample_video

    c, t, h, w = train.shape
    clip = train[:, : t // 8 * 8, : h // 16 * 16, : w // 16 * 16]  # the recipe's fixed strides
    t0 = time.perf_counter()
    s, iters = train_and_sample_video(clip, seconds, k, seed)
    return list(s), time.perf_counter() - t0, f"{iters} it"


def table(results: list[dict]) -> str:
    """One row per clip and method, then each method's medians. A failed run reads "failed" and
    counts as the worst (inf) in the medians of the three ratios. It fills its "coopsynth" row
    only: the other sampling settings of that clip have no row and no part in their medians."""
    keys = ["spatial_swd_ratio", "st_swd_ratio", "motion_ratio", "copy_index", "diversity", "minutes"]
    worst = {k: float("inf") for k in keys[:3]}
    text = "| clip | method | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys) + "\n"
    for r in results:
        for m, s in r["methods"].items():
            cells = ["failed"] * 3 + ["–", "–", fmt(s["minutes"])] if s.get("failed") else [fmt(s.get(k)) for k in keys]
            text += f"| {r['item']} | {m} | " + " | ".join(cells) + " |\n"
    labels = list(dict.fromkeys(m for r in results for m in r["methods"]))
    for m in labels:
        vals = [as_worst(v, worst) for r in results if (v := r["methods"].get(m))]
        text += f"| **median** | {m} | " + " | ".join(fmt(median([v.get(k, float("nan")) for v in vals])) for k in keys) + " |\n"
        failed = failed_count(r["methods"].get(m) for r in results)
        if failed:
            text += f"| failed runs (counted as the worst) | {m} | {failed} |" + " |" * (len(keys) - 1) + "\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "videos")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default="coopsynth,paper")
    ap.add_argument("--only", default=None)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--refines", default=None, help="comma-separated sampling refinement counts to score (default: the preset's and L)"
    )
    ap.add_argument("--reuse", action="store_true", help="score the models the last run left in --out instead of training")
    ap.add_argument(
        "--matched", action="store_true", help="also score the samples histogram-matched to the training clip (same latents)"
    )
    ap.add_argument(
        "--refit",
        action="store_true",
        help="also the matched samples at the motion fit measured on matched videos (implies --matched)",
    )
    ap.add_argument(
        "--sample-precisions", default="", help="also sample each model in these precisions (comma-separated; a row each)"
    )
    ap.add_argument("--set", default="{}", help="JSON of TrainConfig overrides, for experiments")
    ap.add_argument(
        "--no-write", action="store_true", help="do not append to RESULTS.md (frame strips and item JSON still go to --out)"
    )
    args = ap.parse_args()
    refines = [int(r) for r in args.refines.split(",")] if args.refines else None
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    names = args.only.split(",") if args.only else CLIPS
    methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        path = next((p for p in args.data.iterdir() if p.stem == name), None)
        if path is None:
            print(f"{name}: skipped (not in {args.data})")
            continue
        video, fps, notes = prepare_video(path)
        train, held = metrics.split_halves(video)
        print(f"{name}: {tuple(video.shape)} ({'; '.join(notes) or 'as is'}), training half {tuple(train.shape)}", flush=True)
        r = {"item": name, "methods": {}}
        rows = [("input", [f for f in video[:, ::8].unbind(1)])]
        coop_secs = None
        for m in methods:
            if m == "coopsynth":
                ran, failure = attempt(
                    run_coopsynth,
                    train,
                    args.k,
                    args.seed,
                    args.preset,
                    args.out / name,
                    refines,
                    args.reuse,
                    json.loads(args.set),
                    args.matched or args.refit,
                    args.refit,
                    tuple(p for p in args.sample_precisions.split(",") if p),
                )
                if failure is not None:  # a failed run is a result, shown as such; the peer and the other clips still run
                    r["methods"][m] = failure
                    continue
                runs, secs, note = ran
                coop_secs = secs
            elif m == "paper":
                s, secs, note = run_paper(train, args.k, args.seed, coop_secs or 300.0)
                runs = {m: s}
            else:
                raise SystemExit(f"unknown method {m}")
            for label, s in runs.items():
                ref_held = held[:, : s[0].shape[1], : s[0].shape[2], : s[0].shape[3]]
                ref_train = train[:, : s[0].shape[1]]
                scores = metrics.video_metrics([x.clamp(0, 1) for x in s], ref_held, ref_train, args.seed)
                scores.update({"minutes": secs / 60, "note": note})
                r["methods"][label] = scores
                rows.append((label, [f for f in s[0][:, ::8].unbind(1)]))
                print(
                    f"  {label}: " + ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in scores.items()),
                    flush=True,
                )
        stem = name + REUSE_SUFFIX if args.reuse else name  # a rescoring leaves the training run's files as they are
        contact_sheet(args.out / f"{stem}.png", rows, height=96)
        (args.out / f"{stem}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
    text = header(f"Dynamic textures, preset `{args.preset}`") + table(results)
    where = "benchmarks/out/video" if args.out == OUT else args.out
    text += f"\nFrame strips (every 8th frame; input, then the first sample of each method): `{where}/<clip>{REUSE_SUFFIX if args.reuse else ''}.png`.\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
