"""Maps of one material learnt together (`coopsynth texture --stack`): do a sample's maps line up?

    python benchmarks/stack.py                          # three textures of ../shared/data/textures
    python benchmarks/stack.py --only gimp_bark --no-write

The data has no real material sets (colour with height, normals, ...), so each texture gets a
second map made from its colour by a fixed rule: height = a 5x5 box blur of the luminance. Its
relation to the colour is then known exactly, and a sample's maps line up as well as its height
map agrees with the same rule applied to its colour map. Per texture, on the training half
(../shared/EVALUATION.md's protocol):

- stack:    one model on the 4 channels (colour + height), as `--stack` trains;
- separate: a colour model and a height model, trained apart with the same seed, their samples
            paired by index (what a user gets without --stack).

Scores: the SWD ratio of each map against its held-out half (1 = as close as real texture), and
the alignment: the correlation over pixels between a sample's height map and the rule applied to
its colour map, averaged over the k samples (1 = the maps agree as in the input; about 0 =
unrelated). Writes benchmarks/out/stack/<item>.json and a contact sheet <item>.png (rows: input,
stack colour, stack height, separate colour, separate height), and appends a table to RESULTS.md.
A training run that fails (`CoopsynthError`, such as one that keeps diverging) is recorded as
"failed" and counts as the worst in the medians; `--summarize` tables the items already in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, as_worst, attempt, contact_sheet, fmt, header, median, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.io import read_image  # noqa: E402

DEFAULT = ["efl_rock_01", "gimp_bark", "gimpx_pebbles"]
MAPS = [{"name": "colour", "channels": 3}, {"name": "height", "channels": 1}]  # the stack, as --stack reads it
OUT = HERE / "out" / "stack"


def height_of(colour: torch.Tensor) -> torch.Tensor:
    """The rule that makes the second map: (3, H, W) colour -> (1, H, W) height, a 5x5 box blur of
    the luminance (border replicated)."""
    lum = (0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])[None, None]  # (1, 1, H, W)
    return F.avg_pool2d(F.pad(lum, (2, 2, 2, 2), mode="replicate"), 5, stride=1)[0]


def alignment(colour: torch.Tensor, height: torch.Tensor) -> float:
    """Correlation over pixels between a height map and the rule applied to a colour map."""
    a, b = height.flatten().double(), height_of(colour).flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12))


def train_and_sample(
    data: torch.Tensor, k: int, seed: int, preset: str, workdir: Path, maps: list[dict] | None = None
) -> tuple[list, float, str]:
    """`coopsynth texture`'s training and sampling on `data` (C, H, W), a stack of `maps` where
    given ({"name", "channels"} each, as `--stack` reads them): k samples, minutes, note."""
    t0 = time.perf_counter()
    job = pipeline.TrainJob(input=workdir / "train.png", output=workdir, preset=preset, seed=seed, force=True)
    res = pipeline.train(job, data=data, maps=maps)
    tr = res["trainer"]
    model, cfg = tr.model, tr.cfg
    gen = torch.Generator(device=model.device).manual_seed(seed + 1)
    with model.using(model.accel.for_sampling(model.device)):
        s = model.sample(k, tuple(data.shape[1:]), refine=cfg.langevin_steps, langevin=cfg.langevin(tr.delta), generator=gen)
    note = f"{res['steps']} it" + (", ended by the watchdog" if res["stopped"] == "collapse" else "")
    if res["restarts"]:
        note += f", {res['restarts']} fresh start{'s' * (res['restarts'] > 1)}"
    if res["rollbacks"]:
        note += f", {res['rollbacks']} roll-back{'s' * (res['rollbacks'] > 1)}"
    return list(s.cpu()), (time.perf_counter() - t0) / 60, note


def run_item(path: Path, k: int, seed: int, preset: str, out: Path) -> dict:
    img = read_image(path)
    train, held = metrics.split_halves(img)
    h_train, h_held = height_of(train), height_of(held)
    work = out / path.stem
    result: dict = {"item": path.stem, "size": list(img.shape[1:]), "k": k, "seed": seed}

    def run(name: str, data: torch.Tensor, maps: list[dict] | None = None) -> tuple[list | None, float, str]:
        print(f"  {path.stem}: {name} ...", flush=True)
        ran, failure = attempt(train_and_sample, data, k, seed, preset, work / name, maps)
        return (
            ran if failure is None else (None, failure["minutes"], f"failed: {failure['failed']}")
        )  # recorded; the others go on

    def scores(cs: list | None, hs: list | None, minutes: float, note: str) -> dict:
        if cs is None or hs is None:
            return {"failed": note, "minutes": minutes, "note": note}
        return {
            "colour_swd_ratio": metrics.swd_ratio(cs, held, train, seed=seed)["swd_ratio"],
            "height_swd_ratio": metrics.swd_ratio(hs, h_held, h_train, seed=seed)["swd_ratio"],
            "alignment": sum(alignment(c, h) for c, h in zip(cs, hs, strict=True)) / len(cs),
            "minutes": minutes,
            "note": note,
        }

    s, mins, note = run("stack", torch.cat([train, h_train]), MAPS)
    stack_c, stack_h = ([x[:3] for x in s], [x[3:] for x in s]) if s is not None else (None, None)
    sep_c, mins_c, note_c = run("colour", train)
    sep_h, mins_h, note_h = run("height", h_train)
    result["stack"] = scores(stack_c, stack_h, mins, note)
    result["separate"] = scores(sep_c, sep_h, mins_c + mins_h, f"colour {note_c}; height {note_h}")
    result["input_alignment"] = alignment(train, h_train)  # 1 by construction: the check of the rule
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{path.stem}.json").write_text(json.dumps(result, indent=1))
    rows = [("input", [img, height_of(img)]), ("stack colour", stack_c), ("stack height", stack_h)]
    rows += [("separate colour", sep_c), ("separate height", sep_h)]
    contact_sheet(out / f"{path.stem}.png", [(name, imgs) for name, imgs in rows if imgs is not None])
    return result


KEYS = ("colour_swd_ratio", "height_swd_ratio", "alignment")
WORST = {"colour_swd_ratio": float("inf"), "height_swd_ratio": float("inf"), "alignment": float("-inf")}


def table(results: list[dict]) -> str:
    """One row per texture; a failed run's cell reads "failed" and counts as the worst in the medians."""
    lines = [
        "| texture | stack: colour SWD ratio / height SWD ratio / alignment / min | separate: colour / height / alignment / min |",
        "|---|---|---|",
    ]
    for r in results:
        cells = []
        for m in ("stack", "separate"):
            x = r[m]
            if "failed" in x:
                cells.append(f"failed / {fmt(x['minutes'], 1)}")
            else:
                cells.append(" / ".join([*(fmt(x[key]) for key in KEYS), fmt(x["minutes"], 1)]))
        lines.append(f"| {r['item']} | {' | '.join(cells)} |")
    med = []
    for m in ("stack", "separate"):
        med.append(" / ".join(fmt(median([as_worst(r[m], WORST)[key] for r in results])) for key in KEYS))
    lines.append(f"| **median** | **{med[0]}** | **{med[1]}** |")
    notes = [f"- {r['item']}: stack {r['stack']['note']}; separate {r['separate']['note']}" for r in results]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """The options of the material benchmarks (this one and normals.py)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--only", default=",".join(DEFAULT), help="comma-separated texture stems")
    ap.add_argument("--k", type=int, default=4, help="samples per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    return ap


def colour_textures(args: argparse.Namespace, rule: str) -> list[Path]:
    """The colour textures --only names in --data (none, said so, where the data is absent; grey
    ones skipped, said so: `rule` needs colour)."""
    folder = args.data / "textures"
    if not folder.is_dir():
        print(f"skipped: {folder} not found (give --data)")
        return []
    paths = [folder / f"{s}.png" for s in args.only.split(",")]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(map(str, missing))}")
    grey = [p for p in paths if read_image(p).shape[0] != 3]
    for p in grey:
        print(f"{p.stem}: skipped (grey: the {rule} rule needs a colour texture)")
    return [p for p in paths if p not in grey]


def main() -> None:
    ap = parser(__doc__, OUT)
    ap.add_argument("--summarize", action="store_true", help="table the items already in --out (no training)")
    args = ap.parse_args()
    if args.summarize:
        results = [json.loads(f.read_text()) for f in sorted(args.out.glob("*.json"))]
        if not results:
            raise SystemExit(f"{args.out}: no item results")
        title = f"Maps learnt together (--stack), summary of the item runs in {args.out.name}, {len(results)} textures"
        publish(header(title) + table(results), write=not args.no_write)
        return
    results = [run_item(p, args.k, args.seed, args.preset, args.out) for p in colour_textures(args, "height")]
    if not results:
        return
    text = header(f"Maps learnt together (--stack), preset `{args.preset}`, {len(results)} textures") + table(results)
    publish(text, write=not args.no_write)


if __name__ == "__main__":
    main()
