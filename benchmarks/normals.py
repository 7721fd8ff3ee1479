"""A normal map in a stack (`coopsynth texture --stack` with a normal map): how far from unit length
are the normals the networks sample, and what does making them unit (`pipeline.unit_normals`, which
`sample` and `complete` apply) do to their quality?

    python benchmarks/normals.py                        # three textures of ../shared/data/textures
    python benchmarks/normals.py --only gimp_bark --no-write

The data has no real material sets, so each texture gets a normal map made from its colour by a
fixed rule (benchmarks/stack.py's height, a 5x5 box blur of the luminance, then its normals:
(-s dh/dx, -s dh/dy, 1) made unit, central differences, s = STRENGTH). One model learns colour and
normals together, as `--stack` does, on the training half (../shared/EVALUATION.md's protocol);
its k samples are scored in three forms: raw, with whole vectors scaled to unit length, and with
unit normals as coopsynth writes them (`unit_normals`: x and y kept, z the rest of the length):

- length: the mean of |1 - |2n - 1|| over a sample's normal-map pixels, and the share of pixels
  off by more than 0.05 (a shading engine reads the length as it is);
- normal SWD ratio: the normal map's SWD ratio against its held-out half (1 = as close as real);
- agreement: the mean angle in degrees between a sample's normals and the rule applied to its
  colour map (0 = the maps agree as in the input). Scaling leaves every angle as it was; it says
  how well the two maps line up.

Writes benchmarks/out/normals/<item>.json and appends a table to RESULTS.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import HERE, attempt, fmt, header, median, publish  # noqa: E402
from stack import colour_textures, height_of, parser, train_and_sample  # noqa: E402

from coopsynth import metrics, pipeline  # noqa: E402
from coopsynth.io import read_image  # noqa: E402

OUT = HERE / "out" / "normals"
STRENGTH = 8.0  # the rule's slope scale: tilts of up to a few tens of degrees on these textures
MAPS = [{"name": "colour", "channels": 3}, {"name": "normal", "channels": 3, "normal": True}]


def normals_of(colour: torch.Tensor) -> torch.Tensor:
    """The rule: (3, H, W) colour -> (3, H, W) normal map in [0, 1] of its height (`height_of`)."""
    h = F.pad(height_of(colour)[None], (1, 1, 1, 1), mode="replicate")[0, 0]  # (H + 2, W + 2)
    dx = (h[1:-1, 2:] - h[1:-1, :-2]) / 2
    dy = (h[2:, 1:-1] - h[:-2, 1:-1]) / 2
    n = torch.stack([-STRENGTH * dx, -STRENGTH * dy, torch.ones_like(dx)])
    return (n / n.norm(dim=0, keepdim=True) + 1) / 2


def scaled(y: torch.Tensor) -> torch.Tensor:
    """The alternative to `unit_normals`: a (colour + normal) sample's normal vectors divided by their length."""
    v = y[3:] * 2 - 1
    return torch.cat([y[:3], (v / v.norm(dim=0, keepdim=True).clamp_min(1e-6) + 1) / 2])


def length_error(normal: torch.Tensor) -> tuple[float, float]:
    """(mean |1 - length|, share of pixels off by more than 0.05) of a normal map in [0, 1]."""
    off = ((normal * 2 - 1).norm(dim=0) - 1).abs()
    return float(off.mean()), float((off > 0.05).float().mean())


def agreement(colour: torch.Tensor, normal: torch.Tensor) -> float:
    """Mean angle in degrees between a normal map and the rule applied to a colour map."""
    a = F.normalize(normal.double() * 2 - 1, dim=0)
    b = F.normalize(normals_of(colour).double() * 2 - 1, dim=0)
    return float(torch.rad2deg(torch.acos((a * b).sum(0).clamp(-1, 1))).mean())


def run_item(path: Path, k: int, seed: int, preset: str, out: Path) -> dict:
    img = read_image(path)
    train, held = metrics.split_halves(img)
    n_train, n_held = normals_of(train), normals_of(held)
    print(f"  {path.stem}: stack of colour and normals ...", flush=True)
    ran, failure = attempt(train_and_sample, torch.cat([train, n_train]), k, seed, preset, out / path.stem, MAPS)
    result: dict = {"item": path.stem, "size": list(img.shape[1:]), "k": k, "seed": seed}
    result["input"] = {"length": length_error(n_train)[0], "agreement": agreement(train, n_train)}  # the rule's check
    if failure is not None:
        result["failed"], result["minutes"] = failure["failed"], failure["minutes"]
    else:
        samples, minutes, note = ran
        result.update(minutes=minutes, note=note)
        forms = {"raw": lambda y: y, "scaled": scaled, "unit": lambda y: pipeline.unit_normals(y, MAPS)}
        for form, fix in forms.items():
            ys = [fix(y) for y in samples]
            cs, ns = [y[:3] for y in ys], [y[3:] for y in ys]
            lengths = [length_error(n) for n in ns]
            result[form] = {
                "length": sum(x[0] for x in lengths) / k,
                "off": sum(x[1] for x in lengths) / k,
                "normal_swd_ratio": metrics.swd_ratio(ns, n_held, n_train, seed=seed)["swd_ratio"],
                "colour_swd_ratio": metrics.swd_ratio(cs, held, train, seed=seed)["swd_ratio"],
                "agreement": sum(agreement(c, n) for c, n in zip(cs, ns, strict=True)) / k,
            }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{path.stem}.json").write_text(json.dumps(result, indent=1))
    return result


FORMS = ("raw", "scaled", "unit")


def cell(x: dict) -> str:
    return f"{fmt(x['length'], 3)} / {x['off']:.0%} / {fmt(x['normal_swd_ratio'])}"


def table(results: list[dict]) -> str:
    lines = [
        "| texture | raw: mean length error / share off by > 0.05 / normal SWD ratio | scaled: the same | unit, as written: the same "
        "| colour SWD ratio | agreement (degrees) | input agreement | min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    done = [r for r in results if "failed" not in r]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['item']} | failed: {r['failed']} | | | | | | {fmt(r['minutes'], 1)} |")
            continue
        cells = [cell(r[f]) for f in FORMS] + [fmt(r["raw"]["colour_swd_ratio"]), fmt(r["unit"]["agreement"], 1)]
        lines.append(f"| {r['item']} | {' | '.join(cells)} | {fmt(r['input']['agreement'], 1)} | {fmt(r['minutes'], 1)} |")
    if done:
        keys = ("length", "off", "normal_swd_ratio")
        med = [cell({k: median([r[f][k] for r in done]) for k in keys}) for f in FORMS]
        med += [fmt(median([r["raw"]["colour_swd_ratio"] for r in done])), fmt(median([r["unit"]["agreement"] for r in done]), 1)]
        lines.append(f"| **median of {len(done)}** | " + " | ".join(f"**{m}**" for m in med) + " | | |")
    notes = [f"- {r['item']}: {r['note']}" for r in done]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    args = parser(__doc__, OUT).parse_args()
    results = [run_item(p, args.k, args.seed, args.preset, args.out) for p in colour_textures(args, "normal")]
    if results:
        title = f"A normal map in a stack (colour + normals), preset `{args.preset}`, {len(results)} textures"
        publish(header(title) + table(results), write=not args.no_write)


if __name__ == "__main__":
    main()
