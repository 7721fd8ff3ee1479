"""Interruptions and resumption, in real subprocesses."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from coopsynth.io import write_image
from tests.conftest import texture_image

STEPS = "20"


def _train(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "coopsynth", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        **kw,
    )


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_resume_matches_uninterrupted(tmp_path, sig, code):
    write_image(tmp_path / "t.png", texture_image(32, 32))
    common = [str(tmp_path / "t.png"), "--steps", STEPS, "--seed", "7", "--preset", "fast"]
    # interrupted run
    p = _train([*common, "-o", str(tmp_path / "a")])
    log = tmp_path / "a" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    saved = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert 0 < saved["step"] < int(STEPS)
    # resume to the end
    r = _train([*common, "-o", str(tmp_path / "a"), "--resume"])
    r.communicate(timeout=120)
    assert r.returncode == 0
    # uninterrupted run
    u = _train([*common, "-o", str(tmp_path / "b")])
    u.communicate(timeout=120)
    assert u.returncode == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == int(STEPS)
    for net in ("generator", "descriptor"):
        for k in b[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
