"""Completion benchmark (../shared/EVALUATION.md, "Completion"): coopsynth against classic inpainting.

    python benchmarks/completion.py --quick      # 3 textures, both masks (about 20 minutes)
    python benchmarks/completion.py              # every texture in ../shared/data/textures

Per texture: take the held-out half (centre-cropped to at most --max-side pixels a side, so a
default completion stays within minutes), mask it with (a) one centre square covering 25% of the
area and (b) random 8x8 blocks covering 30% of the pixels, complete it with each method, and score
the recovery error (0-255, missing pixels) and the hole SWD ratio (EVALUATION.md's, on 7x7 pixel
patches), plus the same ratio over a 3-level Laplacian pyramid where the hole and the visible
region hold whole patches at every level (the centre hole of a 256 px image, not the blocks): the
pixel patches miss wrong structure a few times their size. Peers: OpenCV Telea and
Navier-Stokes, scikit-image biharmonic, PatchMatch, G'MIC inpaint_matchpatch; missing ones are
skipped with one line. coopsynth trains once per mask and is scored twice from that model: one
completion (what `coopsynth complete` writes by default) and the mean of --average N completions
(`coopsynth complete --average N`, the least-error estimate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, as_worst, attempt, contact_sheet, failed_count, fmt, header, median, publish  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.completion import complete, default_refine, default_smooth  # noqa: E402
from coopsynth.io import read_image, write_image  # noqa: E402

QUICK = ["gimp_brick", "skimage_grass", "efl_rock_01"]
OUT = HERE / "out" / "completion"
PEERS = ["telea", "ns", "biharmonic", "patchmatch", "gmic"]


def centre_mask(h: int, w: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    hh, ww = round(h / 2), round(w / 2)  # (h/2) x (w/2) = 25% of the area
    m[(h - hh) // 2 : (h - hh) // 2 + hh, (w - ww) // 2 : (w - ww) // 2 + ww] = True
    return m


def block_mask(h: int, w: int, frac: float = 0.3, block: int = 8, seed: int = 0) -> torch.Tensor:
    """Random non-overlapping 8x8 blocks of a block grid until `frac` of the pixels are missing."""
    g = torch.Generator().manual_seed(seed)
    gh, gw = h // block, w // block
    order = torch.randperm(gh * gw, generator=g)
    m = torch.zeros(h, w, dtype=torch.bool)
    target = frac * h * w
    for idx in order.tolist():
        if m.sum() >= target:
            break
        i, j = divmod(idx, gw)
        m[i * block : (i + 1) * block, j * block : (j + 1) * block] = True
    return m


def benchmark_mask(name: str, h: int, w: int, seed: int) -> torch.Tensor:
    """The protocol's mask by name: "centre" (one square, 25%) or "blocks" (8x8 blocks, 30%)."""
    return centre_mask(h, w) if name == "centre" else block_mask(h, w, seed=seed)


# ----------------------------------------------------------------------------------------------


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _back(a: np.ndarray, c: int) -> torch.Tensor:
    a = a.astype(np.float32) / 255.0
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(a[..., :c].transpose(2, 0, 1).copy())


def peer(name: str, img: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    c = img.shape[0]
    a = _u8(img)
    m = missing.numpy().astype(np.uint8) * 255
    if name in ("telea", "ns"):
        import cv2

        flag = cv2.INPAINT_TELEA if name == "telea" else cv2.INPAINT_NS
        src = a[..., 0] if c == 1 else a
        return _back(cv2.inpaint(src, m, 3, flag), c)
    if name == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        f = img.permute(1, 2, 0).numpy().astype(np.float64)
        return torch.from_numpy(
            inpaint_biharmonic(f, missing.numpy(), channel_axis=-1).astype(np.float32).transpose(2, 0, 1).copy()
        )
    if name == "patchmatch":
        from patchmatch import patch_match

        src = np.repeat(a, 3, axis=2) if c == 1 else a
        return _back(patch_match.inpaint(src, m, patch_size=7), c)
    if name == "gmic":
        import gmic

        with tempfile.TemporaryDirectory() as d:
            write_image(Path(d) / "i.png", img)
            write_image(Path(d) / "m.png", missing[None].float())
            gmic.run(f"{d}/i.png {d}/m.png inpaint_matchpatch[0] [1] keep[0] output {d}/o.png")
            return read_image(Path(d) / "o.png")[:c]
    raise ValueError(name)


def peer_missing(name: str) -> str | None:
    mod = {"telea": "cv2", "ns": "cv2", "biharmonic": "skimage", "patchmatch": "patchmatch", "gmic": "gmic"}[name]
    try:
        __import__(mod)
        if name == "patchmatch":
            from patchmatch import patch_match

            if not patch_match.patchmatch_available:
                return f"{name}: skipped (PatchMatch library not built)"
    except Exception as e:  # noqa: BLE001
        return f"{name}: skipped ({mod} not importable: {type(e).__name__}); pip install -e .[bench]"
    return None


def held_out_crop(path: Path, max_side: int) -> torch.Tensor:
    """The texture's held-out half, centre-cropped to at most max_side a side, on the 8-bit grid."""
    _, held = metrics.split_halves(read_image(path))
    h, w = held.shape[1:]
    hh, ww = min(h, max_side), min(w, max_side)
    img = held[:, (h - hh) // 2 : (h - hh) // 2 + hh, (w - ww) // 2 : (w - ww) // 2 + ww].contiguous()
    return (img * 255).round() / 255


def completions(
    trainer, data: torch.Tensor, missing: torch.Tensor, seed: int, average: int, trained: float, smooth: float | None = None
) -> dict:
    """One completion (what `coopsynth complete` writes by default) and, from the same model, the
    mean of `average` (`--average N`; skipped when below 2): {name: (completed, seconds with training)}.
    smooth: videos, `coopsynth complete --smooth W` (named in the method); None: the CLI's default
    for each (`default_smooth`)."""
    out = {}
    extra = "" if smooth is None else f" --smooth {smooth:g}"
    for name, k in ((f"coopsynth{extra}", 1), (f"coopsynth --average {average}{extra}", average)):
        if k < 1 or (k == 1 and name != f"coopsynth{extra}"):
            continue
        t1 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        lv = trainer.cfg.langevin(trainer.delta)
        refine = default_refine(trainer.cfg.langevin_steps, k)  # as `coopsynth complete [--average N]`
        w = default_smooth(missing, k) if smooth is None else smooth
        done = complete(trainer.model, data, missing, langevin=lv, refine=refine, average=k, smooth=w, generator=gen)
        out[name] = (done, trained + time.perf_counter() - t1)
    return out


def run_coopsynth(
    img: torch.Tensor, missing: torch.Tensor, preset: str, seed: int, work: Path, overrides: dict, average: int
) -> dict[str, tuple[torch.Tensor, float]]:
    """Train once on the visible pixels, then `completions`."""
    t0 = time.perf_counter()
    job = pipeline.TrainJob(input=work / "masked.png", output=work, preset=preset, seed=seed, force=True, overrides=overrides)
    res = pipeline.train(job, mask=~missing[None], data=img)
    return completions(res["trainer"], img, missing, seed, average, time.perf_counter() - t0)


def run_item(
    path: Path,
    methods: list[str],
    preset: str,
    seed: int,
    max_side: int,
    overrides: dict,
    out: Path,
    average: int,
    masks: tuple[str, ...] = ("centre", "blocks"),
) -> dict:
    img = held_out_crop(path, max_side)
    hh, ww = img.shape[1:]
    result = {"item": path.stem, "size": [hh, ww], "masks": {}}
    rows = []
    for mname in masks:
        missing = benchmark_mask(mname, hh, ww, seed)
        shown = img.clone()
        shown[:, missing] = 0.0
        row = [shown]
        result["masks"][mname] = {}
        for method in methods:
            if method == "coopsynth":
                outs, failure = attempt(run_coopsynth, img, missing, preset, seed, out / path.stem / mname, overrides, average)
                if failure is not None:  # a masked training that fails is a result, the worst one, and the peers still run
                    for m in ["coopsynth"] + [f"coopsynth --average {average}"] * (average > 1):
                        result["masks"][mname][m] = failure
                        row.append(shown)  # the contact sheet keeps its columns: the input, unfilled
                    continue
            else:
                t0 = time.perf_counter()
                done = peer(method, img, missing)
                outs = {method: (done, time.perf_counter() - t0)}
            for m, (done, secs) in outs.items():
                done = torch.where(missing[None], done.clamp(0, 1), img)
                scores = metrics.completion_metrics(done, img, missing, seed)
                scores["minutes"] = secs / 60
                result["masks"][mname][m] = scores
                row.append(done)
                print(
                    f"  {path.stem} {mname} {m}: error {scores['recovery_error']:.1f} "
                    f"hole SWD ratio {scores['hole_swd_ratio']:.2f} pyramid {fmt(scores['pyramid_swd_ratio'])} {secs:.0f} s",
                    flush=True,
                )
        row.append(img)
        rows.append((mname, row))
    contact_sheet(out / f"{path.stem}.png", rows)
    (out / f"{path.stem}.json").write_text(json.dumps(result, indent=1))
    return result


def _cell(s: dict | None, pyramid: bool) -> str:
    """error / hole SWD ratio [/ pyramid ratio] / minutes of one result."""
    if s is None:
        return "–"
    if s.get("failed"):
        return f"failed / {fmt(s['minutes'], 1)}"
    p = f" / {fmt(s.get('pyramid_swd_ratio'))}" if pyramid else ""
    return f"{s['recovery_error']:.1f} / {fmt(s['hole_swd_ratio'])}{p} / {fmt(s['minutes'], 1)}"


def table(results: list[dict]) -> str:
    text = ""
    for mname, title in (("centre", "centre square hole, 25% of the area"), ("blocks", "random 8x8 blocks, 30% of the pixels")):
        if mname not in results[0]["masks"]:
            continue
        methods = list(results[0]["masks"][mname])  # in the order they ran, coopsynth's variants included
        # the pyramid ratio needs a hole with whole patches at every level: the centre hole, not the blocks
        pyramid = any(s.get("pyramid_swd_ratio") is not None for r in results for s in r["masks"][mname].values())
        what = " / pyramid hole SWD ratio (3 scales; 1 = like the truth)" if pyramid else ""
        text += (
            f"\n**{title}**: recovery error (0-255, lower is better) / hole SWD ratio (1 = like the truth){what} / minutes\n\n"
        )
        text += "| texture | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods) + "\n"
        for r in results:
            cells = [_cell(r["masks"][mname].get(m), pyramid) for m in methods]
            text += f"| {r['item']} ({r['size'][1]}x{r['size'][0]}) | " + " | ".join(cells) + " |\n"
        cells = []
        for m in methods:
            vals = [r["masks"][mname][m] for r in results if m in r["masks"][mname]]
            worst = {"recovery_error": float("inf"), "hole_swd_ratio": float("inf")}  # a failure's scores
            if pyramid:
                worst["pyramid_swd_ratio"] = float("inf")
            vals = [as_worst(v, worst) for v in vals]
            med = {
                k: median([v.get(k) for v in vals if v.get(k) is not None])
                for k in ("recovery_error", "hole_swd_ratio", "pyramid_swd_ratio", "minutes")
            }
            cells.append(f"**{_cell(med, pyramid)}**")
        text += "| **median** | " + " | ".join(cells) + " |\n"
        failed = [failed_count(r["masks"][mname].get(m) for r in results) for m in methods]
        if any(failed):
            text += "| failed runs (counted as the worst) | " + " | ".join(map(str, failed)) + " |\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "textures")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(["coopsynth", *PEERS]))
    ap.add_argument("--only", default=None)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", default="{}", help="JSON of TrainConfig overrides, for experiments")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--masks", default="centre,blocks", help="which masks: centre, blocks or both")
    ap.add_argument("--average", type=int, default=8, help="also score `--average N` from the same model (0 = skip)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data)")
        return
    methods = []
    for m in args.methods.split(","):
        msg = None if m == "coopsynth" else peer_missing(m)
        if msg:
            print(msg)
        else:
            methods.append(m)
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in {".png", ".jpg"})
    names = QUICK if args.quick else (args.only.split(",") if args.only else None)
    if names:
        files = [p for p in files if p.stem in names]
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.set)
    masks = tuple(args.masks.split(","))
    if not set(masks) <= {"centre", "blocks"}:
        ap.error(f"--masks {args.masks}: use centre, blocks or both")
    results = [
        run_item(p, methods, args.preset, args.seed, args.max_side, overrides, args.out, args.average, masks) for p in files
    ]
    text = header(
        f"Completion, preset `{args.preset}`, {len(results)} textures (held-out halves, at most {args.max_side} px a side)"
    )
    text += table(results)
    where = "benchmarks/out/completion" if args.out == OUT else args.out
    text += f"\nContact sheets: `{where}/<texture>.png` (per mask: masked input, each method, truth).\n"
    publish(text, not args.no_write)


if __name__ == "__main__":
    main()
