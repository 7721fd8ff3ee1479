"""Video completion benchmark (../shared/EVALUATION.md, "Completion", masks c and d).

    python benchmarks/video_completion.py             # tree_foliage_opencv and flame_rendered_castle
    python benchmarks/video_completion.py --only flame_rendered_castle --methods coopsynth,interpolate
    python benchmarks/video_completion.py --only flame_rendered_castle --average 4 --smooth default,0,2

Per clip: scale and trim it as a default `coopsynth video` run does, take the held-out (right) half
over all frames, and mask it with (c) the middle third of the frames missing and (d) random 8x8
blocks covering 30% of the pixels, the same blocks in every frame (so that no frame can borrow the
pixels from its neighbours). Complete it with each method and score the recovery error (0-255) and
the hole SWD ratio (metrics.completion_metrics: for whole missing frames, against the visible
frames). coopsynth learns from the visible pixels of the clip itself, as `coopsynth complete
clip.mp4 --mask ...` does. Peers: for (c), linear interpolation in time between the visible
frames on each side of the gap, and holding the nearest visible frame; for (d), the image
inpainters of benchmarks/completion.py frame by frame (those that are installed). coopsynth is
scored twice from one model: one completion and the mean of --average N (8), each with the
CLI's default `--smooth` (4 for a mean over whole missing frames, else 0); with --smooth default,0,2
twice more for each number, with that latent correlation over time (`coopsynth complete --smooth 2`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, contact_sheet, fmt, header, median, publish  # noqa: E402
from completion import block_mask, completions, peer, peer_missing  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.video import prepare_video  # noqa: E402

CLIPS = ["tree_foliage_opencv", "flame_rendered_castle"]
OUT = HERE / "out" / "video_completion"
FRAME_PEERS = ["interpolate", "hold"]  # for missing frames
IMAGE_PEERS = ["telea", "ns", "biharmonic", "patchmatch"]  # frame by frame, for blocks


def frames_mask(t: int, h: int, w: int) -> torch.Tensor:
    """(T, H, W) bool: the middle third of the frames missing."""
    m = torch.zeros(t, h, w, dtype=torch.bool)
    m[t // 3 : t - t // 3] = True
    return m


def temporal_fill(video: torch.Tensor, missing: torch.Tensor, how: str) -> torch.Tensor:
    """Fill whole missing frames of (C, T, H, W) from the nearest visible frames on each side:
    linearly blended ("interpolate") or the nearer one held ("hold")."""
    out = video.clone()
    gone = missing.flatten(1).all(1).tolist()  # (T,) whole frames missing
    seen = [i for i, g in enumerate(gone) if not g]
    for i, g in enumerate(gone):
        if not g:
            continue
        before = max((j for j in seen if j < i), default=None)
        after = min((j for j in seen if j > i), default=None)
        if before is None or after is None:
            out[:, i] = video[:, after if before is None else before]
            continue
        a = (i - before) / (after - before)
        if how == "hold":
            a = float(a > 0.5)
        out[:, i] = (1 - a) * video[:, before] + a * video[:, after]
    return out


def run_coopsynth(
    clip: torch.Tensor,
    missing: torch.Tensor,
    preset: str,
    seed: int,
    work: Path,
    steps: int | None,
    average: int,
    smooths: list[float | None],
) -> dict[str, tuple[torch.Tensor, float, str]]:
    """Train once on the visible pixels, then one completion and the mean of `average`
    (completion.completions); each with its seconds (training included) and a note."""
    t0 = time.perf_counter()
    job = pipeline.TrainJob(input=work / "masked.mp4", output=work, preset=preset, seed=seed, force=True, steps=steps)
    res = pipeline.train(job, mask=~missing[None], data=clip)
    note = f"{res['steps']} it, {res.get('rollbacks', 0)} roll-backs"
    trained = time.perf_counter() - t0
    done = {}
    for smooth in smooths:  # each from the same model (--smooth W)
        done.update(completions(res["trainer"], clip, missing, seed, average, trained, smooth))
    return {name: (v, secs, note) for name, (v, secs) in done.items()}


def run_item(
    path: Path,
    methods: list[str],
    preset: str,
    seed: int,
    out: Path,
    steps: int | None = None,
    average: int = 8,
    smooths: tuple[float | None, ...] = (None,),
) -> dict:
    video, _, notes = prepare_video(path)
    _, clip = metrics.split_halves(video)  # the held-out half: (C, T, H, W)
    clip = ((clip * 255).round() / 255).contiguous()
    c, t, h, w = clip.shape
    print(f"{path.stem}: held-out half {tuple(clip.shape)} ({'; '.join(notes) or 'as is'})", flush=True)
    result = {"item": path.stem, "size": [t, h, w], "masks": {}}
    rows = []
    masks = {"frames": frames_mask(t, h, w), "blocks": block_mask(h, w, seed=seed)[None].expand(t, h, w).contiguous()}
    for mname, missing in masks.items():
        shown = clip.clone()
        shown[:, missing] = 0.0
        middle = t // 2  # a frame inside the gap of (c); any frame for (d)
        row = [shown[:, middle]]
        result["masks"][mname] = {}
        for method in methods:
            if (method in FRAME_PEERS and mname != "frames") or (method in IMAGE_PEERS and mname != "blocks"):
                continue  # this peer does not apply to this mask
            t0 = time.perf_counter()
            if method == "coopsynth":
                outs = run_coopsynth(clip, missing, preset, seed, out / path.stem / mname, steps, average, smooths)
            elif method in FRAME_PEERS:
                done = temporal_fill(clip, missing, method)
                outs = {method: (done, time.perf_counter() - t0, "")}
            else:
                done = torch.stack([peer(method, f, mf) for f, mf in zip(clip.unbind(1), missing.unbind(0), strict=True)], 1)
                outs = {method: (done, time.perf_counter() - t0, "")}
            for m, (done, secs, note) in outs.items():
                done = torch.where(missing[None], done.clamp(0, 1), clip)
                scores = metrics.completion_metrics(done, clip, missing, seed)
                scores.update({"minutes": secs / 60, "motion": metrics.mean_motion(done), "note": note})
                result["masks"][mname][m] = scores
                row.append(done[:, middle])
                print(
                    f"  {path.stem} {mname} {m}: error {scores['recovery_error']:.1f} hole SWD ratio "
                    f"{scores['hole_swd_ratio']:.2f} {secs:.0f} s {note}",
                    flush=True,
                )
        row.append(clip[:, middle])
        rows.append((mname, row))
    result["motion_truth"] = metrics.mean_motion(clip)
    contact_sheet(out / f"{path.stem}.png", rows, height=96)
    (out / f"{path.stem}.json").write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    text = ""
    titles = {
        "frames": "(c) the middle third of the frames missing",
        "blocks": "(d) random 8x8 blocks, 30% of the pixels, every frame",
    }
    for mname, title in titles.items():
        ms = list(dict.fromkeys(m for r in results for m in r["masks"][mname]))  # as they ran, coopsynth's variants too
        text += f"\n**{title}**: recovery error (0-255, lower is better) / hole SWD ratio (1 = like the truth) / minutes\n\n"
        text += "| clip | " + " | ".join(ms) + " |\n|---|" + "---|" * len(ms) + "\n"
        for r in results:
            cells = []
            for m in ms:
                s = r["masks"][mname].get(m)
                cells.append(
                    "–" if s is None else f"{s['recovery_error']:.1f} / {fmt(s['hole_swd_ratio'])} / {fmt(s['minutes'], 1)}"
                )
            t, h, w = r["size"]
            text += f"| {r['item']} ({w}x{h}, {t} frames) | " + " | ".join(cells) + " |\n"
        cells = []
        for m in ms:
            vals = [r["masks"][mname][m] for r in results if m in r["masks"][mname]]
            cells.append(
                f"**{fmt(median([v['recovery_error'] for v in vals]), 1)} / {fmt(median([v['hole_swd_ratio'] for v in vals]))} / "
                f"{fmt(median([v['minutes'] for v in vals]), 1)}**"
            )
        text += "| **median** | " + " | ".join(cells) + " |\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "videos")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(["coopsynth", *FRAME_PEERS, *IMAGE_PEERS]))
    ap.add_argument("--only", default=None)
    ap.add_argument("--steps", type=int, default=None, help="training iterations (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--average", type=int, default=8, help="also score `--average N` from the same model (0 = skip)")
    ap.add_argument(
        "--smooth", default="default", help="score `--smooth W` for each W of this list (default: the CLI's default), same model"
    )
    args = ap.parse_args()
    smooths = [None if v == "default" else float(v) for v in args.smooth.split(",")]
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    methods = []
    for m in args.methods.split(","):
        msg = peer_missing(m) if m in IMAGE_PEERS else None
        if msg:
            print(msg)
        else:
            methods.append(m)
    names = args.only.split(",") if args.only else CLIPS
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        path = next((p for p in args.data.iterdir() if p.stem == name), None)
        if path is None:
            print(f"{name}: skipped (not in {args.data})")
            continue
        results.append(run_item(path, methods, args.preset, args.seed, args.out, args.steps, args.average, smooths))
    text = header(f"Video completion, preset `{args.preset}`, {len(results)} clips (held-out halves)")
    text += table(results)
    text += (
        f"\nContact sheets: `{'benchmarks/out/video_completion' if args.out == OUT else args.out}/<clip>.png` "
        "(per mask, the middle frame: masked input, "
        "each method, truth).\n"
    )
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
