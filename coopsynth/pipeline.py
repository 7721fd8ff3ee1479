"""The jobs behind the CLI, usable from Python: train a model on a file, sample from a model.

No progress bars here: `on_progress(info)` receives a dict after each iteration (step, total,
seconds, seconds_left, energies) and the CLI draws it. Files are written atomically; a run that is
interrupted (SIGINT/SIGTERM) saves a checkpoint first and raises `Interrupted`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed, metrics
from .accel import Accel, precision_warning
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .completion import CONTEXT, SEAM_LENGTH, default_refine, default_smooth, pieces
from .errors import CoopsynthError
from .histogram import match as match_histogram
from .io import (
    BITS16_SUFFIXES,
    MAX_FPS,
    check_bits,
    check_writable,
    read_image_rgba,
    read_video,
    scale_down,
    write_image,
    write_video,
)
from .model import CoopModel
from .networks import NetConfig
from .trainer import WATCHDOG_FLOOR, CollapseError, CoopTrainer, DivergenceError, TrainConfig, crop_size, preset, with_overrides

RESTART_BEFORE = 0.5  # a watchdog end before this fraction of the run (steps or minutes, the further) starts training afresh
MAX_RESTARTS = 2  # fresh starts per run; after them a watchdog end stands wherever it comes
RESTART_SEED = 1000  # attempt k (from 1) trains with seed + RESTART_SEED * k
NORMAL_TOLERANCE = 0.1  # is_normal_map: |2x - 1| this close to 1 ...
NORMAL_SHARE = 0.9  # ... at this share of a map's pixels makes it a normal map
SCORE_SIDE = 256  # attempt scores: samples and the training image's centre, at most this many pixels a side
STEP_BACK_AFTER = 3  # divergences from one good state before the run goes back to the one before it
KEEP_GOOD = 3  # good states kept (every 50 iterations), newest last
SCORE_SEED = 4242  # attempt scores: every attempt is judged from the same latents, noise and patches
SELF_CHECK_WARN = 2.5  # a texture run whose self-check is above this gets a warning (RESULTS.md, "Self-check")
# a video run's: gross failures only. Models trained on a clip's half scored 0.61-0.80 good and
# 1.14-2.89 poor, but whole-clip default runs of the benchmark clips read 1.13 and 1.59 (RESULTS.md,
# "Self-check ... video models" and the note after it): 1.0 would have warned on both
SELF_CHECK_WARN_VIDEO = 2.0
SELF_CHECK_FRAMES = 48  # videos: the self-check compares the first this many frames of each half
SELF_CHECK_MIN = 28  # the self-check needs halves of the input at least this many pixels a side (SWD's pyramid)
SELF_CHECK_SIDE = 640  # and compares at most this many pixels a side of each half, at their centres

Tensor = torch.Tensor
ProgressFn = Callable[[dict], None] | None

MAX_SIDE = 65536  # a requested output side beyond this is refused outright
MAX_SAMPLE_PIXELS = 16384 * 16384  # and so is an output area beyond this


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; `code` is the exit status."""

    def __init__(self, checkpoint: Path, step: int, code: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.checkpoint, self.step, self.code = checkpoint, step, code


# --------------------------------------------------------------------------------------------
# small helpers


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CoopsynthError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise CoopsynthError(f"--device {name}: use auto, cpu or cuda")
    return torch.device(name)


def precision_note(device: str, precision: str) -> str | None:
    """A warning to show before any work where `precision` runs slowly on `device` (see
    `accel.precision_warning`), or None."""
    return precision_warning(resolve_device(device), precision)


def parse_size(text: str | None, what: str = "--size") -> tuple[int, int] | None:
    """'WxH' -> (H, W), and 'N' -> (N, N); None stays None."""
    if text is None:
        return None
    parts = text.strip().lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        raise CoopsynthError(f"{what} '{text}': expected WIDTHxHEIGHT, such as 512x512 (or one number for a square)") from None
    if w <= 0 or h <= 0:
        raise CoopsynthError(f"{what} '{text}': width and height must be positive")
    if max(w, h) > MAX_SIDE or w * h > MAX_SAMPLE_PIXELS:
        raise CoopsynthError(f"{what} '{text}': too large (at most {MAX_SAMPLE_PIXELS} pixels and {MAX_SIDE} a side)")
    return (h, w)


def input_kind(path: Path) -> str:
    """The kind of input: "video" (a video file, a folder of frames, a GIF of several frames) or "texture"."""
    from .io import VIDEO_SUFFIXES, frame_count

    if path.is_dir():
        return "video"
    suf = path.suffix.lower()
    if suf == ".gif":  # a still image or an animation: its frames tell
        return "video" if frame_count(path) > 1 else "texture"
    return "video" if suf in VIDEO_SUFFIXES else "texture"


def _jsonable(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


class _SignalTrap:
    """Turns SIGINT/SIGTERM into a flag checked between iterations (restored on exit)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainJob:
    """What to train and where; every field has the CLI option of the same name."""

    input: Path
    output: Path
    preset: str = "default"
    steps: int | None = None  # iterations; None = the preset's
    minutes: float | None = None  # wall-clock budget instead of (or as well as) steps
    langevin_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | tf32 | bf16 (coopsynth.accel; tf32 is fp32 on a CPU)
    resume: bool = False
    force: bool = False
    max_size: int | None = None  # scale down so the longer side is at most this (images: None = as is; videos: 64)
    max_frames: int | None = None  # videos: keep at most this many frames
    log_every: int = 10  # iterations between log.jsonl lines
    snapshots: int = 8  # samples in progress.png
    checkpoint_every: float = 120.0  # seconds between safety checkpoints
    overrides: dict = field(default_factory=dict)  # further TrainConfig fields
    shards: int = 1  # random streams in one process (equals that many data-parallel processes)
    maps: tuple[Path, ...] = ()  # further images of the same material (same size), learnt with `input` as one stack


def load_input(job: TrainJob) -> tuple[str, Tensor, dict]:
    """Read the job's input: kind, data (C, [T,] H, W) in [0, 1], metadata. With `job.maps`, the
    input and the maps are stacked along C, and meta["maps"] lists each one's name, channels and
    bits (see `load_stack`)."""
    kind = input_kind(job.input)
    if kind == "texture":
        if job.maps:  # each map's depth is in its entry of meta["maps"]
            img, maps = load_stack((job.input, *job.maps))
            depth = {"maps": maps}
        else:
            img, _, bits = read_image_rgba(job.input)
            depth = {"bits": bits}
        notes = [
            f"{m['name']}: a normal map; the samples' normals are made unit length"
            for m in depth.get("maps", [])
            if m.get("normal")
        ]
        if job.max_size is not None:
            img, note = scale_down(img, job.max_size)
            notes += [note] * bool(note)
        return kind, img, {"input": str(job.input), "size": list(img.shape[1:]), **depth, "notes": notes}
    if job.maps:
        raise CoopsynthError(f"{job.input}: only images stack (the maps of one material), not videos")
    from .video import prepare_video

    vid, fps, notes = prepare_video(job.input, job.max_size, job.max_frames)
    return kind, vid, {"input": str(job.input), "size": list(vid.shape[1:]), "fps": fps, "notes": notes}


def map_name(path: Path) -> str:
    """A stack's map is named by its file's stem: sample_000_<name>.png (`map_files`)."""
    return path.stem


def load_stack(paths: tuple[Path, ...], first: tuple[Tensor, int] | None = None) -> tuple[Tensor, list[dict]]:
    """The maps of one material (colour, height, normals, roughness, ...: images of one size) as
    one image (C, H, W), their channels concatenated in the order given, and a list of
    {"name" (the file's stem), "channels", "bits"} per map: a model learns them together, so that
    a sample's maps line up, and `sample` writes one file per map. `first`: the first map's
    (pixels, bits) where the caller has read it already."""
    imgs, maps = [], []
    for i, path in enumerate(paths):
        if input_kind(path) != "texture":
            raise CoopsynthError(f"{path}: only images stack (the maps of one material), not videos")
        if i == 0 and first is not None:
            img, bits = first
        else:
            read = read_image_rgba(path)
            img, bits = read.pixels, read.bits
        if imgs and img.shape[1:] != imgs[0].shape[1:]:
            (h, w), (h0, w0) = img.shape[1:], imgs[0].shape[1:]
            raise CoopsynthError(f"{path}: {w}x{h}, but {paths[0]} is {w0}x{h0}; the maps of a stack are one size")
        if any(m["name"] == map_name(path) for m in maps):
            raise CoopsynthError(f"{path}: two maps of the stack are named {map_name(path)}; their files would collide")
        imgs.append(img)
        maps.append({"name": map_name(path), "channels": img.shape[0], "bits": bits})
        if is_normal_map(img):  # its samples get unit vectors (`unit_normals`)
            maps[-1]["normal"] = True
    return torch.cat(imgs), maps


def is_normal_map(img: Tensor) -> bool:
    """Does a map (C, H, W) hold unit vectors stored as (n + 1) / 2, a normal map (tangent or
    object space)? Three channels with |2x - 1| within NORMAL_TOLERANCE of 1 at NORMAL_SHARE of
    the pixels (8-bit rounding or JPEG moves a length by a few hundredths; colour photographs
    have lengths all over 0..1.7)."""
    if img.shape[0] != 3:
        return False
    length = (img * 2 - 1).norm(dim=0)  # (H, W)
    return bool(((length - 1).abs() < NORMAL_TOLERANCE).float().mean() >= NORMAL_SHARE)


def unit_normals(y: Tensor, maps: list[dict] | None) -> Tensor:
    """A texture (C, H, W) in [0, 1] with the vectors of each normal map (`is_normal_map`) made
    unit length: a network's output is near the sphere but not on it. Each vector keeps its x and
    y (histogram-matched to the input's, per channel, where sampling matches) and its z becomes
    the rest of the unit length, its sign kept, as two-channel (BC5) normal maps are rebuilt; x and
    y are scaled down first where they alone are longer than 1. Scaling whole vectors instead
    scored worse against held-out normals (benchmarks/RESULTS.md, "A normal map in a stack")."""
    if not maps or not any(m.get("normal") for m in maps):
        return y
    parts = list(split_maps(y, maps))
    for i, m in enumerate(maps):
        if m.get("normal"):
            v = parts[i] * 2 - 1  # (3, H, W) in [-1, 1]
            xy, z = v[:2], v[2:]
            r2 = (xy * xy).sum(0, keepdim=True)  # (1, H, W)
            xy = xy * torch.where(r2 > 1, r2.clamp_min(1e-12).rsqrt(), torch.ones_like(r2))
            z = torch.where(z < 0, -1.0, 1.0) * (1 - (xy * xy).sum(0, keepdim=True)).clamp_min(0).sqrt()
            parts[i] = (torch.cat([xy, z]) + 1) / 2
    return torch.cat(parts)


def map_weights(maps: list[dict] | None) -> Tensor | None:
    """Per channel (C,) for `CoopTrainer(weights=...)`: every map of a stack weighs the same in
    training whatever its channel count, sqrt(C / (maps x its channels)) (colour 3 + height 1:
    0.82 and 1.41), so that a one-channel height map is not a quarter of what the networks learn.
    Its height maps came out closer to real ones (RESULTS.md, "Maps weighed equally"). None for
    one image."""
    if not maps or len(maps) < 2:
        return None
    total = sum(m["channels"] for m in maps)
    return torch.cat([torch.full((m["channels"],), math.sqrt(total / (len(maps) * m["channels"]))) for m in maps])


def map_files(path: Path, maps: list[dict] | None) -> list[Path]:
    """The files one sample named `path` is written to: itself, or for a stack of maps one per map,
    NAME_<map>.png (sample_000_albedo.png, ...)."""
    if not maps:
        return [path]
    return [path.with_name(f"{path.stem}_{m['name']}{path.suffix}") for m in maps]


def all_map_files(names: list[Path], maps: list[dict] | None) -> list[Path]:
    """Every file that results named `names` are written to (`map_files` of each)."""
    return [f for n in names for f in map_files(n, maps)]


def split_maps(y: Tensor, maps: list[dict]) -> tuple[Tensor, ...]:
    """A stack's texture (C, ...) as its maps' parts, in order: (c_1, ...), (c_2, ...), ..."""
    return y.split([m["channels"] for m in maps])


def map_layout(maps: list[dict] | None, keys: tuple[str, ...] = ("name", "channels")) -> list[tuple]:
    """What two stacks must share to be one: each map's `keys`, in order ([] for one image)."""
    return [tuple(m[k] for k in keys) for m in maps or []]


def write_texture(path: Path, y: Tensor, bits: str, meta: dict) -> list[Path]:
    """Write one texture sample (C, H, W) in [0, 1] to `path`, or a stack's maps to their files
    (`map_files`), each at the bits `--bits` gives it (`output_bits`, from its own input's depth)."""
    maps = meta.get("maps")
    if not maps:
        return [write_image(path, y, output_bits(bits, "texture", int(meta.get("bits", 8)), path))]
    parts = split_maps(y, maps)
    files = map_files(path, maps)
    return [write_image(f, x, output_bits(bits, "texture", m["bits"], f)) for f, x, m in zip(files, parts, maps, strict=True)]


def preview_image(y: Tensor, meta: dict) -> Tensor:
    """A texture (C, H, W) as an image to look at: itself, or a stack's maps one above the other
    (grey maps in grey, maps of other than 1 or 3 channels by their first channel)."""
    maps = meta.get("maps")
    if not maps:
        return y
    rows = [x if x.shape[0] == 3 else x[:1].expand(3, *x.shape[1:]) for x in split_maps(y, maps)]
    return torch.cat(rows, dim=-2)


def make_config(job: TrainJob, kind: str, channels: int) -> TrainConfig:
    cfg = preset(job.preset, dims=2 if kind == "texture" else 3, channels=channels)
    if job.steps is not None and job.steps <= 0:
        raise CoopsynthError(f"--steps {job.steps}: must be a positive number of iterations")
    if job.minutes is not None and not job.minutes > 0:  # NaN too
        raise CoopsynthError(f"--minutes {job.minutes}: must be positive")
    if job.langevin_steps is not None and job.langevin_steps < 0:
        raise CoopsynthError(f"--langevin-steps {job.langevin_steps}: must be 0 or more")
    steps = job.steps
    if steps is None and job.minutes is not None:
        steps = 10**9  # the clock decides; the learning-rate schedule then follows the clock
    over = dict(job.overrides)
    if isinstance(over.get("net"), dict):  # partial network overrides (benchmarks, experiments)
        net = {**cfg.net.to_dict(), **over["net"]}
        over["net"] = NetConfig.from_dict(net)
    cfg = with_overrides(cfg, **over)
    return with_overrides(cfg, steps=steps, langevin_steps=job.langevin_steps)


@dataclass
class PreparedRun:
    """Everything checked and built before the first iteration (so errors come before any output)."""

    job: TrainJob
    kind: str
    meta: dict
    trainer: CoopTrainer
    state: dict | None  # the checkpoint resumed from, if any
    start_seconds: float

    @property
    def total(self) -> int | None:
        return None if self.job.minutes is not None and self.job.steps is None else self.trainer.cfg.steps


def prepare_training(
    job: TrainJob, mask: Tensor | None = None, data: Tensor | None = None, maps: list[dict] | None = None
) -> PreparedRun:
    """Read and check the input, the options and the output folder; build (or resume) the trainer.
    `data` (C, [T,] H, W) in [0, 1] instead of job.input's, with `maps` (`load_stack`'s list) where
    it is a stack."""
    check_seed(job.seed)
    if data is None:
        kind, data, meta = load_input(job)
    else:
        kind = "texture" if data.dim() == 3 else "video"
        meta = {"input": str(job.input), "size": list(data.shape[1:]), **({"maps": maps} if maps else {})}
    device = resolve_device(job.device)
    accel = Accel.for_device(device, job.precision)
    out = Path(job.output)
    if out.suffix.lower() == ".pt" and not out.is_dir():  # a model file name, where a run folder goes
        raise CoopsynthError(
            f"{out}: the output is a folder, and the model goes into it as model.pt; give a folder name "
            f"(such as {out.with_suffix('')})"
        )
    ckpt_path = out / "model.pt"
    if ckpt_path.exists() and not (job.resume or job.force):
        raise CoopsynthError(f"{ckpt_path}: already exists (use --resume to continue it or --force to start over)")
    cfg = make_config(job, kind, data.shape[0])
    crop_size(cfg, tuple(data.shape[1:]), str(job.input))  # an input too small for the networks, named
    start_seconds = 0.0
    state = None
    if job.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, kind)
        old = state["config_obj"]
        if old.net != cfg.net:
            raise CoopsynthError(
                f"{ckpt_path}: the checkpoint's networks differ from this input and preset; use --force to start over"
            )
        keys = ("name", "channels", "bits")
        if map_layout(state.get("meta", {}).get("maps"), keys) != map_layout(meta.get("maps"), keys):
            raise CoopsynthError(f"{ckpt_path}: the checkpoint was trained on other maps; use --force to start over")
        # a resumed run keeps its own schedule unless the user asks for more steps
        cfg = with_overrides(old, steps=job.steps, langevin_steps=job.langevin_steps)
        start_seconds = float(state.get("meta", {}).get("seconds", 0.0))
    elif job.resume:
        raise CoopsynthError(f"{ckpt_path}: no checkpoint to resume")
    if distributed.world()[0] == 0:
        check_writable(out)
    rank, size = distributed.init(device)
    if size > 1 and job.shards != 1:
        raise CoopsynthError("TrainJob.shards is for one process; under torchrun every process is one shard")
    shards = (rank,) if size > 1 else tuple(range(job.shards))
    weights = map_weights(meta.get("maps"))
    trainer = CoopTrainer(data, cfg, device=device, seed=job.seed, mask=mask, shards=shards, accel=accel, weights=weights)
    if state is not None:
        trainer.load_state_dict(state)
    meta.update({"kind": kind, "seed": job.seed, "preset": job.preset, "device": str(device), "precision": job.precision})
    return PreparedRun(job, kind, meta, trainer, state, start_seconds)


def train(
    job: TrainJob,
    on_progress: ProgressFn = None,
    mask: Tensor | None = None,
    data: Tensor | None = None,
    maps: list[dict] | None = None,
) -> dict:
    """Train a model on job.input (or on `data`, a stack where `maps` says so: see
    `prepare_training`); write model.pt, progress.png and log.jsonl into job.output.

    Returns a summary dict (steps, seconds, paths, trainer). Raises CoopsynthError for bad input and
    Interrupted after a signal (checkpoint saved).
    """
    return run_training(prepare_training(job, mask, data, maps), on_progress)


def centre(x: Tensor, side: int) -> Tensor:
    """The centre of an image (C, H, W), at most `side` pixels a side."""
    h, w = (min(n, side) for n in x.shape[-2:])
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def attempt_score(trainer: CoopTrainer, seed: int) -> float | None:
    """How far a texture model's samples are from its training image: the SWD (metrics.swd) of two
    samples, refined as `sample` refines them, against the image's centre, at most SCORE_SIDE
    pixels a side. Lower is closer. It judges the attempts of a run that all ended early, to keep
    the best one. None where it does not apply: videos and masked (completion) training."""
    if trainer.cfg.net.dims != 2 or trainer.mask is not None:
        return None
    model, cfg = trainer.model, trainer.cfg
    ref = model.denormalise(centre(trainer.data, SCORE_SIDE)[None])[0].cpu()  # (C, h, w) in [0, 1]
    h, w = ref.shape[1:]
    gen = torch.Generator(device=model.device).manual_seed(seed)
    # unmatched: the attempts are judged on what the networks learnt, not on the colour map after them
    samples = model.sample(2, (h, w), refine=cfg.langevin_steps, langevin=cfg.langevin(trainer.delta), generator=gen, match=False)
    return metrics.swd(list(samples.cpu()), [ref], seed=seed, patches=2048)


def self_check(
    model: CoopModel, image: Tensor, refine: int, langevin: dict, seed: int = SCORE_SEED, smooth: float = 0.0
) -> float | None:
    """A model judged against its own training image (C, H, W) or clip (C, T, H, W) in [0, 1],
    which has no held-out part: the SWD (metrics.swd) of two samples, as `sample` writes them
    (`refine` steps of `langevin`; videos: latents smoothed over time by `smooth`), against the
    input's second half, over the SWD of its first half against its second (halves along the
    longer side, their centres at most SELF_CHECK_SIDE pixels a side; the samples at most
    SCORE_SIDE; videos: the first SELF_CHECK_FRAMES frames, compared frame by frame). About 1: the
    samples are as close to the input as its halves are to each other. Failed runs mostly score
    high: above SELF_CHECK_WARN it flagged 14 of 35 poor texture models and 1 of 71 good ones;
    videos, above SELF_CHECK_WARN_VIDEO, 2 of 9 poor and 0 of 9 good, a warning for gross failures
    only (benchmarks/self_check.py [--videos]). None where it does not apply:
    inputs of other than 1 or 3 channels, and inputs whose halves are under SELF_CHECK_MIN pixels a
    side. `run_training` does not call it for stacks or completions."""
    if image.shape[0] not in (1, 3):
        return None
    if model.net.dims == 3:
        image = image[:, :SELF_CHECK_FRAMES]
    a, b = (centre(x, SELF_CHECK_SIDE) for x in _halves(image))  # bounded work for a large input
    if min(b.shape[-2:]) < SELF_CHECK_MIN:
        return None
    size = (*b.shape[1:-2], *(min(n, SCORE_SIDE) for n in b.shape[-2:]))
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with model.using(model.accel.for_sampling(model.device)):
        samples = model.sample(2, size, refine=refine, langevin=langevin, generator=gen, smooth=smooth)
    return metrics.swd(list(samples.cpu()), [b], patches=2048) / max(metrics.swd([a], [b], patches=2048), 1e-12)


def self_check_warn(kind: str) -> float:
    """The self-check above which a run of this kind ("texture" or "video") gets a warning."""
    return SELF_CHECK_WARN_VIDEO if kind == "video" else SELF_CHECK_WARN


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """An image's or a clip's two halves along its longer side (metrics.split_halves cuts every clip
    left and right: the benchmarks' protocol)."""
    if x.dim() == 4 and x.shape[-2] > x.shape[-1]:
        h = x.shape[-2] // 2
        return x[..., :h, :], x[..., h : 2 * h, :]
    return metrics.split_halves(x)


def run_training(prep: PreparedRun, on_progress: ProgressFn = None) -> dict:
    """The training loop of a prepared run (see `train`)."""
    job, kind, meta, trainer, state, start_seconds = prep.job, prep.kind, prep.meta, prep.trainer, prep.state, prep.start_seconds
    cfg, device = trainer.cfg, trainer.device
    out = Path(job.output)
    ckpt_path = out / "model.pt"
    log_path = out / "log.jsonl"
    rank, size = distributed.world()
    lead = rank == 0  # only the first process writes files
    if lead and state is None and log_path.exists():
        log_path.unlink()

    preview_size = tuple(min(s, 128) for s in trainer.crop_size[-2:])
    if kind == "video":
        preview_size = (min(trainer.crop_size[0], 16), *preview_size)
    fixed = torch.Generator(device=device).manual_seed(job.seed + 12345)
    z_fixed = trainer.model.latent(1, preview_size, fixed)
    snaps: list[Tensor] = []
    snap_every = max(1, cfg.steps // job.snapshots) if job.minutes is None else None

    def snapshot() -> None:
        if not lead:
            return
        # what `sample` gives: the generator's proposal revised by the descriptor (fixed noise seed)
        y0 = trainer.model.generate(z_fixed, preview_size)
        noise = torch.Generator(device=device).manual_seed(job.seed + 54321)
        y = trainer.model.revise(y0, steps=cfg.langevin_steps, generator=noise, **cfg.langevin(trainer.delta))
        y = trainer.model.denormalise(y)[0]
        if trainer.model.matches():  # as `sample` writes it by default
            y = match_histogram(y, trainer.model.quantiles)
        snaps.append(preview_image(unit_normals(y, meta.get("maps")), meta) if kind == "texture" else y[:, 0])
        strip = torch.cat(snaps[-job.snapshots :], dim=-1)
        write_image(out / "progress.png", strip)

    t0 = time.perf_counter()
    last_ckpt = t0
    good = copy.deepcopy(trainer.state_dict())
    good_step = trainer.step_count
    # the last KEEP_GOOD good states: a state can pass as good (balanced, finite) and still fail on
    # every iteration after it, whatever the step size (a generator already blowing up: gimpx_pebbles'
    # height map, RESULTS.md "Maps learnt together"); after STEP_BACK_AFTER divergences from one
    # state the run goes back to the state before it
    goods = [(good_step, good)]
    fails_here = 0  # divergences since the run last rolled back to a new state
    rollbacks = 0
    restarts = int(state.get("meta", {}).get("restarts", 0)) if state is not None else 0
    attempt_rollbacks = 0  # rollbacks before this attempt (a restart begins a new one)
    early_ends: list[tuple[float, dict, int]] = []  # (score, state, attempt) of attempts that ended early
    kept_attempt = None  # set when every attempt ended early and an earlier one scored best
    budget = None if job.minutes is None else job.minutes * 60.0
    stop_reason = "steps"

    def elapsed() -> float:
        return time.perf_counter() - t0

    if budget is not None and job.steps is None:  # the learning-rate schedule follows the clock
        trainer.progress = lambda: (start_seconds + elapsed()) / (start_seconds + budget)

    def save(reason: str) -> Path:
        """A collective under torchrun: every process hands in its random stream, rank 0 writes."""
        m = dict(meta, seconds=start_seconds + elapsed(), stopped=reason, rollbacks=rollbacks, restarts=restarts, world_size=size)
        if kept_attempt is not None:
            m["kept_attempt"] = kept_attempt
        st = trainer.state_dict()
        if size > 1:
            st["rng_ranks"] = distributed.gather_states(trainer.gen.get_state())
        if lead:
            save_checkpoint(ckpt_path, st, kind, m)
        return ckpt_path

    with _SignalTrap() as trap, open(log_path if lead else os.devnull, "a") as log:

        def keep_best(**why: str) -> None:
            """Every attempt ended early: keep the one whose samples came closest to the input (a
            later attempt is not better by rule; each is a few hundred iterations from its own
            seed), loaded unless it is the one running, and log the pick."""
            nonlocal kept_attempt
            best = min(early_ends, key=lambda e: e[0])
            if best[2] != restarts + 1:
                trainer.load_state_dict(best[1])
                kept_attempt = best[2]
            scores = [round(e[0], 5) for e in early_ends]
            pick = {"event": "best_attempt", "attempt": best[2], "step": trainer.step_count, "scores": scores, **why}
            log.write(json.dumps(pick) + "\n")

        while trainer.step_count < cfg.steps:
            if distributed.any_true(lead and budget is not None and elapsed() >= budget):
                stop_reason = "minutes"
                break
            try:
                stats = trainer.step()
            except DivergenceError as e:
                # roll back to the last good state and continue more carefully: after a collapse
                # (the descriptor ran away) with halved learning rates, after a divergence (a
                # non-finite or runaway revision) with a smaller Langevin step
                rollbacks += 1
                collapse = isinstance(e, CollapseError)
                stepped_back = None
                if not collapse:
                    fails_here += 1
                    if fails_here > STEP_BACK_AFTER and len(goods) > 1:
                        stepped_back = good_step
                        goods.pop()
                        good_step, good = goods[-1]
                        fails_here = 1
                trainer.load_state_dict(good)
                event = {"event": "collapse" if collapse else "divergence", "at_step": e.stats.get("step")}
                event["rolled_back_to"] = good_step
                if stepped_back is not None:
                    event["stepped_back"] = f"the state of iteration {stepped_back} failed {STEP_BACK_AFTER} times"
                if collapse and trainer.lr_scale <= WATCHDOG_FLOOR:
                    # out of halvings: carrying on lets the descriptor win for good (a flame run's lead
                    # went to 10 and its samples to yellow-green mush), so the run ends at the last
                    # balanced state, the model it keeps; unless that is early in the run (a model of
                    # a few hundred iterations samples noise): then training starts afresh, new seed
                    done = max(trainer.step_count / cfg.steps, 0.0 if budget is None else elapsed() / budget)
                    early = distributed.any_true(lead and done < RESTART_BEFORE)
                    score = attempt_score(trainer, job.seed + SCORE_SEED) if early else None
                    if score is not None:
                        event["score"] = round(score, 5)
                        early_ends.append((score, good, restarts + 1))
                    if restarts < MAX_RESTARTS and early:
                        restarts += 1
                        new_seed = job.seed + RESTART_SEED * restarts
                        event["watchdog"] = f"out of halvings early in the run: training starts afresh with seed {new_seed}"
                        log.write(json.dumps(event) + "\n")
                        restart = {"event": "restart", "attempt": restarts + 1, "seed": new_seed, "ended_at": good_step}
                        log.write(json.dumps(restart) + "\n")
                        log.flush()
                        trainer.restart(new_seed)
                        good, good_step, attempt_rollbacks = copy.deepcopy(trainer.state_dict()), 0, rollbacks
                        goods, fails_here = [(good_step, good)], 0
                        if trainer.progress is not None:  # the schedule runs over the time that is left
                            begun = elapsed()
                            trainer.progress = lambda begun=begun: (elapsed() - begun) / max(budget - begun, 1e-9)
                        continue
                    event["watchdog"] = "out of halvings: the run ends at the last balanced state"
                    log.write(json.dumps(event) + "\n")
                    if early and len(early_ends) > 1:
                        keep_best()
                    stop_reason = "collapse"
                    break
                trainer.reseed(rollbacks)  # not a replay of the draws that failed
                if collapse:
                    trainer.lr_scale *= 0.5
                    good["lr_scale"] = trainer.lr_scale
                else:
                    trainer.delta *= 0.7
                    good["delta"] = trainer.delta
                event.update(new_delta=round(trainer.delta, 6), lr_scale=trainer.lr_scale)
                if collapse and trainer.lr_scale <= WATCHDOG_FLOOR:
                    event["watchdog"] = "last halving: another collapse ends the run at the last balanced state"
                log.write(json.dumps(event) + "\n")
                log.flush()
                if rollbacks - attempt_rollbacks > 20:
                    if not early_ends:
                        raise CoopsynthError(
                            f"{job.input}: training diverged {rollbacks - attempt_rollbacks} times; "
                            "try a smaller --langevin-steps or another preset"
                        ) from None
                    # a fresh start that keeps diverging (its last good state fails again and
                    # again): the run ends with the best of the attempts before it, which ended
                    # early but stood (gimp_burlap's third attempt, RESULTS.md 2026-11-27 19:21)
                    keep_best(diverged=f"attempt {restarts + 1} diverged {rollbacks - attempt_rollbacks} times")
                    stop_reason = "collapse"
                    break
                continue
            step = trainer.step_count
            if step % 50 == 0 and trainer.balanced:
                good = copy.deepcopy(trainer.state_dict())
                good_step = step
                goods = [*goods[1 - KEEP_GOOD :], (good_step, good)]
                fails_here = 0
            secs = elapsed()
            rate = secs / max(step - (state["step"] if state is not None else 0), 1)
            left = (cfg.steps - step) * rate
            if budget is not None:
                left = min(left, budget - secs)
            info = dict(stats, total=cfg.steps if budget is None else None, seconds=start_seconds + secs, seconds_left=left)
            if step % job.log_every == 0 or step == cfg.steps:
                log.write(json.dumps(_jsonable(dict(stats, seconds=round(start_seconds + secs, 3)))) + "\n")
                log.flush()
            if (snap_every and step % snap_every == 0) or (snap_every is None and len(snaps) < secs / budget * job.snapshots):
                snapshot()
            if distributed.any_true(lead and time.perf_counter() - last_ckpt > job.checkpoint_every):
                save("periodic")
                last_ckpt = time.perf_counter()
            if on_progress is not None and lead:
                on_progress(info)
            if distributed.any_true(trap.signum is not None):
                signum = trap.signum or int(signal.SIGTERM)  # torchrun forwards the signal to every process
                path = save("signal")
                log.write(json.dumps({"event": "interrupted", "step": step, "signal": signum}) + "\n")
                raise Interrupted(path, step, 128 + signum)
        log.write(
            json.dumps(
                {
                    "event": "stopped",
                    "reason": stop_reason,
                    "step": trainer.step_count,
                    "seconds": round(start_seconds + elapsed(), 3),
                    "eager_fallbacks": trainer.model.accel.fallbacks,
                }
            )
            + "\n"
        )
    if kind == "video" and cfg.match_motion > 0 and trainer.mask is None:
        from .video import motion_matched_sampling

        clip = trainer.model.denormalise(trainer.data[None])[0]  # (C, T, H, W) in [0, 1]
        # fitted apart for raw and histogram-matched videos: matching stretches a video's contrast,
        # and its frame-to-frame change with it (benchmarks/RESULTS.md, "motion fitted on matched videos")
        fits, lv = {}, cfg.langevin(trainer.delta)
        for matched in (False, True) if trainer.model.quantiles is not None else (False,):
            fits[matched] = motion_matched_sampling(
                trainer.model, clip, max_steps=cfg.match_motion, langevin=lv, seed=job.seed, match=matched
            )
        (steps, smooth, ratios), matched_fit = fits[False], fits.get(True)
        cfg = with_overrides(cfg, sample_refine=steps, sample_smooth=smooth)
        if matched_fit is not None:
            cfg = with_overrides(cfg, matched_refine=matched_fit[0], matched_smooth=matched_fit[1])
        trainer.cfg = cfg
        if lead:
            with open(log_path, "a") as log:
                for matched, (steps, smooth, ratios) in fits.items():
                    event = {
                        "event": "sample_refine",
                        "matched": matched,
                        "steps": steps,
                        "smooth": smooth,
                        "motion_ratios": ratios["refine"],
                        "smooth_ratios": {str(w): r for w, r in ratios["smooth"].items()},
                    }
                    log.write(json.dumps(event) + "\n")
    if not snaps or trainer.step_count % max(snap_every or 1, 1) != 0:
        snapshot()
    check = None
    # a completion's input has holes, and a stack's maps were not calibrated (RESULTS.md, "Self-check"): not judged
    if lead and trainer.mask is None and not meta.get("maps"):
        image = trainer.model.denormalise(trainer.data[None])[0].cpu()  # (C, [T,] H, W) in [0, 1]
        refine, smooth = cfg.sampling(trainer.model.matches())  # as `sample` draws them
        check = self_check(trainer.model, image, refine, cfg.langevin(trainer.delta), smooth=smooth)
    if check is not None:
        meta["self_check"] = round(check, 3)
        with open(log_path, "a") as log:
            event = {"event": "self_check", "score": round(check, 3), "warn_above": self_check_warn(kind)}
            log.write(json.dumps(event) + "\n")
    path = save(stop_reason)
    distributed.barrier()
    return {
        "kind": kind,
        "steps": trainer.step_count,
        "seconds": start_seconds + elapsed(),
        "stopped": stop_reason,
        "rollbacks": rollbacks,
        "restarts": restarts,
        "kept_attempt": kept_attempt,
        "self_check": check,
        "checkpoint": path,
        "trainer": trainer,
        "meta": meta,
    }


# --------------------------------------------------------------------------------------------
# sampling


@dataclass
class SampleJob:
    output: Path  # a folder (sample_000.png, ...), or a file name whose suffix is a format of the model's kind
    samples: int | None = None  # None: 1 into a file name, 4 into a folder
    size: tuple[int, ...] | None = None  # (H, W) or (T, H, W); None = the training input's
    seed: int = 0
    tile: bool = False  # tileable texture (wrap in space)
    loop: bool = False  # looping video (wrap in time)
    refine: int | None = None  # Langevin revisions after the generator; None = the model's (L; videos 0)
    smooth: float | None = None  # videos: latent correlation over time (slower motion); None = the model's
    fps: float | None = None
    force: bool = False  # overwrite existing sample files
    match: bool | None = None  # histogram-match to the training data; None = the kind's default (images yes, videos no)
    bits: str = "auto"  # images: bits a channel, "8", "16" or "auto" (the training input's where the format holds it)


def load_model(path: str | Path, device: str = "auto", precision: str = "auto") -> tuple[CoopModel, dict]:
    blob = load_checkpoint(path)
    dev = resolve_device(device)
    model = model_from_checkpoint(blob, dev, path, Accel.for_device(dev, precision))
    return model, blob


def phase_reporter(on_progress: ProgressFn, work: dict[str, float], samples: int, units: dict[str, str]):
    """report(i, phase, done, of, part, parts, span) for `samples` items of work, each done in
    `parts` parts (1-based `part`; `span`: (start, size), the part's share of the item, equal
    shares when None) made of the phases of `work` (weights, in order), calling on_progress with
    {"fraction" (of all of it, 0..1), "sample" (1-based), "samples", "phase", "done", "of",
    "unit" (units[phase], or ""), "part", "parts"}."""
    total = sum(work.values())
    before = dict(zip(work, itertools.accumulate(work.values(), initial=0.0), strict=False))

    def report(
        i: int, phase: str, done: int, of: int, part: int = 1, parts: int = 1, span: tuple[float, float] | None = None
    ) -> None:
        if on_progress is not None:
            start, size = span or ((part - 1) / parts, 1 / parts)
            within = start + size * (before[phase] + work[phase] * done / of) / total
            info = {"fraction": (i + within) / samples, "sample": i + 1, "samples": samples, "phase": phase}
            on_progress({**info, "done": done, "of": of, "unit": units.get(phase, ""), "part": part, "parts": parts})

    return report


# a sample's work by phase, relative to the generator pass (a 1024x1024 texture on a CPU: the
# generator 0.28 s, 6 refinement steps 0.70 s, the PNG about 0.2 s): for progress, not timing
SAMPLE_WORK = {"generator": 1.0, "refine": 0.4, "writing": 0.4}  # refine: per Langevin step


def sample(model: CoopModel, blob: dict, job: SampleJob, on_progress: ProgressFn = None) -> list[Path]:
    """Write job.samples samples into job.output; returns their paths. `on_progress(info)` after
    every window of every phase: info {"fraction" (of all the work, 0..1), "sample" (1-based),
    "samples", "phase" ("generator", "refine", "writing"), "done", "of", "unit" ("window")}."""
    cfg: TrainConfig = blob["config_obj"]
    kind = blob["kind"]
    meta = blob.get("meta", {})
    size = job.size or tuple(meta.get("size", [256, 256]))
    if len(size) != model.net.dims:
        raise CoopsynthError(f"a {kind} model needs a size of {model.net.dims} numbers, got {size}")
    check_seed(job.seed)
    matched = model.matches(job.match)
    fit_refine, fit_smooth = cfg.sampling(matched)
    refine = fit_refine if job.refine is None else check_refine(job.refine)
    check_fps(job.fps)
    if job.smooth is not None and kind != "video":
        raise CoopsynthError("--smooth: only video models have motion to slow")
    smooth = check_smooth(fit_smooth if job.smooth is None else job.smooth)
    if job.match and model.quantiles is None:
        raise CoopsynthError(
            f"{blob.get('source', 'this model')}: holds no colour distribution for --match-histogram (written by an "
            "older coopsynth); train it again, or sample without --match-histogram"
        )
    names = sample_names(Path(job.output), kind, job.samples)
    check_output_bits(job.bits, kind, meta, names[0])
    refuse_existing(all_map_files(names, meta.get("maps")), job.force)
    check_writable(names[0].parent)
    wrap = (job.tile, job.tile) if kind == "texture" else (job.loop, job.tile, job.tile)
    gen = torch.Generator(device=model.device).manual_seed(job.seed)
    langevin = cfg.langevin(float(blob.get("delta", cfg.delta)))
    fps = float(job.fps or meta.get("fps") or 25.0)
    preview = None if kind != "video" or output_is_file(Path(job.output)) else names[0].with_suffix(".gif")
    work = {**SAMPLE_WORK, "refine": SAMPLE_WORK["refine"] * refine}
    report = phase_reporter(on_progress, work, len(names), dict.fromkeys(work, "window"))

    paths = []
    with model.using(model.accel.for_sampling(model.device)):
        for i, path in enumerate(names):
            y = model.sample(
                1,
                tuple(size),
                refine=refine,
                langevin=langevin,
                wrap=wrap,
                generator=gen,
                smooth=smooth,
                match=matched,
                callback=lambda info, i=i: report(i, info["phase"], info["done"], info["windows"]),
            )[0]
            report(i, "writing", 0, 1)
            if kind == "texture":
                paths += write_texture(path, unit_normals(y, meta.get("maps")), job.bits, meta)
            else:
                paths.append(write_video(path, y, fps))
                if i == 0 and preview is not None:  # a folder gets a GIF preview of the first
                    write_video(preview, y, fps)
            report(i, "writing", 1, 1)
    return paths


FOREIGN_SUFFIXES = {  # image and video formats coopsynth cannot write: such an -o is an error, not a folder
    *(".exr", ".hdr", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".psd", ".dds", ".ico", ".svg", ".dng", ".raw"),
    *(".wmv", ".flv", ".ogv", ".3gp", ".mts", ".m2ts"),
}


def output_is_file(output: Path) -> bool:
    """Is an -o a file name (an image or video suffix, not an existing folder)? Any other name is a
    folder, except a suffix of FOREIGN_SUFFIXES, which is refused: -o out.exr meant a file."""
    from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffix = output.suffix.lower()
    if suffix in FOREIGN_SUFFIXES and not output.is_dir():
        images, videos = ", ".join(sorted(IMAGE_SUFFIXES)), ", ".join(sorted(VIDEO_SUFFIXES - {".gif"}))
        raise CoopsynthError(f"{output}: coopsynth does not write {suffix} files (images: {images}; videos: {videos})")
    return suffix in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not output.is_dir()


def sample_names(output: Path, kind: str, samples: int | None) -> list[Path]:
    """The files `sample` writes: sample_000.png (.mp4 for videos), ... in a folder, or into a file
    name (an image or video suffix, see output_is_file) that file alone, or NAME_000.png, ... for
    more than one sample. The suffix must be a format of the model's kind."""
    from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffixes = IMAGE_SUFFIXES if kind == "texture" else VIDEO_SUFFIXES
    as_file = output_is_file(output)
    n = (1 if as_file else 4) if samples is None else samples
    if n <= 0:
        raise CoopsynthError(f"--samples {n}: must be at least 1")
    if not as_file:
        ext = "png" if kind == "texture" else "mp4"
        return [output / f"sample_{i:03d}.{ext}" for i in range(n)]
    if output.suffix.lower() not in suffixes:
        what = "images" if kind == "texture" else "videos"
        raise CoopsynthError(
            f"{output}: a {kind} model writes {what} ({', '.join(sorted(suffixes))}), not '{output.suffix}' "
            "(or give a folder for -o)"
        )
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i:03d}{output.suffix}") for i in range(n)]


def refuse_existing(names: list[Path], force: bool) -> None:
    """An error naming the first of `names` that exists, unless `force`."""
    existing = [p for p in names if p.exists()]
    if existing and not force:
        raise CoopsynthError(f"{existing[0]}: already exists (use --force to overwrite, or another -o)")


def split_output(output: Path | None, input_path: Path) -> tuple[Path, Path | None]:
    """A training command's -o as (the run folder: model.pt, log.jsonl, progress.png; the file name
    the results go to, or None). A folder (or nothing: coopsynth-out/<input stem>/) holds both;
    a file name (see output_is_file) takes the results, and the run folder is the default one."""
    if output is None:
        return default_output(input_path), None
    if output_is_file(output):
        return default_output(input_path), output
    return output, None


def check_smooth(smooth: float | None) -> float | None:
    """A `--smooth` value, or an error saying why not (checked before a run, not after it)."""
    if smooth is not None and not 0 <= smooth <= 100:
        raise CoopsynthError(f"--smooth {smooth:g}: must be between 0 and 100 latent frames")
    return smooth


def expand_inputs(inputs: list[Path], kind: str) -> list[Path]:
    """Files of `kind` from the given files and folders, sorted, without duplicates."""
    from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffixes = IMAGE_SUFFIXES if kind == "texture" else VIDEO_SUFFIXES
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            # a GIF is an image or a video by its frames (`input_kind`): only the kind asked for
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes and input_kind(f) == kind)
            if not found:
                raise CoopsynthError(f"{p}: the folder has no {'images' if kind == 'texture' else 'video files'}")
            out += found
        else:
            out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def run_state(ckpt: Path) -> str:
    """'none', 'unfinished' (interrupted or periodic save) or 'finished' for a model.pt path."""
    if not ckpt.exists():
        return "none"
    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        stopped = blob.get("meta", {}).get("stopped")
    except Exception:  # a foreign or broken file: let the normal checks report it
        return "unfinished"
    return "finished" if stopped in ("steps", "minutes", "collapse") else "unfinished"


def default_output(input_path: Path) -> Path:
    stem = input_path.stem if not input_path.is_dir() else input_path.name
    return Path("coopsynth-out") / stem


MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> int:
    """A `--seed` value, or an error saying why not."""
    if not 0 <= seed <= MAX_SEED:
        raise CoopsynthError(f"--seed {seed}: must be between 0 and {MAX_SEED}")
    return seed


def check_refine(refine: int | None) -> int | None:
    """A `--refine` value, or an error saying why not (checked before a run, not after it)."""
    if refine is not None and refine < 0:
        raise CoopsynthError(f"--refine {refine}: must be 0 or more")
    return refine


BITS_CHOICES = ("auto", "8", "16")


def check_bits_option(bits: str, kind: str | None = None) -> str:
    """A `--bits` value, or an error saying why not (checked before a run, not after it)."""
    if bits not in BITS_CHOICES:
        raise CoopsynthError(f"--bits {bits}: must be auto, 8 or 16")
    if bits == "16" and kind == "video":
        raise CoopsynthError("--bits 16: videos are written with 8 bits a channel (H.264, GIF)")
    return bits


def output_bits(bits: str, kind: str, source_bits: int, path: Path) -> int:
    """The bits a channel of the image files named like `path`: `--bits` 8 or 16 as asked (16 in a
    PNG or TIFF file only), or auto: 16 for a 16-bit input where the file's format holds it, else
    8. Videos: 8."""
    check_bits_option(bits, kind)
    if kind == "video":
        return 8
    if bits == "auto":
        return 16 if source_bits == 16 and Path(path).suffix.lower() in BITS16_SUFFIXES else 8
    check_bits(path, int(bits))
    return int(bits)


def check_output_bits(bits: str, kind: str, meta: dict, path: Path) -> None:
    """`output_bits` for every file a result named like `path` is written to (each map of a stack),
    before any work: an error where one cannot hold the bits asked for."""
    for m in meta.get("maps") or [meta]:
        output_bits(bits, kind, int(m.get("bits", 8)), path)


def check_fps(fps: float | None) -> float | None:
    """A `--fps` value, or an error saying why not (checked before a run, not after it)."""
    if fps is not None and not 0 < fps <= MAX_FPS:
        raise CoopsynthError(f"--fps {fps:g}: must be above 0 and at most {MAX_FPS:g}")
    return fps


def check_frames(frames: int | None) -> int | None:
    """A `--frames` value, or an error saying why not (checked before a run, not after it)."""
    if frames is not None and frames < 2:
        raise CoopsynthError(f"--frames {frames}: a video needs at least 2 frames")
    return frames


def sample_size(blob: dict, hw: tuple[int, int] | None, frames: int | None) -> tuple[int, ...]:
    """The output size ([T,] H, W) for a model: the user's, else the training input's."""
    meta_size = list(blob.get("meta", {}).get("size", []))
    if blob["kind"] == "texture":
        if frames is not None:
            raise CoopsynthError("--frames is for video models; this is a texture model")
        return tuple(hw or meta_size)
    t = check_frames(frames) or meta_size[0]
    h, w = hw or meta_size[1:]
    if t * h * w > MAX_SAMPLE_PIXELS:
        raise CoopsynthError(
            f"a {t}-frame {w}x{h} video is too large (at most {MAX_SAMPLE_PIXELS} voxels: frames x width x height)"
        )
    return (t, h, w)


# --------------------------------------------------------------------------------------------
# completion


@dataclass
class CompleteJob:
    input: Path
    output: Path
    mask: Path | None = None  # image (white = missing) or, for videos, an image or a video of masks
    key_color: str | None = None  # "R,G,B": pixels of this colour are missing
    missing_frames: str | None = None  # videos: "A:B"
    model: Path | None = None  # complete with an already trained model instead of training
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    preset: str = "default"
    steps: int | None = None
    minutes: float | None = None
    refine: int | None = None  # descriptor Langevin steps with the visible pixels fixed; None = L (one), 0 (a mean)
    average: int = 1  # write the mean of this many completions (least error) instead of one (plausible)
    seam: float = SEAM_LENGTH  # pixels over which g(Z) bends to meet the visible pixels; 0 = off
    smooth: float | None = None  # videos: the latent prior's time correlation (latent frames); 0 = off; None = default_smooth
    context: int | None = CONTEXT  # visible pixels (frames) kept around the missing ones beyond the networks' reach; None = all
    force: bool = False
    bits: str = "auto"  # images: bits a channel, "8", "16" or "auto" (the input's where the format holds it)
    maps: tuple[Path, ...] = ()  # further maps of the same material (same size), completed with `input` as one stack
    named: Path | None = None  # what the default run folder is named after (None: input; a stack's folder)


def load_completion_input(job: CompleteJob) -> tuple[str, Tensor, Tensor, dict]:
    """kind, data (C, [T,] H, W), missing ([T,] H, W) bool, meta."""
    from .completion import check_mask, load_masked_image, parse_frame_range, read_mask_image, read_mask_video

    kind = input_kind(job.input)
    if kind == "texture":
        if job.missing_frames:
            raise CoopsynthError("--missing-frames is for videos")
        # the mask by any convention of the first map (its alpha, --mask, its --key-color)
        image, missing, bits = load_masked_image(job.input, job.mask, job.key_color)
        meta = {"input": str(job.input), "size": list(image.shape[1:])}
        if not job.maps:
            return kind, image, missing, {**meta, "bits": bits}
        image, maps = load_stack((job.input, *job.maps), first=(image, bits))
        return kind, image, missing, {**meta, "maps": maps}
    if job.maps:
        raise CoopsynthError(f"{job.input}: only images stack (the maps of one material), not videos")
    video, fps = read_video(job.input)
    c, t, h, w = video.shape
    given = [x is not None for x in (job.mask, job.key_color, job.missing_frames)]
    if sum(given) != 1:
        raise CoopsynthError("a video needs exactly one of --mask, --key-color or --missing-frames")
    if job.missing_frames:
        a, b = parse_frame_range(job.missing_frames, t)
        missing = torch.zeros(t, h, w, dtype=torch.bool)
        missing[a:b] = True
    elif job.key_color:
        from .completion import mask_from_key_color, parse_key_color

        missing = mask_from_key_color(video, parse_key_color(job.key_color))
    elif input_kind(job.mask) == "video":
        missing = read_mask_video(job.mask, (t, h, w))
    else:
        missing = read_mask_image(job.mask, (h, w))[None].expand(t, h, w).contiguous()
    check_mask(missing, job.mask or job.input)
    return kind, video, missing, {"input": str(job.input), "size": [t, h, w], "fps": fps}


def check_completion_memory(job: CompleteJob, kind: str, shape: tuple[int, ...], whole: bool = True) -> None:
    """Refuse, before any training, a completion this machine's memory cannot hold (on a CPU,
    where a run past the memory is killed without a word). shape: the largest box it works on
    (`completion.pieces`); whole: is that box the whole input?"""
    from .completion import memory_available, memory_needed

    if resolve_device(job.device).type != "cpu":
        return
    need, have = memory_needed(shape, job.average), memory_available()
    if have is None or need <= have:
        return
    if kind == "video":
        what = f"{shape[0]} frames of {shape[2]}x{shape[1]}" + ("" if whole else " around the missing pixels")
    else:
        what = f"a {shape[1]}x{shape[0]} image" if whole else f"the {shape[1]}x{shape[0]} pixels around the missing ones"
    advice = "use fewer or smaller frames" if kind == "video" else "complete far-apart holes one at a time, or crop the image"
    per = f" with --average {job.average}" if job.average > 1 else ""
    gib = lambda n: f"{n / 2**30:.1f}" if n < 10 * 2**30 else f"{n / 2**30:.0f}"  # noqa: E731
    raise CoopsynthError(
        f"{job.input}: completing {what}{per} needs about {gib(need)} GiB of memory and this machine has "
        f"{gib(have)} GiB available; {advice}"
    )


# a completion's work by phase, in latent inference steps (a 1024x1024 image on a CPU: 0.5 s per
# step, the seam 0.2 s, 6 refinement steps 0.9 s): for progress, not timing
COMPLETE_WORK = {"infer": 1.0, "seam": 0.4, "refine": 1.8}  # infer: per step


def complete(
    job: CompleteJob, on_progress: ProgressFn = None, before_training: Callable | None = None, on_recover: ProgressFn = None
) -> dict:
    """Learn from the visible pixels (or load job.model), recover the missing ones, write
    completed.png / completed.mp4 (and completed_001 ... for more samples) into job.output, or
    into a file name given there (NAME_000 ... for more samples; the model then goes to the
    default run folder, see split_output). `on_progress`: training's progress; `on_recover(info)`:
    the recovery's, info {"fraction" (of the recovery, 0..1), "sample" (1-based), "samples",
    "phase" ("infer", "seam", "refine"), "done", "of", "unit"}."""
    from .completion import INFER_STEPS
    from .completion import complete as recover

    kind, data, missing, meta = load_completion_input(job)
    if job.samples <= 0:
        raise CoopsynthError(f"--samples {job.samples}: must be at least 1")
    if job.average <= 0:
        raise CoopsynthError(f"--average {job.average}: must be at least 1")
    check_refine(job.refine)  # refused before training, not after it
    check_seed(job.seed)
    if not job.seam >= 0:
        raise CoopsynthError(f"--seam {job.seam:g}: must be 0 or more")
    check_smooth(job.smooth)
    if job.smooth is not None and kind != "video":
        raise CoopsynthError(f"--smooth: only videos have motion to smooth, and {job.input} is an image")
    smooth = default_smooth(missing, job.average) if job.smooth is None else job.smooth

    def check_memory(net: NetConfig) -> None:  # on the largest piece the completion works on
        boxes = pieces(net, missing, job.context, smooth, job.average)
        shape = max((tuple(b.stop - b.start for b in box) for box in boxes), key=math.prod)
        check_completion_memory(job, kind, shape, shape == tuple(missing.shape))

    out, file = split_output(Path(job.output), job.named or job.input)
    if file is None:
        ext = "png" if kind == "texture" else "mp4"
        names = [out / (f"completed_{i:03d}.{ext}" if i else f"completed.{ext}") for i in range(job.samples)]
    else:  # the file names are checked before any work: kind, count, files already there (each map's)
        names = sample_names(file, kind, job.samples)
        refuse_existing(all_map_files(names, meta.get("maps")), job.force)
    check_output_bits(job.bits, kind, meta, names[0])
    result: dict = {"kind": kind}
    if job.model is not None:
        model, blob = load_model(job.model, job.device, job.precision)
        if blob["kind"] != kind:
            raise CoopsynthError(
                f"{job.model}: a {blob['kind']} model cannot complete {'a video' if kind == 'video' else 'an image'}"
            )
        have, want = blob.get("meta", {}).get("maps"), meta.get("maps")
        if map_layout(have) != map_layout(want):  # a stack's model completes the same maps, in the same order
            name = lambda ms: "maps " + ", ".join(m["name"] for m in ms) if ms else "one image"  # noqa: E731
            raise CoopsynthError(f"{job.model}: a model of {name(have)} cannot complete {name(want)}")
        if model.net.channels != data.shape[0]:
            raise CoopsynthError(f"{job.model}: the model has {model.net.channels} channels, {job.input} has {data.shape[0]}")
        cfg: TrainConfig = blob["config_obj"]
        delta = float(blob.get("delta", cfg.delta))
        check_memory(model.net)
        check_writable(names[0].parent)
    else:
        tjob = TrainJob(
            input=job.input,
            output=out,
            preset=job.preset,
            steps=job.steps,
            minutes=job.minutes,
            seed=job.seed,
            device=job.device,
            precision=job.precision,
            force=job.force,
        )
        check_memory(preset(job.preset, dims=data.dim() - 1, channels=data.shape[0]).net)
        prep = prepare_training(tjob, mask=~missing[None], data=data, maps=meta.get("maps"))
        prep.meta.update(meta)
        check_writable(names[0].parent)
        if before_training is not None:
            before_training(prep)
        result = run_training(prep, on_progress)
        trainer = result["trainer"]
        model, cfg, delta = trainer.model, trainer.cfg, trainer.delta
    refine = default_refine(cfg.langevin_steps, job.average) if job.refine is None else job.refine
    gen = torch.Generator(device=model.device).manual_seed(job.seed)
    work = {"infer": COMPLETE_WORK["infer"] * INFER_STEPS, "seam": COMPLETE_WORK["seam"] * (job.seam > 0)}
    work["refine"] = COMPLETE_WORK["refine"] * (refine > 0)  # the phases in their order
    report = phase_reporter(on_recover, work, job.samples, {"infer": "step"})

    paths = []
    for i in range(job.samples):
        done = recover(
            model,
            data,
            missing,
            langevin=cfg.langevin(delta),
            infer_steps=INFER_STEPS,
            refine=refine,
            average=job.average,
            seam=job.seam,
            smooth=smooth,
            context=job.context,
            generator=gen,
            callback=lambda info, i=i: report(
                i, info["phase"], info["done"], info["of"], info.get("part", 1), info.get("parts", 1), info.get("span")
            ),
        )
        if kind == "texture":  # the visible pixels as they are, normal maps' included
            done = torch.where(missing, unit_normals(done, meta.get("maps")), done)
            paths += write_texture(names[i], done, job.bits, meta)
        else:
            paths.append(write_video(names[i], done, float(meta.get("fps", 25.0))))
    result["paths"] = paths
    return result
