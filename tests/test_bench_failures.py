"""benchmarks/quality.py and completion.py: a coopsynth run that fails is recorded as a failure,
counted as the worst result, and the run goes on with the other methods (it used to stop the whole
benchmark)."""

import math
import sys
from pathlib import Path

import pytest
import torch

from coopsynth.errors import CoopsynthError
from coopsynth.io import write_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quality = pytest.importorskip("quality")
completion = pytest.importorskip("completion")


def diverges(*args, **kwargs):
    raise CoopsynthError("tiny.png: training diverged 21 times")


def test_failed_training_is_a_result_and_the_item_goes_on(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = tmp_path / "tiny.png"
    write_image(src, torch.rand(3, 32, 64))

    def copies(train, k, seed):  # a stand-in peer: k copies of the training half
        return [train.clone() for _ in range(k)], 0.0, ""

    monkeypatch.setattr(quality, "run_coopsynth", diverges)
    monkeypatch.setattr(quality, "run_gmic", copies)
    res = quality.run_item(
        src, ["coopsynth", "gmic"], k=2, seed=0, preset="default", overrides={}, out=tmp_path / "out", unmatched=True
    )
    for label in ("coopsynth", "coopsynth unmatched"):
        assert "diverged" in res["methods"][label]["failed"]
        assert "swd_ratio" not in res["methods"][label]
    assert math.isfinite(res["methods"]["gmic"]["swd_ratio"])  # the peer after it still ran
    assert (tmp_path / "out" / "tiny.json").exists() and (tmp_path / "out" / "tiny.png").exists()


def test_table_counts_a_failure_as_the_worst():
    ok = {"swd_ratio": 1.5, "copy_index": 0.1, "diversity": 0.2, "minutes": 1.0}
    results = [
        {"item": "a", "methods": {"coopsynth": dict(ok, swd_ratio=1.2), "gmic": ok}},
        {"item": "b", "methods": {"coopsynth": {"failed": "diverged", "minutes": 0.5}, "gmic": ok}},
        {"item": "c", "methods": {"coopsynth": dict(ok, swd_ratio=1.4), "gmic": ok}},
    ]
    lines = quality.table(results, ["coopsynth", "gmic"]).splitlines()
    assert "| b | failed / – / – / 0.5 |" in lines[3]
    median = next(row for row in lines if row.startswith("| **median**"))
    assert median.split("|")[2].strip().startswith("**1.40 /")  # median of 1.2, 1.4 and the failure
    worst = next(row for row in lines if row.startswith("| worst"))
    assert worst.split("|")[2:4] == [" failed ", " 1.50 "]
    failed = next(row for row in lines if row.startswith("| failed runs"))
    assert failed.split("|")[2:4] == [" 1 ", " 0 "]
    assert not any(row.startswith("| failed runs") for row in quality.table(results[:1], ["coopsynth"]).splitlines())


def test_failed_masked_training_is_a_result_and_the_peers_go_on(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = tmp_path / "tiny.png"
    write_image(src, torch.rand(3, 32, 64))
    monkeypatch.setattr(completion, "run_coopsynth", diverges)
    monkeypatch.setattr(completion, "peer", lambda name, img, missing: img.flip(-1))  # a stand-in peer
    res = completion.run_item(src, ["coopsynth", "telea"], "default", 0, 256, {}, tmp_path / "out", 4, ("centre",))
    scores = res["masks"]["centre"]
    assert "diverged" in scores["coopsynth"]["failed"] and "diverged" in scores["coopsynth --average 4"]["failed"]
    assert math.isfinite(scores["telea"]["hole_swd_ratio"])
    assert (tmp_path / "out" / "tiny.png").exists()
    ok = scores["telea"]  # a second texture where every method ran
    other = {"item": "b", "size": [32, 32], "masks": {"centre": {"coopsynth": ok, "coopsynth --average 4": ok, "telea": ok}}}
    text = completion.table([res, other])
    rows = text.splitlines()
    assert "| tiny (32x32) | failed / " in text
    median = next(row for row in rows if row.startswith("| **median**"))
    assert median.split("|")[2].strip().startswith("**inf /")  # one failure in two: the median is the worst
    failed = next(row for row in rows if row.startswith("| failed runs"))
    assert failed.split("|")[2:5] == [" 1 ", " 1 ", " 0 "]


def test_video_table_counts_a_failure_as_the_worst():
    video = pytest.importorskip("video")
    ok = {"spatial_swd_ratio": 1.2, "st_swd_ratio": 1.3, "motion_ratio": 0.9, "copy_index": 0.5, "diversity": 0.4, "minutes": 5.0}
    results = [
        {
            "item": "flame",
            "methods": {"coopsynth": {"failed": "flame.mp4: training diverged 21 times", "minutes": 0.4}, "paper": ok},
        },
        {"item": "tree", "methods": {"coopsynth": ok, "paper": ok}},
    ]
    rows = video.table(results).splitlines()
    assert "| flame | coopsynth | failed | failed | failed | – | – | 0.40 |" in rows
    medians = {row.split("|")[2].strip(): row for row in rows if row.startswith("| **median**")}
    assert medians["coopsynth"].split("|")[3].strip() == "inf"  # one failure in two clips
    assert medians["paper"].split("|")[3].strip() == "1.20"
    assert any(row.startswith("| failed runs (counted as the worst) | coopsynth | 1 |") for row in rows)
    assert not any("failed runs" in row and "paper" in row for row in rows)


def test_stack_benchmark_records_a_failed_run_and_scores_the_rest(tmp_path, monkeypatch):
    """benchmarks/stack.py: the height model's run fails, the stack's still scores; the rule's
    alignment of the input with itself is 1, and the table counts the failure as the worst."""
    stack = pytest.importorskip("stack")
    torch.manual_seed(0)
    src = tmp_path / "tiny.png"
    write_image(src, torch.rand(3, 32, 64))

    def fake(data, k, seed, preset, workdir, maps=None):  # the stack and colour runs: copies of the data; height: fails
        assert (maps is not None) == (data.shape[0] == 4)  # the stack trains as --stack does, its maps weighed
        if data.shape[0] == 1:
            raise CoopsynthError("train.png: training diverged 21 times")
        return [data.clone() for _ in range(k)], 0.1, "stand-in"

    monkeypatch.setattr(stack, "train_and_sample", fake)
    res = stack.run_item(src, k=2, seed=0, preset="default", out=tmp_path / "out")
    assert res["input_alignment"] == pytest.approx(1.0)
    assert res["stack"]["alignment"] == pytest.approx(1.0)  # copies of the stacked input line up exactly
    assert "diverged" in res["separate"]["failed"]
    text = stack.table([res])
    assert "| failed / " in text and "**median** | **" in text and "-inf" in text
    assert (tmp_path / "out" / "tiny.json").is_file() and (tmp_path / "out" / "tiny.png").is_file()


def test_normals_benchmark_scores_copies_as_exact_and_records_a_failure(tmp_path, monkeypatch):
    """benchmarks/normals.py: copies of the (colour + normals) input are unit length, agree with
    the rule to a fraction of a degree in every form; a failed run is a row that says so."""
    normals = pytest.importorskip("normals")
    torch.manual_seed(0)
    src = tmp_path / "tiny.png"
    write_image(src, torch.rand(3, 32, 64))
    monkeypatch.setattr(normals, "train_and_sample", lambda data, k, *a: ([data.clone() for _ in range(k)], 0.1, "stand-in"))
    res = normals.run_item(src, k=2, seed=0, preset="default", out=tmp_path / "out")
    assert res["input"]["length"] < 1e-6 and res["input"]["agreement"] < 0.01
    for form in ("raw", "scaled", "unit"):
        assert res[form]["length"] < 1e-5 and res[form]["off"] == 0 and res[form]["agreement"] < 0.05, form
    monkeypatch.setattr(normals, "train_and_sample", diverges)
    failed = normals.run_item(src, k=2, seed=0, preset="default", out=tmp_path / "out2")
    text = normals.table([res, failed])
    assert "| tiny | failed: tiny.png: training diverged 21 times |" in text and "**median of 1** |" in text
