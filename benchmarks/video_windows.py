"""Long-video completion in time windows against one pass over the whole clip.

    python benchmarks/video_windows.py                      # flame_rendered_castle, 144 frames (about 8 minutes)
    python benchmarks/video_windows.py --only tree_foliage_opencv --windows 48,72

`coopsynth complete` cuts a video region of more than `completion.VIDEO_VOXELS` voxels into time
windows sharing the networks' reach over time (22 frames by default), each holding what the one
before it filled as visible (`completion.pieces`). The clips in ../shared/data are too short to
need that at the default threshold, so this script lowers the threshold to force windows of
--windows frames and scores them against one pass over the same clip, from one trained model, in
the same run. Per clip: the held-out half prepared as `benchmarks/video_completion.py` does,
played forwards and backwards until it is --frames long (a longer clip of the same texture), the
middle third of its frames missing (a gap longer than a window). Printed per way: the recovery
error (0-255) and the hole SWD ratio (../shared/EVALUATION.md, "Completion"), means over --seeds
seeds, the seconds of one completion after training, and linear interpolation between the gap's
sides as a reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, fmt, header, publish  # noqa: E402
from video_completion import frames_mask, temporal_fill  # noqa: E402

from coopsynth import completion, metrics, pipeline  # noqa: E402
from coopsynth.video import prepare_video  # noqa: E402

OUT = HERE / "out" / "video_windows"


def ping_pong(clip: torch.Tensor, frames: int) -> torch.Tensor:
    """clip (C, T, H, W) played forwards, backwards, forwards ... to `frames` frames."""
    parts, forward = [], True
    while sum(p.shape[1] for p in parts) < frames:
        parts.append(clip if forward else clip.flip(1)[:, 1:-1])
        forward = not forward
    return torch.cat(parts, 1)[:, :frames].contiguous()


def run_item(path: Path, args: argparse.Namespace) -> list[dict]:
    video, _, _ = prepare_video(path)
    _, clip = metrics.split_halves(video)  # the held-out half (C, T, H, W)
    clip = ping_pong(((clip * 255).round() / 255).contiguous(), args.frames)
    c, t, h, w = clip.shape
    missing = frames_mask(t, h, w)
    job = pipeline.TrainJob(input=args.out / "masked.mp4", output=args.out / path.stem, preset=args.preset, force=True)
    t0 = time.perf_counter()
    trainer = pipeline.train(job, mask=~missing[None], data=clip)["trainer"]
    print(f"  {path.stem} ({w}x{h}, {t} frames): trained in {time.perf_counter() - t0:.0f} s", flush=True)
    lv = trainer.cfg.langevin(trainer.delta)
    rows = []
    default = completion.VIDEO_VOXELS
    ways = [("one pass", 2**62)] + [(f"windows of {n} frames", n * h * w) for n in args.windows]
    for name, voxels in ways:
        completion.VIDEO_VOXELS = voxels
        boxes = completion.pieces(trainer.model.net, missing)
        errors, ratios, secs = [], [], []
        for seed in range(args.seeds):
            t1 = time.perf_counter()
            done = completion.complete(
                trainer.model, clip, missing, langevin=lv, refine=trainer.cfg.langevin_steps,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            secs.append(time.perf_counter() - t1)
            scores = metrics.completion_metrics(done, clip, missing, seed)
            errors.append(scores["recovery_error"])
            ratios.append(scores["hole_swd_ratio"])
        completion.VIDEO_VOXELS = default
        windows = ", ".join(f"{b[0].start}-{b[0].stop}" for b in boxes)
        rows.append(
            {"clip": f"{path.stem} ({w}x{h}, {t} frames)", "way": name, "windows": windows,
             "error": sum(errors) / len(errors), "ratio": sum(ratios) / len(ratios), "seconds": sum(secs) / len(secs)}
        )  # fmt: skip
        print(f"  {name} ({windows}): error {rows[-1]['error']:.1f}, ratio {rows[-1]['ratio']:.2f}, {rows[-1]['seconds']:.1f} s")
    ref = metrics.completion_metrics(temporal_fill(clip, missing, "interpolate"), clip, missing, 0)
    rows.append(
        {"clip": rows[-1]["clip"], "way": "interpolate (reference)", "windows": "–",
         "error": ref["recovery_error"], "ratio": ref["hole_swd_ratio"], "seconds": float("nan")}
    )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "videos")
    ap.add_argument("--only", default="flame_rendered_castle", help="comma-separated clip names")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--frames", type=int, default=144, help="the clip's length after playing it back and forth")
    ap.add_argument("--windows", default="48,72", help="window lengths (frames) to force, comma-separated")
    ap.add_argument("--seeds", type=int, default=2, help="completions per way (seeds 0..N-1), scores averaged")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.windows = [int(n) for n in args.windows.split(",")]
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    files = [args.data / f"{n}.mp4" for n in args.only.split(",") if (args.data / f"{n}.mp4").exists()]
    rows = [r for p in files for r in run_item(p, args)]
    text = header(f"Video completion of a long gap: time windows against one pass, preset `{args.preset}`")
    text += (
        f"The middle third of the frames missing. Recovery error (0-255, the mean over {args.seeds} seeds) / hole SWD "
        "ratio (1 = like the truth) / seconds of one completion after training; the windows' frames (start-stop).\n\n"
    )
    text += "| clip | way | windows | error | hole SWD ratio | seconds |\n|---|---|---|---|---|---|\n"
    for r in rows:
        text += f"| {r['clip']} | {r['way']} | {r['windows']} | {r['error']:.1f} | {fmt(r['ratio'])} | {fmt(r['seconds'], 1)} |\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
