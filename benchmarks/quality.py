"""Texture quality benchmark: the held-out protocol of ../shared/EVALUATION.md, coopsynth and its
peers side by side in one run.

    python benchmarks/quality.py                       # every texture in ../shared/data/textures
    python benchmarks/quality.py --quick               # a 3-texture subset (about 10 minutes)
    python benchmarks/quality.py --only gimp_brick,efl_rock_01 --methods coopsynth,gmic
    python benchmarks/quality.py --summarize           # one table from every item run so far
    python benchmarks/quality.py --methods coopsynth --reuse --unmatched   # the last run's models, matched and not

Per item: split into training and held-out halves, train coopsynth (--preset) on the training half,
run the paper's recipe for the same minutes, G'MIC syntexturize_matchpatch and Resynthesizer, draw
k samples each, score them, write a contact sheet (benchmarks/out/quality/<item>.png) and the
item's numbers (benchmarks/out/quality/<item>.json), and append a dated table to RESULTS.md.
Missing peers or data are skipped with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, REUSE_SUFFIX, as_worst, attempt, contact_sheet, failed_count, fmt, header, median, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.histogram import quantile_function  # noqa: E402
from coopsynth.io import read_image, write_image  # noqa: E402

QUICK = ["gimp_brick", "skimage_grass", "efl_rock_01"]
METHODS = ["coopsynth", "paper", "gmic", "resynth"]
OUT = HERE / "out" / "quality"


# ----------------------------------------------------------------------------------------------
# methods: each returns (k samples [(C, h, w)], seconds, note)


def run_coopsynth(
    train: torch.Tensor,
    k: int,
    seed: int,
    preset: str,
    workdir: Path,
    overrides: dict,
    device: str = "auto",
    precision: str = "auto",
    sample_precisions: tuple[str, ...] = (),
    unmatched: bool = False,
    reuse: bool = False,
) -> tuple[dict[str, list], float, str]:
    """Train once (or, with `reuse`, load the model a run left in `workdir`); samples from the same
    latents: as `coopsynth texture` samples (key ""), in each of `sample_precisions` (key ", P
    sampling") and, with `unmatched`, without histogram matching (key " unmatched")."""
    t0 = time.perf_counter()
    ckpt = workdir / "model.pt"
    if reuse and ckpt.exists():
        model, blob = pipeline.load_model(ckpt, device, precision)
        cfg, delta = blob["config_obj"], float(blob.get("delta", blob["config_obj"].delta))
        secs, note = float(blob["meta"]["seconds"]), f"{blob['step']} it (reused model)"
        if model.quantiles is None:  # a model from before histogram matching: what training now stores
            model.quantiles = quantile_function(train)
            note += ", quantiles from the training half"
    else:
        job = pipeline.TrainJob(
            input=workdir / "train.png",
            output=workdir,
            preset=preset,
            seed=seed,
            force=True,
            overrides=overrides,
            device=device,
            precision=precision,
        )
        res = pipeline.train(job, data=train)
        tr = res["trainer"]
        model, cfg, delta, secs = tr.model, tr.cfg, tr.delta, 0.0
        note = f"{res['steps']} it on {model.device.type}"
        if res["stopped"] == "collapse":
            note += ", ended by the watchdog"
        if res["restarts"]:
            note += f", {res['restarts']} fresh start{'s' * (res['restarts'] > 1)}"
    size = tuple(train.shape[1:])
    out = {}
    trained = model.accel
    variants = [("", "", True)] + [(f", {sp} sampling", sp, True) for sp in sample_precisions]
    if unmatched:
        variants.append((" unmatched", "", False))
    for key, sp, match in variants:
        # "": what `coopsynth texture` samples with (Accel.for_sampling), else the precision named
        accel = trained.for_sampling(model.device) if not sp else replace(trained, precision=sp)
        gen = torch.Generator(device=model.device).manual_seed(seed + 1)  # the same latents for each
        with model.using(accel):
            s = model.sample(k, size, refine=cfg.langevin_steps, langevin=cfg.langevin(delta), generator=gen, match=match).cpu()
        out[key] = list(s)
        secs = secs or time.perf_counter() - t0  # training and the first sampling, as a user runs it
    return out, secs, note


def run_paper(train: torch.Tensor, k: int, seed: int, seconds: float) -> tuple[list, float, str]:
    from paper_recipe import train_and_sample

    t0 = time.perf_counter()
    s, iters = train_and_sample(train, seconds, k, seed)
    return list(s), time.perf_counter() - t0, f"{iters} it, 64 px"


def run_gmic(train: torch.Tensor, k: int, seed: int) -> tuple[list, float, str]:
    import gmic

    out = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.png"
        write_image(src, train)
        h, w = train.shape[1:]
        for i in range(k):
            dst = Path(d) / f"o{i}.png"
            gmic.run(f"srand {seed + i} {src} syntexturize_matchpatch {w},{h} output {dst}")
            img = read_image(dst)
            out.append(img[: train.shape[0]] if img.shape[0] >= train.shape[0] else img.expand(train.shape[0], -1, -1))
    return out, time.perf_counter() - t0, ""


def run_resynth(train: torch.Tensor, k: int, seed: int) -> tuple[list, float, str]:
    """Resynthesizer fills a masked region from the rest of an image: the training half beside an
    empty area of the same size, the empty area masked."""
    from PIL import Image
    from resynthesizer import resynthesize

    out = []
    t0 = time.perf_counter()
    c, h, w = train.shape
    for i in range(k):
        rng = np.random.default_rng(seed + i)
        a = (train.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas = np.concatenate([a, (rng.random(a.shape) * 255).astype(np.uint8)], axis=1)
        mask = np.zeros(canvas.shape[:2], np.uint8)
        mask[:, w:] = 255
        mode = "L" if c == 1 else "RGB"
        res = resynthesize(Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas, mode), Image.fromarray(mask, "L"))
        r = np.asarray(res.convert(mode), dtype=np.float32) / 255.0
        r = r[..., None] if r.ndim == 2 else r
        out.append(torch.from_numpy(r[:, w:].transpose(2, 0, 1).copy()))
    return out, time.perf_counter() - t0, "fills a masked area"


# ----------------------------------------------------------------------------------------------


def peer_available(name: str) -> str | None:
    mod = {"gmic": "gmic", "resynth": "resynthesizer"}.get(name)
    if mod is None:
        return None
    try:
        __import__(mod)
    except Exception as e:  # noqa: BLE001
        return f"{name}: skipped ({mod} not importable: {type(e).__name__}); pip install -e .[bench]"
    return None


def run_item(
    path: Path,
    methods: list[str],
    k: int,
    seed: int,
    preset: str,
    overrides: dict,
    out: Path = OUT,
    device: str = "auto",
    precisions: tuple[str, ...] = ("auto",),
    sample_precisions: tuple[str, ...] = (),
    unmatched: bool = False,
    reuse: bool = False,
) -> dict:
    """One texture, every method. With several precisions, coopsynth runs once per precision
    (columns "coopsynth fp32", ...) on the same data in the same run."""
    img = read_image(path)
    train, held = metrics.split_halves(img)
    item = path.stem
    work = out / item
    work.mkdir(parents=True, exist_ok=True)
    rows = [("input", [img]), ("held-out", [held])]
    result = {"item": item, "size": list(img.shape[1:]), "methods": {}}
    minutes_coop = None
    for m in methods:
        print(f"  {item}: {m} ...", flush=True)
        if m.startswith("coopsynth"):
            precision = m.split()[1] if " " in m else precisions[0]
            ran, failure = attempt(
                run_coopsynth,
                train,
                k,
                seed,
                preset,
                work / m.replace(" ", "_"),
                overrides,
                device,
                precision,
                sample_precisions,
                unmatched,
                reuse,
            )
            if failure is not None:  # a failed run is a result, the worst one, and the other textures still run
                keys = [""] + [f", {sp} sampling" for sp in sample_precisions] + [" unmatched"] * unmatched
                for key in keys:  # every column this run would have filled
                    result["methods"][m + key] = dict(failure, finite=False)
                continue
            runs, secs, note = ran
            minutes_coop = minutes_coop or secs / 60
            outputs = [(m + key, samples) for key, samples in runs.items()]
        elif m == "paper":
            budget = (minutes_coop * 60) if minutes_coop else 120.0
            samples, secs, note = run_paper(train, k, seed, budget)
            outputs = [(m, samples)]
        elif m == "gmic":
            samples, secs, note = run_gmic(train, k, seed)
            outputs = [(m, samples)]
        elif m == "resynth":
            samples, secs, note = run_resynth(train, k, seed)
            outputs = [(m, samples)]
        else:
            raise SystemExit(f"unknown method {m}")
        for label, samples in outputs:
            finite = all(torch.isfinite(s).all() for s in samples)
            scores = metrics.texture_metrics([s.clamp(0, 1) for s in samples], held, train, seed) if finite else {}
            scores.update({"minutes": secs / 60, "note": note, "finite": finite})
            result["methods"][label] = scores
            rows.append((label, samples))
            print(
                f"    {label}: swd_ratio {fmt(scores.get('swd_ratio'))} copy {fmt(scores.get('copy_index'))} "
                f"div {fmt(scores.get('diversity'))} {secs / 60:.1f} min {note}",
                flush=True,
            )
    stem = item + REUSE_SUFFIX if reuse else item  # a rescoring leaves the training run's files as they are
    contact_sheet(out / f"{stem}.png", rows)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result


def swd_ratio(scores: dict) -> float:
    """The SWD ratio of one method on one texture; a failed run counts as the worst (inf)."""
    return as_worst(scores, {"swd_ratio": float("inf")}).get("swd_ratio", float("nan"))


def table(results: list[dict], methods: list[str]) -> str:
    lines = [
        "| texture | " + " | ".join(f"{m} SWD ratio / copy / div / min" for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for r in results:
        cells = []
        for m in methods:
            s = r["methods"].get(m)
            if not s:
                cells.append("–")
            elif s.get("failed"):
                cells.append(f"failed / – / – / {fmt(s['minutes'], 1)}")
            else:
                cells.append(
                    f"{fmt(s.get('swd_ratio'))} / {fmt(s.get('copy_index'))} / {fmt(s.get('diversity'))} / {fmt(s['minutes'], 1)}"
                )
        lines.append(f"| {r['item']} | " + " | ".join(cells) + " |")
    cells = []
    for m in methods:
        vals = [r["methods"][m] for r in results if m in r["methods"]]
        cells.append(
            " / ".join(
                fmt(
                    median([swd_ratio(v) if key == "swd_ratio" else v.get(key, float("nan")) for v in vals]),
                    1 if key == "minutes" else 2,
                )
                for key in ("swd_ratio", "copy_index", "diversity", "minutes")
            )
        )
    lines.append("| **median** | " + " | ".join(f"**{c}**" for c in cells) + " |")
    worst = []
    for m in methods:
        vals = [swd_ratio(r["methods"][m]) for r in results if m in r["methods"]]
        worst.append(("failed" if max(vals) == float("inf") else fmt(max(vals))) if vals else "–")
    lines.append("| worst SWD ratio | " + " | ".join(worst) + " |")
    failed = [failed_count(r["methods"].get(m) for r in results) for m in methods]
    if any(failed):
        lines.append("| failed runs (counted as the worst) | " + " | ".join(str(n) for n in failed) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "textures")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--only", default=None, help="comma-separated stems")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", default="{}", help="JSON of TrainConfig overrides, for experiments")
    ap.add_argument(
        "--no-write", action="store_true", help="do not append to RESULTS.md (contact sheets and item JSON still go to --out)"
    )
    ap.add_argument("--out", type=Path, default=OUT, help="folder for contact sheets, item JSON and models")
    ap.add_argument("--summarize", action="store_true", help="one table from every item JSON in benchmarks/out/quality")
    ap.add_argument("--device", default="auto", help="coopsynth's device: auto, cpu or cuda")
    ap.add_argument("--precisions", default="auto", help="comma-separated; more than one: a coopsynth column per precision")
    ap.add_argument("--sample-precisions", default="", help="also sample each trained model in these precisions (a column each)")
    ap.add_argument(
        "--unmatched", action="store_true", help="also score coopsynth's samples without histogram matching (same latents)"
    )
    ap.add_argument(
        "--reuse", action="store_true", help="score the coopsynth models a run left in --out instead of training afresh"
    )
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    precisions = tuple(p for p in args.precisions.split(",") if p)
    sample_precisions = tuple(p for p in args.sample_precisions.split(",") if p)
    if len(precisions) > 1 and "coopsynth" in methods:
        i = methods.index("coopsynth")
        methods[i : i + 1] = [f"coopsynth {p}" for p in precisions]

    if args.summarize:
        results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if not p.stem.endswith(REUSE_SUFFIX)]
        if not results:
            raise SystemExit(f"no item results yet in {args.out}")
        text = header("Texture quality, summary of the item runs so far") + table(results, methods)
        publish(text, not args.no_write)
        return
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    for m in list(methods):
        msg = peer_available(m)
        if msg:
            print(msg)
            methods.remove(m)
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    names = QUICK if args.quick else (args.only.split(",") if args.only else None)
    if names:
        files = [p for p in files if p.stem in names]
    overrides = json.loads(args.set)
    results = []
    t0 = time.perf_counter()
    for p in files:
        print(f"{p.name}", flush=True)
        results.append(
            run_item(
                p,
                methods,
                args.k,
                args.seed,
                args.preset,
                overrides,
                args.out,
                args.device,
                precisions,
                sample_precisions,
                args.unmatched,
                args.reuse,
            )
        )
    title = f"Texture quality, preset `{args.preset}`, {len(results)} textures"
    if args.device != "auto" or len(precisions) > 1:
        title += f", device {args.device}, precision {'/'.join(precisions)}"
    if args.reuse:
        title += ", the models of the run in --out (not trained again)"
    columns = list(dict.fromkeys(label for r in results for label in r["methods"]))
    text = header(title) + table(results, columns)
    text += f"\nContact sheets: `{'benchmarks/out/quality' if args.out == OUT else args.out}/<texture>{REUSE_SUFFIX if args.reuse else ''}.png` (rows: input, held-out, then each method's samples). Total {(time.perf_counter() - t0) / 60:.0f} min.\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
