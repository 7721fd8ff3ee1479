"""Shared pieces of the benchmark scripts: machine facts, results file, contact sheets."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from coopsynth.errors import CoopsynthError
from coopsynth.io import write_image
from coopsynth.metrics import to_rgb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
REUSE_SUFFIX = ".reuse"  # --reuse rescorings write <item>.reuse.json/.png beside the training run's <item>.json/.png


# CPU flags worth naming in a header: the same model name has come with and without bf16 units
UNITS = (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))


def machine() -> str:
    info: dict[str, str] = {}  # the first processor's lines
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    units = [name for flag, name in UNITS if flag in flags]
    if units:
        cpu += "; " + ", ".join(units)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        return "?"


COMMIT_AT_START = commit()  # the code that ran, even if the tree moves on during a long run


def header(title: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])
    return f"\n## {title}\n\n- date: {now}\n- machine: {machine()}\n- commit: {COMMIT_AT_START}\n- command: `{cmd}`\n\n"


def append_results(text: str, path: Path = RESULTS) -> None:
    if not path.exists():
        path.write_text(
            "# coopsynth benchmark results\n\nEvery section below was written by a script in benchmarks/; rerun the command to check it.\n"
        )
    with open(path, "a") as f:
        f.write(text)


def publish(text: str, write: bool = True) -> None:
    """Print a results section and, unless told not to, append it to RESULTS.md."""
    print(text)
    if write:
        append_results(text)


def attempt(fn: Callable, *args, **kwargs) -> tuple[object, dict | None]:
    """(fn(*args, **kwargs), None), or (None, {"failed": message, "minutes"}) where coopsynth
    raises CoopsynthError (a training run that keeps diverging, say): a benchmark records the
    failure as a result, the worst one, and goes on with the other methods and items."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs), None
    except CoopsynthError as e:
        failure = {"failed": str(e), "minutes": (time.perf_counter() - t0) / 60}
        print(f"    failed after {failure['minutes']:.1f} min: {e}", flush=True)
        return None, failure


def as_worst(scores: dict, worst: dict) -> dict:
    """A result's scores, with a failed run's replaced by `worst` (inf for errors and ratios)."""
    return dict(scores, **worst) if scores.get("failed") else scores


def failed_count(results: Iterable[dict | None]) -> int:
    """How many of these results (None: not run) are failures."""
    return sum(bool(r and r.get("failed")) for r in results)


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.{digits}f}"


def contact_sheet(path: Path, rows: list[tuple[str, list[torch.Tensor]]], height: int = 128) -> None:
    """One row per method: images (C, H, W) in [0, 1] scaled to `height`, separated by white bars."""
    lines = []
    width = 0
    for _, imgs in rows:
        scaled = []
        for im in imgs:
            im = to_rgb(im.float().clamp(0, 1))
            w = max(1, round(im.shape[-1] * height / im.shape[-2]))
            scaled.append(F.interpolate(im[None], size=(height, w), mode="bilinear", align_corners=False)[0])
            scaled.append(torch.ones(3, height, 4))
        line = torch.cat(scaled, dim=2)
        lines.append(line)
        width = max(width, line.shape[-1])
    padded = [torch.cat([ln, torch.ones(3, height, width - ln.shape[-1])], dim=2) for ln in lines]
    sheet = torch.cat([x for ln in padded for x in (ln, torch.ones(3, 4, width))], dim=1)
    write_image(path, sheet)
