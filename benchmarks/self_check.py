"""The self-check at the end of a texture or video run (`pipeline.self_check`): does a score computed
from the training input alone tell poor models from good ones, as the held-out SWD ratio judges them?

    python benchmarks/self_check.py                         # every quality run in benchmarks/out
    python benchmarks/self_check.py --runs benchmarks/out/quality_linear --no-write
    python benchmarks/self_check.py --videos --runs DIR...  # video.py runs (default: benchmarks/out/video*)

A user's run has no held-out texture, so `coopsynth texture` scores its model against the input
itself: SWD(two samples, the input's second half) / SWD(the input's first half, its second half).
This script takes the models that benchmarks/quality.py left in its output folders (each trained
on a texture's training half, with the held-out SWD ratio of its samples in <item>.json), computes
the self-check of each exactly as a run does (on the training half), and tables how well it
follows the held-out ratio: rank correlation, and for thresholds, how many poor models (held-out
ratio above 2, 2.5, 3) it flags against how many good ones (1.5 and below). A model folder that
no longer loads (a network form since removed) is counted and skipped. Run quality.py first:
its model folders are not kept in git. With --videos, the same for the models benchmarks/video.py
left (each trained on a clip's left half; the held-out ratio is the spatial one of the samples as
`coopsynth video` draws them), with the video thresholds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, REUSE_SUFFIX, header, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.errors import CoopsynthError  # noqa: E402
from coopsynth.io import read_image  # noqa: E402
from coopsynth.video import prepare_video  # noqa: E402

# per kind: held-out SWD ratios above which a model counts as poor, at or below which as good, and
# the self-check thresholds tabled (the warning among them). Videos: the benchmark clips' good
# models score 1.06-1.31 held out (RESULTS.md, Dynamic textures)
POOR = {"texture": (2.0, 2.5, 3.0), "video": (1.5, 2.0, 2.5)}
GOOD = {"texture": 1.5, "video": 1.35}
THRESHOLDS = {"texture": (1.5, 2.0, pipeline.SELF_CHECK_WARN, 3.0), "video": (1.0, 1.2, 1.5, pipeline.SELF_CHECK_WARN_VIDEO, 2.5)}


def models(runs: list[Path], kind: str = "texture") -> list[tuple[Path, str, float, Path]]:
    """(run folder, texture or clip, held-out SWD ratio, model.pt) of every coopsynth model in the runs."""
    found = []
    key, sub = ("swd_ratio", "coopsynth") if kind == "texture" else ("spatial_swd_ratio", "")
    for run in runs:
        for item in sorted(run.glob("*.json")):
            if item.name.endswith(REUSE_SUFFIX + ".json"):
                continue
            scores = json.loads(item.read_text()).get("methods", {}).get("coopsynth", {})
            path = run / item.stem / sub / "model.pt"
            if key in scores and path.is_file():
                found.append((run, item.stem, float(scores[key]), path))
    return found


def score(path: Path, source: Path) -> float | None:
    """The self-check of one stored model on its training half (the quality or video protocol's
    split), sampled as a run samples it."""
    model, blob = pipeline.load_model(path, "cpu")
    cfg = blob["config_obj"]
    train, _ = metrics.split_halves(prepare_video(source)[0] if cfg.net.dims == 3 else read_image(source))
    refine, smooth = cfg.sampling(model.matches())  # as a run draws them
    return pipeline.self_check(model, train, refine, cfg.langevin(float(blob.get("delta", cfg.delta))), smooth=smooth)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = (torch.tensor(x, dtype=torch.float64).argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def table(rows: list[dict], skipped: int, kind: str = "texture") -> str:
    held, check = [r["held"] for r in rows], [r["self_check"] for r in rows]
    warn = pipeline.self_check_warn(kind)
    good = [r for r in rows if r["held"] <= GOOD[kind]]
    lines = [
        f"{len(rows)} models ({len(good)} good: held-out SWD ratio {GOOD[kind]:g} or less), {skipped} that no longer load skipped. "
        f"Rank correlation of the self-check with the held-out ratio: {spearman(held, check):.2f}.\n",
        "| self-check above | "
        + " | ".join(f"poor models flagged (held-out > {p:g})" for p in POOR[kind])
        + " | good models flagged |",
        "|---|" + "---|" * (len(POOR[kind]) + 1),
    ]
    for t in THRESHOLDS[kind]:
        cells = []
        for p in POOR[kind]:
            poor = [r for r in rows if r["held"] > p]
            cells.append(f"{sum(r['self_check'] > t for r in poor)} of {len(poor)}")
        cells.append(f"{sum(r['self_check'] > t for r in good)} of {len(good)}")
        lines.append(f"| {t:g}{' (the warning)' if t == warn else ''} | " + " | ".join(cells) + " |")
    flagged_good = [r for r in good if r["self_check"] > warn]
    lines.append("")
    lines += [
        f"- good but flagged: {r['run']}/{r['item']}, held-out {r['held']:.2f}, self-check {r['self_check']:.2f}"
        for r in flagged_good
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--runs", type=Path, nargs="*", help="quality.py output folders (default: benchmarks/out/quality*)")
    ap.add_argument("--videos", action="store_true", help="video.py runs instead (default: benchmarks/out/video*)")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    kind, script, suffix = ("video", "video", ".mp4") if args.videos else ("texture", "quality", ".png")
    folder = args.data / f"{kind}s"
    if not folder.is_dir():
        print(f"skipped: {folder} not found (give --data)")
        return
    runs = args.runs or sorted(p for p in (HERE / "out").glob(f"{script}*") if p.is_dir())
    found = models(runs, kind)
    if not found:
        print(f"skipped: no stored {script}.py models (run benchmarks/{script}.py first)")
        return
    rows, skipped = [], 0
    for run, item, held, path in found:
        try:
            check = score(path, folder / f"{item}{suffix}")
        except (CoopsynthError, KeyError, TypeError, RuntimeError) as e:  # a checkpoint of a network form since removed
            print(f"  {run.name}/{item}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:100]})", flush=True)
            skipped += 1
            continue
        if check is None:
            continue
        rows.append({"run": run.name, "item": item, "held": held, "self_check": check})
        print(f"  {run.name}/{item}: held-out {held:.2f}, self-check {check:.2f}", flush=True)
    if not rows:
        print("no model could be scored")
        return
    runs_text = ", ".join(sorted({r["run"] for r in rows}))
    what = "video models" if args.videos else "models"
    title = f"Self-check against the held-out SWD ratio, the stored {what} of {runs_text}"
    publish(header(title) + table(rows, skipped, kind), write=not args.no_write)


if __name__ == "__main__":
    main()
