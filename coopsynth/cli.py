"""The `coopsynth` command line: thin Typer commands over coopsynth.pipeline.

The only module that imports typer and rich. Problems a user can fix become one red line and exit
code 1 (usage errors: 2); an interrupted run exits 130 (SIGINT) or 143 (SIGTERM) after saving.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from . import distributed, pipeline
from .accel import keep_freed_memory
from .completion import CONTEXT, SEAM_LENGTH, parse_context
from .errors import CoopsynthError
from .io import check_writable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learn a texture or dynamic texture from ONE image or video (CoopNets), then synthesize and complete.",
)
console = Console(stderr=True)
out_console = Console()


def _version(value: bool) -> None:
    if value:
        import torch

        from . import __version__

        cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no CUDA device"
        out_console.print(f"coopsynth {__version__} (torch {torch.__version__}, {cuda})", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version (and torch's) and exit.")
    ] = False,
) -> None:
    """Learn a texture or dynamic texture from ONE image or video (CoopNets), then synthesize and complete."""


def _fail(msg: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _precision_note(device: str, precision: str) -> None:
    """Warn before any work where the asked-for precision runs slowly on this device."""
    note = pipeline.precision_note(device, precision)
    if note and distributed.world()[0] == 0:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def friendly(fn):
    """Turn the core's errors into one red line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoopsynthError as e:
            raise _fail(str(e)) from None
        except pipeline.Interrupted as e:
            console.print(f"[yellow]{e}[/]\nresume with the same command and [bold]--resume[/]")
            raise typer.Exit(e.code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except MemoryError:
            raise _fail("out of memory: try a smaller --size, fewer --samples or a smaller --max-size") from None
        except Exception as e:  # a bug: one line, and the traceback only on request
            if os.environ.get("COOPSYNTH_DEBUG"):
                raise
            raise _fail(f"internal error: {type(e).__name__}: {e} (set COOPSYNTH_DEBUG=1 for the traceback)") from None

    return wrapper


# ----------------------------------------------------------------------------------------------
# shared options

Steps = Annotated[int | None, typer.Option("--steps", help="Training iterations (default: the preset's).")]
Minutes = Annotated[float | None, typer.Option("--minutes", help="Train for this wall-clock budget instead of a step count.")]
Preset = Annotated[str, typer.Option("--preset", help="fast | default | quality (see README: trade-offs).")]
LangevinSteps = Annotated[int | None, typer.Option("--langevin-steps", help="Descriptor Langevin steps per iteration.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed: same seed, machine and options give identical files.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto picks CUDA when present).")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto | fp32 | tf32 | bf16. auto (default): tf32 on a GPU; fp32 on a CPU, except bf16 for sampling on a CPU with bf16 units (AVX512-BF16, AMX). A CPU computes tf32 as fp32.",
    ),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from model.pt in the output folder.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing model in the output folder.")]
Output = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Output folder (default: coopsynth-out/<input stem>/), or a file name such as out.png (videos: out.mp4) for "
        "the results alone (more than one: out_000.png, ...); model.pt then goes to the default folder.",
    ),
]
RunFolder = Annotated[Path | None, typer.Option("-o", "--output", help="Output folder (default: coopsynth-out/<input stem>/).")]
Size = Annotated[
    str | None, typer.Option("--size", help="Output size WIDTHxHEIGHT (or N for NxN), any size (default: the input's).")
]
Tile = Annotated[bool, typer.Option("--tile", help="Seamless, tileable output: right edge continues into left, bottom into top.")]
Frames = Annotated[
    int | None,
    typer.Option("--frames", help="Videos: frames per output video, also longer than the input (default: the input's)."),
]
Fps = Annotated[float | None, typer.Option("--fps", help="Videos: output frame rate (default: the input's).")]
Loop = Annotated[bool, typer.Option("--loop", help="Videos: seamless loop, the last frame flows into the first.")]
MatchHistogram = Annotated[
    bool | None,
    typer.Option(
        "--match-histogram/--no-match-histogram",
        help="Map each output channel's values onto the training input's distribution (Heeger-Bergen histogram "
        "matching): truer colours and contrast. Default: on for textures, off for videos.",
        show_default=False,
    ),
]
Bits = Annotated[
    str,
    typer.Option(
        "--bits",
        help="Bits a channel of the written images: auto (16 for a 16-bit input, such as a height map, where the "
        "format holds it: PNG or TIFF; else 8), 8 or 16.",
    ),
]
Stack = Annotated[
    bool,
    typer.Option(
        "--stack",
        help="The inputs are the maps of one material (colour, height, normals, roughness, ...: one size), or a "
        "folder of them: learn them together as one texture, so that each sample's maps line up; each sample is "
        "then one file per map (sample_000_<map>.png, ...). `texture` with several folders: one material per "
        "folder, one model each.",
    ),
]
MaxSize = Annotated[
    int | None,
    typer.Option(
        "--max-size",
        help="Scale the input down so its longer side is at most this before learning: larger structures then fit "
        "the networks' reach, and samples come at that scale (images: default as they are; videos: 64).",
    ),
]
MaxFrames = Annotated[int | None, typer.Option("--max-frames", help="Videos: keep at most this many input frames (default 48).")]
Refine = Annotated[
    int | None,
    typer.Option(
        "--refine",
        help="Descriptor Langevin revisions after the generator (default: the training L for textures; for videos the "
        "count picked at the end of training so that samples, matched or not, move like the input; 0 = generator only).",
    ),
]
Smooth = Annotated[
    float | None,
    typer.Option(
        "--smooth",
        help="Videos: correlate the latents over time, a Gaussian of this many latent frames: slower motion (default: "
        "the width picked at the end of training, for matched and raw videos apart, when the generator's videos move more "
        "than the input; 0 = none).",
    ),
]


WIDE = 120  # terminal columns from which the progress bar spells its figures out


class _LiveBar:
    """A rich Progress (self.progress) as a context manager, redrawn at most every 0.2 s."""

    progress: Progress
    last = 0.0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def _due(self, final: bool = False) -> bool:
        """Is it time to redraw (always for the final update)?"""
        now = time.perf_counter()
        if now - self.last < 0.2 and not final:
            return False
        self.last = now
        return True


class _Bar(_LiveBar):
    """A rich progress bar fed by pipeline's training on_progress dicts."""

    def __init__(self, title: str, total: int | None, overall: tuple[int, int] | None = None):
        if console.width >= WIDE:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("step {task.completed}/{task.fields[total_txt]}"),
                TextColumn(
                    "f(obs) {task.fields[f_obs]:+.3f}  f(syn) {task.fields[f_syn]:+.3f}  G loss {task.fields[loss_g]:.3f}"
                ),
                TextColumn("{task.fields[left]} left"),
            )
        else:  # an 80-column terminal (or a log): every figure still fits, in short
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=12),
                TextColumn("{task.completed}/{task.fields[total_txt]}"),
                TextColumn("obs {task.fields[f_obs]:+.3f} syn {task.fields[f_syn]:+.3f} G {task.fields[loss_g]:.3f}"),
                TextColumn("{task.fields[left]} left"),
            )
        self.progress = Progress(*columns, console=console, transient=False)
        if overall is not None:  # several inputs: one more bar over all of them
            done, n = overall
            self.progress.add_task(
                f"all inputs ({done}/{n} done)", total=n, completed=done, total_txt=n, f_obs=0.0, f_syn=0.0, loss_g=0.0, left=""
            )
        self.task = self.progress.add_task(title, total=total, total_txt=total or "?", f_obs=0.0, f_syn=0.0, loss_g=0.0, left="?")

    def __call__(self, info: dict) -> None:
        if not self._due(final=info["step"] == info.get("total")):
            return
        left = info.get("seconds_left") or 0.0
        total = info.get("total")
        self.progress.update(
            self.task,
            completed=info["step"],
            total=total,
            total_txt=total or "?",
            f_obs=info["f_obs"],
            f_syn=info["f_syn"],
            loss_g=info["loss_g"],
            left=f"{int(left // 60)}m{int(left % 60):02d}s",
        )


class _WorkBar(_LiveBar):
    """A transient rich progress bar fed by on_progress dicts of pipeline.sample and
    pipeline.complete: {"fraction", "sample", "samples", "phase", "done", "of", "unit"}; shows the
    sample, its phase and step or window, and the time left (a large output takes minutes)."""

    def __init__(self, title: str):
        columns = (
            TextColumn(f"[bold]{title}"),
            BarColumn(bar_width=None if console.width >= WIDE else 12),
            TaskProgressColumn(),
            TextColumn("{task.fields[what]}"),
            TextColumn("{task.fields[left]} left"),
        )
        # transient: nothing of it stays; off a terminal it would leave a blank line and no bar
        self.progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
        self.task = self.progress.add_task(title, total=1.0, what="", left="?")
        self.t0 = self.last = time.perf_counter()

    def __call__(self, info: dict) -> None:
        if not self._due():
            return
        f = info["fraction"]
        left = (self.last - self.t0) * (1 - f) / f if f > 0.01 else None
        what = (f"{info['sample']}/{info['samples']} " if info["samples"] > 1 else "") + info["phase"]
        if info.get("parts", 1) > 1:  # completion, piece by piece (far-apart holes, long videos' windows)
            what += f" (part {info['part']}/{info['parts']})"
        if info["of"] > 1:
            what += f" {info['unit']} {info['done']}/{info['of']}"
        self.progress.update(
            self.task, completed=f, what=what, left="?" if left is None else f"{int(left // 60)}m{int(left % 60):02d}s"
        )


def _sample(model, blob: dict, job: pipeline.SampleJob) -> list[Path]:
    """pipeline.sample under a progress bar."""
    with _WorkBar("sampling") as bar:
        return pipeline.sample(model, blob, job, on_progress=bar)


def _train_job(input: Path, output: Path | None, **kw) -> pipeline.TrainJob:
    out = output or pipeline.default_output(input)
    return pipeline.TrainJob(input=input, output=out, **kw)


def _plan(
    path: Path,
    out: Path | None,
    kind: str,
    samples: int | None,
    folder_default: int,
    force: bool,
    batch: bool,
    maps: tuple[Path, ...] = (),
    named: Path | None = None,
):
    """Where a training command's run and samples go: (the run folder, the samples' -o: that
    folder or a file name, their names), checked before training: the count, a file name's
    format, and a file name's files already there (a folder's samples go with its model, which
    --force or --resume already governs; a stack's samples are a file per map). `batch`: `out` is
    one input's folder in a batch (its name is the input's stem, which may look like a file name:
    photo.jpg.png). `named`: the input the default run folder is named after (default: `path`;
    a stack given as a folder: the folder)."""
    run, file = (out, None) if batch and out is not None else pipeline.split_output(out, named or path)
    dest = file or run
    names = pipeline.sample_names(dest, kind, samples if samples is not None else (1 if file else folder_default))
    if file is not None:
        stack = [{"name": pipeline.map_name(p)} for p in (path, *maps)] if maps else None
        pipeline.refuse_existing(pipeline.all_map_files(names, stack), force)
    return run, dest, names


def _run_training(job: pipeline.TrainJob, overall: tuple[int, int] | None = None, ready=None) -> dict:
    """Check everything, then train under a progress bar. `ready(prep)`, if given, runs after the
    input's checks and before training: the last checks of the outputs."""
    prep = pipeline.prepare_training(job)  # every check before the bar appears
    if ready is not None:
        ready(prep)
    for note in prep.meta.get("notes", []):
        console.print(f"[cyan]note:[/] {note}")
    if distributed.world()[0] != 0:  # torchrun: only rank 0 talks
        return pipeline.run_training(prep)
    with _Bar(f"training {job.input.name}", prep.total, overall) as bar:
        result = pipeline.run_training(prep, on_progress=bar)
    for reason in prep.trainer.model.accel.fallbacks:
        console.print(f"[yellow]note:[/] the Langevin revision fell back to slower code: {reason}")
    return result


def _self_check(check: float | None, quiet: bool, kind: str, name: str = "") -> bool:
    """Say a run's self-check (`pipeline.self_check`): a warning above the kind's threshold
    (`pipeline.self_check_warn`), else (unless `quiet`) the figure. Returns whether it warned."""
    warn = pipeline.self_check_warn(kind)
    if check is not None and check > warn:
        console.print(
            f"[yellow]warning:[/] {name}the samples look unlike the input (self-check {check:.2f}, above "
            f"{warn:g}; about 1 is as close as the input's halves are to each other): "
            "look at them, and if they are poor train again with another --seed or a longer --preset (default, quality)",
            highlight=False,
            soft_wrap=True,
        )
        return True
    if check is not None and not quiet:
        console.print(f"self-check: {check:.2f} (samples against the input; about 1 is as close as its halves are to each other)")
    return False


def _summary(result: dict, written: list[Path], t0: float) -> None:
    if distributed.world()[0] != 0:
        return
    console.print(
        f"[green]done[/] in {time.perf_counter() - t0:.0f} s: {result['steps']} iterations"
        + (f" (stopped by the {result['stopped']} budget)" if result["stopped"] == "minutes" else "")
        + (
            " (ended at the last balanced state: the descriptor kept winning; see log.jsonl)"
            if result["stopped"] == "collapse"
            else ""
        )
        + (f", {result['rollbacks']} divergence roll-backs" if result["rollbacks"] else "")
        + (
            f", started afresh {result['restarts']} time{'s' * (result['restarts'] > 1)} after early collapses"
            if result.get("restarts")
            else ""
        )
        + (
            f"; every attempt ended early, and attempt {result['kept_attempt']}'s samples came closest to the input: kept"
            if result.get("kept_attempt")
            else ""
        )
    )
    console.print(f"model: {result['checkpoint']}")
    _self_check(result.get("self_check"), quiet=False, kind=result.get("kind", "texture"))
    if len(written) == 1:
        console.print(f"sample: {written[0]}")
    elif written:
        console.print(
            f"samples: {written[0].parent}/ ({', '.join(p.name for p in written[:4])}{' …' if len(written) > 4 else ''})"
        )


# ----------------------------------------------------------------------------------------------
# commands


@app.command()
@friendly
def texture(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Texture image(s) or folder(s) of images: grey, RGB or RGBA (alpha ignored), 8/16-bit, any format imageio reads. "
            "Training uses random crops, so large images (2048 px and more) are fine. Several inputs: one model each, "
            "in <output>/<stem>/; finished ones are skipped on a rerun."
        ),
    ],
    output: Output = None,
    steps: Steps = None,
    size: Size = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Number of samples to write (default: 4 into a folder, 1 into a file name).")
    ] = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    tile: Tile = False,
    preset: Preset = "default",
    langevin_steps: LangevinSteps = None,
    refine: Refine = None,
    minutes: Minutes = None,
    resume: Resume = False,
    force: Force = False,
    max_size: MaxSize = None,
    match_histogram: MatchHistogram = None,
    bits: Bits = "auto",
    stack: Stack = False,
) -> None:
    """Train on a texture image, then write new samples, model.pt, progress.png and log.jsonl."""
    hw = pipeline.parse_size(size)
    pipeline.check_refine(refine)
    pipeline.check_bits_option(bits)
    _precision_note(device, precision)
    opts = dict(
        preset=preset,
        steps=steps,
        minutes=minutes,
        langevin_steps=langevin_steps,
        seed=seed,
        device=device,
        precision=precision,
        max_size=max_size,
    )

    def one(
        path: Path,
        out: Path | None,
        resume_: bool,
        overall: tuple[int, int] | None = None,
        maps: tuple[Path, ...] = (),
        named: Path | None = None,
    ) -> tuple[dict, list[Path]]:
        if pipeline.input_kind(path) != "texture":
            raise CoopsynthError(f"{path}: this looks like a video; use `coopsynth video`")
        batch = overall is not None
        run, dest, names = _plan(path, out, "texture", samples, 4, force, batch=batch, maps=maps, named=named)
        pipeline.output_bits(bits, "texture", 8, names[0])  # --bits 16 into a format without it: refused now
        job = _train_job(path, run, resume=resume_, force=force, maps=maps, **opts)
        result = _run_training(job, overall, ready=lambda prep: check_writable(names[0].parent))
        if distributed.world()[0] != 0:
            return result, []
        trainer = result["trainer"]
        blob = {"config_obj": trainer.cfg, "kind": "texture", "meta": result["meta"], "delta": trainer.delta}
        # force: the run checked the sample files before training
        sj = pipeline.SampleJob(
            dest, len(names), hw, seed, tile=tile, refine=refine, force=True, match=match_histogram, bits=bits
        )
        return result, _sample(trainer.model, blob, sj)

    if stack and len(inputs) > 1 and all(p.is_dir() for p in inputs):  # a folder per material: one model each

        def one_material(folder: Path, out: Path | None, resume_: bool, overall: tuple[int, int] | None = None):
            files = _stack_files([folder])
            return one(files[0], out, resume_, overall, maps=tuple(files[1:]), named=folder)

        _batch(inputs, output, force, resume, one_material)
        return
    if stack:
        files = _stack_files(inputs)
        t0 = time.perf_counter()
        result, written = one(files[0], output, resume, maps=tuple(files[1:]), named=inputs[0])  # a folder names the run
        _summary(result, written, t0)
        return
    if len(inputs) == 1 and not inputs[0].is_dir():
        t0 = time.perf_counter()
        result, written = one(inputs[0], output, resume)
        _summary(result, written, t0)
        return
    _batch(pipeline.expand_inputs(inputs, "texture"), output, force, resume, one)


def _stack_files(inputs: list[Path]) -> list[Path]:
    """The maps of a --stack: the files given, and the images of the folders given, in order."""
    files = pipeline.expand_inputs(inputs, "texture")
    if len(files) < 2:
        raise CoopsynthError("--stack: give two or more maps of one material (image files, or a folder of them)")
    return files


def _one_input(command: str, inputs: list[Path], stack: bool, more: str) -> tuple[Path, tuple[Path, ...]]:
    """(the input, the further maps) of a command that takes one input, or with --stack the maps
    of one material; more inputs without --stack are an error whose advice is `more`."""
    if stack:
        files = _stack_files(inputs)
        return files[0], tuple(files[1:])
    if len(inputs) > 1:
        raise CoopsynthError(f"{command} takes one input, got {len(inputs)}; {more}")
    return inputs[0], ()


def _batch(files: list[Path], output: Path | None, force: bool, resume: bool, one) -> None:
    """One model per input in <output>/<stem>/, a summary table, exit 1 if any failed."""
    if output is not None and pipeline.output_is_file(output):
        raise CoopsynthError(f"{output}: several inputs write a folder each; give a folder for -o")
    base = output or Path("coopsynth-out")
    table = Table(title=f"coopsynth: {len(files)} inputs")
    for col in ("input", "result", "iterations", "minutes", "self-check", "output"):
        table.add_column(col)
    failed = 0
    for i, path in enumerate(files):
        out = base / (path.name if path.is_dir() else path.stem)
        state = pipeline.run_state(out / "model.pt")
        if state == "finished" and not force:
            console.print(f"[dim]({i + 1}/{len(files)}) {path.name}: finished before, skipped (--force to redo)[/]")
            table.add_row(path.name, "skipped (finished)", "", "", "", str(out))
            continue
        t0 = time.perf_counter()
        try:
            result, _ = one(path, out, resume or state == "unfinished", (i, len(files)))
        except CoopsynthError as e:
            failed += 1
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            table.add_row(path.name, "[red]failed[/]", "", "", "", str(e)[:80])
            continue
        check = result.get("self_check")
        warned = _self_check(check, quiet=True, kind=result["kind"], name=f"{path.name}: ")
        shown = "" if check is None else f"[yellow]{check:.2f} (look)[/]" if warned else f"{check:.2f}"
        minutes = f"{(time.perf_counter() - t0) / 60:.1f}"
        table.add_row(path.name, "[green]done[/]", str(result["steps"]), minutes, shown, str(out))
    out_console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
@friendly
def video(
    input: Annotated[
        Path,
        typer.Argument(
            help="A video (mp4, m4v, mov, mkv, avi, webm, mpg, an animated GIF) or a folder of numbered frames; grey or colour."
        ),
    ],
    output: Output = None,
    steps: Steps = None,
    frames: Frames = None,
    size: Size = None,
    fps: Fps = None,
    loop: Loop = False,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Number of videos to write (default: 2 into a folder, 1 into a file name).")
    ] = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    preset: Preset = "default",
    langevin_steps: LangevinSteps = None,
    refine: Refine = None,
    smooth: Smooth = None,
    minutes: Minutes = None,
    resume: Resume = False,
    force: Force = False,
    max_size: MaxSize = None,
    max_frames: MaxFrames = None,
    match_histogram: MatchHistogram = None,
) -> None:
    """Train on one video of a dynamic texture, then write new videos (MP4 + a GIF preview).
    A folder of video files trains one model per clip (a folder of image frames is one video)."""
    hw = pipeline.parse_size(size)
    pipeline.check_smooth(smooth)
    pipeline.check_frames(frames)
    pipeline.check_refine(refine)
    pipeline.check_fps(fps)
    _precision_note(device, precision)
    opts = dict(
        preset=preset,
        steps=steps,
        minutes=minutes,
        langevin_steps=langevin_steps,
        seed=seed,
        device=device,
        precision=precision,
        max_size=max_size,
        max_frames=max_frames,
    )

    def one(path: Path, out: Path | None, resume_: bool, overall: tuple[int, int] | None = None) -> tuple[dict, list[Path]]:
        if pipeline.input_kind(path) != "video":
            raise CoopsynthError(
                f"{path}: this looks like an image; use `coopsynth texture` (or give a video file or a folder of frames)"
            )
        run, dest, names = _plan(path, out, "video", samples, 2, force, batch=overall is not None)
        job = _train_job(path, run, resume=resume_, force=force, **opts)

        def ready(prep) -> None:  # the input's size is known: the output's can be checked
            pipeline.sample_size({"kind": "video", "meta": prep.meta}, hw, frames)
            check_writable(names[0].parent)

        result = _run_training(job, overall, ready=ready)
        if distributed.world()[0] != 0:
            return result, []
        trainer = result["trainer"]
        blob = {"config_obj": trainer.cfg, "kind": "video", "meta": result["meta"], "delta": trainer.delta}
        full = pipeline.sample_size(blob, hw, frames)
        sj = pipeline.SampleJob(
            dest, len(names), full, seed, loop=loop, refine=refine, smooth=smooth, fps=fps, force=True, match=match_histogram
        )
        return result, _sample(trainer.model, blob, sj)

    # a folder of clips (video files, animated GIFs) trains one model each; of images, one video
    clips_folder = input.is_dir() and any(f.is_file() and pipeline.input_kind(f) == "video" for f in input.iterdir())
    if clips_folder:
        _batch(pipeline.expand_inputs([input], "video"), output, force, resume, one)
        return
    t0 = time.perf_counter()
    result, written = one(input, output, resume)
    _summary(result, written, t0)


@app.command()
@friendly
def train(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="A texture image or a video (file or folder of frames); with --stack, the maps of one material.",
            show_default=False,
        ),
    ],
    output: RunFolder = None,
    steps: Steps = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    preset: Preset = "default",
    langevin_steps: LangevinSteps = None,
    minutes: Minutes = None,
    resume: Resume = False,
    force: Force = False,
    max_size: MaxSize = None,
    max_frames: MaxFrames = None,
    stack: Stack = False,
) -> None:
    """Train only: write model.pt, progress.png and log.jsonl (sample later with `coopsynth sample`)."""
    t0 = time.perf_counter()
    more = "`coopsynth texture` trains one model per input, and --stack learns the maps of one material together"
    input, maps = _one_input("train", inputs, stack, more)
    if stack:
        output = output or pipeline.default_output(inputs[0])  # a folder of maps names the run
    if output is not None and pipeline.output_is_file(output):
        raise CoopsynthError(
            f"{output}: train writes a folder (model.pt, log.jsonl, progress.png); give a folder for -o, "
            f"then `coopsynth sample FOLDER/model.pt -o {output.name}`"
        )
    _precision_note(device, precision)
    job = _train_job(
        input,
        output,
        preset=preset,
        steps=steps,
        minutes=minutes,
        langevin_steps=langevin_steps,
        seed=seed,
        device=device,
        precision=precision,
        resume=resume,
        force=force,
        max_size=max_size,
        max_frames=max_frames,
        maps=maps,
    )
    result = _run_training(job)
    _summary(result, [], t0)


@app.command()
@friendly
def sample(
    model: Annotated[Path, typer.Argument(help="A model.pt written by coopsynth.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Output folder (sample_000.png, ...), or a file name such as big.png or clip.mp4 "
            "(more than one sample: big_000.png, ...).",
        ),
    ] = Path("coopsynth-out/samples"),
    samples: Annotated[
        int | None, typer.Option("--samples", help="Number of samples to write (default: 4 into a folder, 1 into a file name).")
    ] = None,
    size: Size = None,
    seed: Seed = 0,
    tile: Tile = False,
    refine: Refine = None,
    smooth: Smooth = None,
    frames: Frames = None,
    loop: Loop = False,
    fps: Fps = None,
    device: Device = "auto",
    precision: Precision = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing sample files in the output folder.")] = False,
    match_histogram: MatchHistogram = None,
    bits: Bits = "auto",
) -> None:
    """Sample from a trained model without retraining: a generator pass, then --refine Langevin steps."""
    t0 = time.perf_counter()
    hw = pipeline.parse_size(size)
    pipeline.check_seed(seed)
    pipeline.check_bits_option(bits)
    _precision_note(device, precision)
    m, blob = pipeline.load_model(model, device, precision)
    full = pipeline.sample_size(blob, hw, frames)
    sj = pipeline.SampleJob(
        output,
        samples,
        full,
        seed,
        tile=tile,
        loop=loop,
        refine=refine,
        smooth=smooth,
        fps=fps,
        force=force,
        match=match_histogram,
        bits=bits,
    )
    written = _sample(m, blob, sj)
    if len(written) == 1:
        where = str(written[0])
    elif pipeline.output_is_file(output):
        where = f"{len(written)} samples, {written[0]} to {written[-1].name}"
    else:
        where = f"{len(written)} samples to {output}/"
    console.print(f"[green]wrote[/] {where} in {time.perf_counter() - t0:.1f} s")


@app.command()
@friendly
def complete(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image with missing pixels (alpha 0 by default), or a video; with --stack, the maps of one material "
            "(the mask: --mask, or the first map's alpha or --key-color).",
            show_default=False,
        ),
    ],
    output: Output = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask", help="Mask image (white = missing; same size); videos: an image for all frames or a video of masks."
        ),
    ] = None,
    key_color: Annotated[
        str | None, typer.Option("--key-color", help="R,G,B or #RRGGBB: pixels of exactly this colour are missing.")
    ] = None,
    missing_frames: Annotated[
        str | None, typer.Option("--missing-frames", help="Videos: frames A:B (B exclusive) are missing.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Complete with this trained model.pt instead of training on the input.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Alternative completions to write.")] = 1,
    average: Annotated[
        int,
        typer.Option(
            "--average",
            help="Write the mean of N completions: the least error (restoration), smooth where the model is unsure. "
            "1 = one plausible completion (synthesis).",
        ),
    ] = 1,
    steps: Steps = None,
    minutes: Minutes = None,
    preset: Preset = "default",
    refine: Annotated[
        int | None,
        typer.Option(
            "--refine",
            help="Descriptor Langevin steps with the visible pixels fixed (default: the training L; 0 with --average).",
        ),
    ] = None,
    seam: Annotated[
        float,
        typer.Option(
            "--seam",
            help="Pixels over which the generator's fill bends to meet the visible pixels at the hole's edge; 0 = off.",
        ),
    ] = SEAM_LENGTH,
    smooth: Annotated[
        float | None,
        typer.Option(
            "--smooth",
            help="Videos: infer the latent under a prior correlated over time (a Gaussian of this many latent frames), "
            "so missing frames follow the frames around them; 0 = off (default: 4 for --average with whole frames "
            "missing, else 0).",
            show_default=False,
        ),
    ] = None,
    context: Annotated[
        str,
        typer.Option(
            "--context",
            help="Visible pixels (frames, for videos) kept around the missing ones, beyond the networks' reach: "
            "the completion works on that region alone, so a small hole in a large image costs about the hole; "
            "'all' = the whole input.",
        ),
    ] = str(CONTEXT),
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    force: Force = False,
    bits: Bits = "auto",
    stack: Stack = False,
) -> None:
    """Fill the missing pixels of an image or video by learning from its visible pixels."""
    t0 = time.perf_counter()
    input, maps = _one_input("complete", inputs, stack, "--stack completes the maps of one material together")
    _precision_note(device, precision)
    out = output or pipeline.default_output(inputs[0])
    job = pipeline.CompleteJob(
        input,
        out,
        mask=mask,
        key_color=key_color,
        missing_frames=missing_frames,
        model=model,
        samples=samples,
        seed=seed,
        device=device,
        precision=precision,
        preset=preset,
        steps=steps,
        minutes=minutes,
        refine=refine,
        average=average,
        seam=seam,
        smooth=smooth,
        context=parse_context(context),
        force=force,
        bits=bits,
        maps=maps,
        named=inputs[0],
    )
    bar = recovery = None

    def start(prep):
        nonlocal bar
        bar = _Bar(f"learning {input.name} (visible pixels)", prep.total).__enter__()

    def recover(info: dict) -> None:  # the training bar (if any) is done: the recovery's own
        nonlocal bar, recovery
        if bar is not None:
            bar.__exit__(None, None, None)
            bar = None
        if recovery is None:
            recovery = _WorkBar("completing").__enter__()
        recovery(info)

    try:
        result = pipeline.complete(
            job, on_progress=lambda info: bar(info) if bar else None, before_training=start, on_recover=recover
        )
    finally:
        for b in (bar, recovery):
            if b is not None:
                b.__exit__(None, None, None)
    console.print(f"[green]done[/] in {time.perf_counter() - t0:.0f} s: {', '.join(str(p) for p in result['paths'])}")
    if "checkpoint" in result:  # trained on the input (not --model)
        console.print(f"model: {result['checkpoint']}")


@app.command("eval")
@friendly
def eval_(
    heldout: Annotated[Path, typer.Argument(help="Held-out real image or video the model never saw.")],
    samples: Annotated[list[Path], typer.Argument(help="Samples to score (images or videos).")],
    train_: Annotated[
        Path | None, typer.Option("--train", help="The training image or video (for real crops and the copy index).")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Completion: the mask (white = missing); HELDOUT is then the truth.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    seed: Seed = 0,
) -> None:
    """Score samples against held-out real texture (SWD ratio, copy index, diversity; videos: motion)."""
    from .evaluate import evaluate_files

    pipeline.check_seed(seed)
    result = evaluate_files(heldout, samples, train_, mask, seed)
    if as_json:
        out_console.print_json(json.dumps(result))
        return
    table = Table(title="coopsynth eval")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else "–" if v is None else str(v))
    out_console.print(table)


def main() -> None:
    """Entry point of the `coopsynth` script."""
    keep_freed_memory()  # the process is ours: reuse freed activations (benchmarks/RESULTS.md, Speed)
    try:
        app()
    except SystemExit:
        distributed.shutdown()
        raise
    except BaseException as e:  # anything that escaped typer's own handling
        if os.environ.get("COOPSYNTH_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
