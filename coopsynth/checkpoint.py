"""Checkpoints: one `torch.save` dict of tensors and primitives, loaded with weights_only=True.

    {"format": "coopsynth", "version": 1, "kind": "texture" | "video",
     "config": TrainConfig as a dict, "descriptor": ..., "generator": ..., "opt_d": ..., "opt_g": ...,
     "step": int, "delta": float, "mean": (C,), "std": (C,), "quantiles": (C, n), "rng": ..., "torch_rng": ...,
     "meta": {"input": str, "size": [..], "fps": float, "seconds": float, ...}}

"quantiles" (the training data's per-channel quantile function, for histogram-matched samples)
came later than version 1: a checkpoint without it samples unmatched.

Written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .accel import Accel
from .errors import CoopsynthError
from .histogram import is_quantile_function
from .io import atomic_path
from .model import CoopModel
from .trainer import TrainConfig

FORMAT = "coopsynth"
VERSION = 1
KINDS = ("texture", "video")


def save_checkpoint(path: str | Path, state: dict, kind: str, meta: dict) -> Path:
    """Write a trainer's `state_dict()` with its kind and metadata, atomically."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind}")
    blob = {"format": FORMAT, "version": VERSION, "kind": kind, "meta": meta, **state}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Load and validate a checkpoint; one-line CoopsynthError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise CoopsynthError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CoopsynthError(f"{path}: is a folder, not a checkpoint (did you mean {path / 'model.pt'}?)")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise CoopsynthError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        why = "not a file written by torch.save"
        if magic[:1] == b"\x80":  # a pickle: torch.save's legacy format (before PyTorch 1.6), or pickle.dump
            why = "a pickle or legacy torch.save file; coopsynth writes torch.save's zip format"
        raise CoopsynthError(f"{path}: not a coopsynth checkpoint ({why})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: code could run on loading it
        why = "it holds Python objects beyond tensors and plain values; not loaded, for safety"
        raise CoopsynthError(f"{path}: not a coopsynth checkpoint ({why})") from None
    except Exception as e:  # a truncated or damaged archive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:120]
        raise CoopsynthError(f"{path}: not a coopsynth checkpoint, or a damaged one ({first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CoopsynthError(f"{path}: not a coopsynth checkpoint")
    if blob.get("version") != VERSION:
        raise CoopsynthError(
            f"{path}: checkpoint format version {blob.get('version')} is not supported (this coopsynth reads {VERSION})"
        )
    if blob.get("kind") not in KINDS:
        raise CoopsynthError(f"{path}: unknown model kind {blob.get('kind')!r}")
    if kind is not None and blob["kind"] != kind:
        raise CoopsynthError(f"{path}: this is a {blob['kind']} model, not a {kind} model")
    missing = [k for k in ("config", "descriptor", "generator", "mean", "std", "step") if k not in blob]
    if missing:
        raise CoopsynthError(f"{path}: checkpoint is missing {', '.join(missing)}")
    try:
        cfg = TrainConfig.from_dict(blob["config"])
    except (TypeError, KeyError, ValueError) as e:
        raise CoopsynthError(f"{path}: checkpoint config is invalid ({e})") from None
    blob["config_obj"] = cfg
    blob["source"] = str(path)  # for messages about this checkpoint later on
    return blob


def model_from_checkpoint(
    blob: dict, device: str | torch.device = "cpu", path: str | Path = "checkpoint", accel: Accel | None = None
) -> CoopModel:
    """A CoopModel with the checkpoint's weights; shape mismatches become one-line errors."""
    cfg: TrainConfig = blob["config_obj"]
    model = CoopModel(cfg.net, blob["mean"], blob["std"], device, accel)
    try:
        model.descriptor.load_state_dict(blob["descriptor"])
        model.generator.load_state_dict(blob["generator"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise CoopsynthError(f"{path}: weights do not match the recorded config ({first})") from None
    if model.mean.shape != (cfg.net.channels,) or model.std.shape != (cfg.net.channels,):
        raise CoopsynthError(f"{path}: normalisation does not match {cfg.net.channels} channels")
    q = blob.get("quantiles")
    if q is not None and not is_quantile_function(q, cfg.net.channels):
        why = f"is damaged or does not match {cfg.net.channels} channels"
        raise CoopsynthError(f"{path}: its colour distribution (quantiles) {why}")
    model.quantiles = None if q is None else q.float()
    return model
