import copy
import json
import math

import pytest
import torch

from coopsynth import pipeline
from coopsynth.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from coopsynth.errors import CoopsynthError
from coopsynth.io import write_image
from coopsynth.trainer import (
    MIN_CROP_POSITIONS,
    WATCHDOG_FLOOR,
    WATCHDOG_WARMUP,
    CollapseError,
    CoopTrainer,
    DivergenceError,
    TrainConfig,
)
from tests.conftest import texture_image, tiny_net, video_clip


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(net=tiny_net(), crop=16, batch=2, steps=6, langevin_steps=3)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_step_moves_energies_the_right_way():
    """After the descriptor update, the observed crops gain energy relative to the revised samples."""
    torch.manual_seed(0)
    t = CoopTrainer(texture_image(), tiny_cfg(lr_d=1e-2), seed=1)
    state = torch.get_rng_state(), t.gen.get_state()
    obs, _ = t.observed_batch()
    z = t.model.latent(2, t.crop_size, t.gen)
    y = t.model.revise(t.model.generate(z, t.crop_size), steps=3, generator=t.gen, **t.cfg.langevin())
    gap_before = (t.descriptor(obs) - t.descriptor(y)).mean().item()
    torch.set_rng_state(state[0])
    t.gen.set_state(state[1])
    t.step()  # same crops and chains (same RNG state)
    gap_after = (t.descriptor(obs) - t.descriptor(y)).mean().item()
    assert gap_after > gap_before


def test_generator_step_moves_g_of_z_toward_the_revision():
    """MCMC teaching: after one step, g(Z) is closer to that step's revised Y, for the same Z."""
    torch.manual_seed(0)
    cfg = tiny_cfg(lr_g=1e-4)
    t = CoopTrainer(texture_image(), cfg, seed=2)
    seen = {}
    real_revise, real_latent = t.model.revise, t.model.latent
    t.model.revise = lambda y0, **kw: seen.setdefault("y", real_revise(y0, **kw))
    t.model.latent = lambda *a, **k: seen.setdefault("z", real_latent(*a, **k))
    for _ in range(3):
        seen.clear()
        stats = t.step()  # loss_g is |Y - g_before(Z)|^2 / (2 s^2)
        with torch.no_grad():
            after = (t.generator(seen["z"]) - seen["y"]).pow(2).mean().item() / (2 * cfg.s**2)
        assert after < stats["loss_g"]


@pytest.mark.parametrize("masked", [False, True])
def test_step_scores_each_batch_with_its_own_energy(masked):
    """The descriptor scores the data crops and the revised chains in one pass: each side's
    reported energy is still its own batch's (per position)."""
    torch.manual_seed(0)
    mask = None
    if masked:
        mask = torch.ones(1, 48, 40, dtype=torch.bool)
        mask[:, 20:28, 10:30] = False
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=1, mask=mask)
    seen = {}
    real_revise, real_batch = t.model.revise, t.observed_batch
    t.model.revise = lambda y0, **kw: seen.setdefault("y", real_revise(y0, **kw))
    t.observed_batch = lambda: seen.setdefault("obs", real_batch())
    before = [p.detach().clone() for p in t.descriptor.parameters()]
    stats = t.step()
    (obs, m), y = seen["obs"], seen["y"]
    syn = y if m is None else y * m
    d = copy.deepcopy(t.descriptor)
    with torch.no_grad():
        for p, b in zip(d.parameters(), before, strict=True):
            p.copy_(b)  # the weights the step scored with
        npos = math.prod(t.crop_size)
        assert stats["f_obs"] == pytest.approx((d(obs) / npos).mean().item(), rel=1e-5, abs=1e-6)
        assert stats["f_syn"] == pytest.approx((d(syn) / npos).mean().item(), rel=1e-5, abs=1e-6)
        assert abs(stats["f_obs"] - stats["f_syn"]) > 1e-3  # far enough apart for a swap to show


def test_step_reports_all_figures():
    t = CoopTrainer(texture_image(), tiny_cfg(clip=3.0), seed=0)
    stats = t.step()
    assert set(stats) == {"step", "f_obs", "f_syn", "loss_g", "revision", "delta", "held", "clipped", "gap"}
    assert stats["step"] == 1 and t.step_count == 1


def test_checkpoint_round_trip_continues_like_an_uninterrupted_run(tmp_path):
    data = texture_image()
    a = CoopTrainer(data, tiny_cfg(), seed=3)
    for _ in range(4):
        a.step()
    b = CoopTrainer(data, tiny_cfg(), seed=3)
    for _ in range(2):
        b.step()
    path = save_checkpoint(tmp_path / "model.pt", b.state_dict(), "texture", {"size": [48, 40]})
    blob = load_checkpoint(path, "texture")
    c = CoopTrainer(data, blob["config_obj"], seed=999)  # the seed is overwritten by the checkpoint's RNG
    c.load_state_dict(blob)
    for _ in range(2):
        c.step()
    for pa, pc in zip(a.model.generator.parameters(), c.model.generator.parameters(), strict=True):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0)
    for pa, pc in zip(a.model.descriptor.parameters(), c.model.descriptor.parameters(), strict=True):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0)
    m = model_from_checkpoint(blob)
    assert m.net == tiny_net()


def test_checkpoint_is_plain_tensors_and_primitives(tmp_path):
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=0)
    path = save_checkpoint(tmp_path / "m.pt", t.state_dict(), "texture", {"size": [48, 40]})
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "coopsynth" and blob["version"] == 1 and blob["kind"] == "texture"
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


class _Pickled:  # an object torch.save pickles, which weights_only loading refuses
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"x\.pt: not a coopsynth checkpoint \(not a file written by torch\.save\)$"),
        (b"hello, I am text", r"x\.pt: not a coopsynth checkpoint \(not a file written by torch\.save\)$"),
        ("pickled", r"x\.pt: not a coopsynth checkpoint \(it holds Python objects beyond tensors and plain values"),
        ("truncated", r"x\.pt: not a coopsynth checkpoint, or a damaged one \([^\n]+\)$"),
        ("legacy", r"x\.pt: not a coopsynth checkpoint \(a pickle or legacy torch\.save file; coopsynth writes"),
    ],
)
def test_foreign_checkpoints_are_refused(tmp_path, content, message):
    """One line naming the file and the problem, without loading a pickled object."""
    p = tmp_path / "x.pt"
    if content == "pickled":
        torch.save({"format": "coopsynth", "object": _Pickled()}, p)
    elif content == "legacy":  # PyTorch's format before 1.6, still written on request
        torch.save({"descriptor": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)
    elif content == "truncated":
        t = CoopTrainer(texture_image(), tiny_cfg(), seed=0)
        whole = save_checkpoint(tmp_path / "m.pt", t.state_dict(), "texture", {}).read_bytes()
        p.write_bytes(whole[: len(whole) // 2])
    else:
        p.write_bytes(content)
    with pytest.raises(CoopsynthError, match=message):
        load_checkpoint(p)


def test_checkpoint_of_other_kind_or_version_is_refused(tmp_path):
    torch.save({"format": "coopsynth", "version": 99, "kind": "texture"}, tmp_path / "v.pt")
    with pytest.raises(CoopsynthError, match="version 99"):
        load_checkpoint(tmp_path / "v.pt")
    torch.save({"some": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CoopsynthError, match="not a coopsynth checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=0)
    save_checkpoint(tmp_path / "m.pt", t.state_dict(), "texture", {})
    with pytest.raises(CoopsynthError, match="texture model, not a video model"):
        load_checkpoint(tmp_path / "m.pt", "video")


def test_divergence_is_detected_rolled_back_and_logged(tmp_path, monkeypatch):
    """An injected NaN in one iteration: the run rolls back, lowers the step size, and finishes."""
    write_image(tmp_path / "in.png", texture_image())
    calls = {"n": 0}
    real_step = CoopTrainer.step

    def faulty(self):
        calls["n"] += 1
        if calls["n"] == 3:
            self.descriptor.heads[0].bias.data.fill_(float("nan"))
        return real_step(self)

    monkeypatch.setattr(CoopTrainer, "step", faulty)
    job = pipeline.TrainJob(
        tmp_path / "in.png", tmp_path / "out", steps=5, overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=2)
    )
    res = pipeline.train(job)
    assert res["rollbacks"] == 1 and res["steps"] == 5
    assert res["trainer"].delta < TrainConfig().delta
    events = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "divergence" for e in events)
    for p in res["trainer"].model.descriptor.parameters():
        assert torch.isfinite(p).all()


def test_watchdog_raises_on_a_runaway_descriptor_before_updating():
    """A lead above cfg.watchdog stops the iteration with neither network updated; below it, both learn."""
    t = CoopTrainer(texture_image(), tiny_cfg(watchdog=1.0), seed=0)
    t.gap = 10.0  # as if the descriptor had run away: one more iteration keeps the EMA above 1
    t.step()  # ... but in the warm-up the watchdog does not look
    t.step_count = WATCHDOG_WARMUP
    t.gap = 10.0
    d0 = [p.clone() for p in t.descriptor.parameters()]
    g0 = [p.clone() for p in t.generator.parameters()]
    with pytest.raises(CollapseError, match=f"ran away at step {WATCHDOG_WARMUP + 1}"):
        t.step()
    assert all(torch.equal(a, b) for a, b in zip(d0, t.descriptor.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g0, t.generator.parameters(), strict=True))
    assert t.step_count == WATCHDOG_WARMUP
    t.gap = 0.0
    t.step()
    assert not all(torch.equal(a, b) for a, b in zip(d0, t.descriptor.parameters(), strict=True))
    t.gap, t.lr_scale = 10.0, WATCHDOG_FLOOR
    with pytest.raises(CollapseError):
        t.step()  # at the floor it still looks: the caller then ends the run
    off = CoopTrainer(texture_image(), tiny_cfg(watchdog=0.0), seed=0)
    off.step_count, off.gap = WATCHDOG_WARMUP, 10.0
    off.step()  # off: never raises (and the EMA is not even kept)
    assert off.gap == 10.0


def train_with_collapses(tmp_path, monkeypatch, steps: int, collapse_at, before=None, minutes=None) -> tuple[dict, list[dict]]:
    """A tiny texture run whose descriptor "runs away" (lead 50) on the iterations where
    collapse_at(trainer, call) is true; `before(trainer)` sees every iteration first. Returns the
    run's summary and its log events."""
    monkeypatch.setattr("coopsynth.trainer.WATCHDOG_WARMUP", 0)
    write_image(tmp_path / "in.png", texture_image())
    calls = {"n": 0}
    real_step = CoopTrainer.step

    def collapsing(self):
        calls["n"] += 1
        if before is not None:
            before(self)
        if collapse_at(self, calls["n"]):
            self.gap = 50.0
        return real_step(self)

    monkeypatch.setattr(CoopTrainer, "step", collapsing)
    job = pipeline.TrainJob(
        tmp_path / "in.png",
        tmp_path / "out",
        steps=steps,
        minutes=minutes,
        overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=1),
    )
    res = pipeline.train(job)
    events = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    return res, events


def test_collapse_rolls_back_to_a_balanced_state_with_halved_learning_rates(tmp_path, monkeypatch):
    """A collapse in the middle of a run: back to the last balanced state, lr halved, logged, finished;
    the halved rate is what the optimisers then use and what the checkpoint records."""
    res, events = train_with_collapses(tmp_path, monkeypatch, 5, lambda t, call: call == 4)
    tr = res["trainer"]
    assert res["rollbacks"] == 1 and res["steps"] == 5
    assert tr.lr_scale == 0.5 and tr.delta == TrainConfig().delta
    collapse = [e for e in events if e.get("event") == "collapse"]
    assert collapse and collapse[0]["at_step"] == 4 and collapse[0]["rolled_back_to"] == 0
    assert collapse[0]["lr_scale"] == 0.5 and "watchdog" not in collapse[0]
    tr.step_count -= 1  # the schedule's factor for the last iteration run
    assert tr.opt_d.param_groups[0]["lr"] == pytest.approx(tr.cfg.lr_d * tr.lr_factor() * 0.5)
    assert tr.opt_g.param_groups[0]["lr"] == pytest.approx(tr.cfg.lr_g * tr.lr_factor() * 0.5)
    assert load_checkpoint(tmp_path / "out" / "model.pt")["lr_scale"] == 0.5


def test_a_collapse_past_the_last_halving_ends_the_run_at_the_balanced_state(tmp_path, monkeypatch):
    """Four collapses halve the learning rates down to the floor; the fifth ends the run at the
    last balanced state (saved every 50 iterations): that state's weights are the model, the
    checkpoint and the log say why, and the run counts as finished."""
    saved = {}

    def keep_step_50(t):
        if t.step_count == 50:
            saved.setdefault("generator", {k: v.clone() for k, v in t.generator.state_dict().items()})

    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: t.step_count >= 52, keep_step_50)
    assert res["stopped"] == "collapse" and res["steps"] == 50 and res["rollbacks"] == 5
    collapses = [e for e in events if e.get("event") == "collapse"]
    assert [e.get("lr_scale") for e in collapses] == [0.5, 0.25, 0.125, WATCHDOG_FLOOR, None]
    assert "last halving" in collapses[3]["watchdog"] and "ends at the last balanced state" in collapses[4]["watchdog"]
    assert events[-1] == {**events[-1], "event": "stopped", "reason": "collapse", "step": 50}
    blob = load_checkpoint(tmp_path / "out" / "model.pt")
    assert blob["step"] == 50 and blob["meta"]["stopped"] == "collapse"
    for k, v in saved["generator"].items():
        assert torch.equal(res["trainer"].generator.state_dict()[k], v), k
    assert pipeline.run_state(tmp_path / "out" / "model.pt") == "finished"
    assert res["restarts"] == 0 and not [e for e in events if e.get("event") == "restart"]  # 50 of 80: late


def test_restart_is_a_new_trainer_with_that_seed():
    data = texture_image()
    tr = CoopTrainer(data, tiny_cfg(), seed=0)
    for _ in range(3):
        tr.step()
    tr.lr_scale, tr.delta = 0.25, 0.5
    tr.restart(7)
    new = CoopTrainer(data, tiny_cfg(), seed=7)
    assert tr.step_count == 0 and tr.lr_scale == 1.0 and tr.delta == new.delta
    for a, b in ((tr.descriptor, new.descriptor), (tr.generator, new.generator)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
    assert not tr.opt_d.state and not tr.opt_g.state
    assert torch.equal(tr.gen.get_state(), new.gen.get_state())
    tr.step(), new.step()  # the same draws from here on
    assert torch.equal(next(tr.generator.parameters()), next(new.generator.parameters()))


def test_an_early_collapse_end_starts_training_afresh_with_a_new_seed(tmp_path, monkeypatch):
    """The watchdog runs out of halvings at step 2 of 80 (well before half the run): instead of
    ending with a model of 0 iterations, training starts afresh with seed + RESTART_SEED, logged;
    that attempt runs to the end and gives what a run with that seed gives."""
    on = {"collapse": True}
    real_restart = CoopTrainer.restart

    def restart(self, seed):
        on["collapse"] = False
        real_restart(self, seed)

    monkeypatch.setattr(CoopTrainer, "restart", restart)
    res, events = train_with_collapses(tmp_path / "a", monkeypatch, 80, lambda t, call: on["collapse"] and t.step_count >= 2)
    assert res["stopped"] == "steps" and res["steps"] == 80 and res["restarts"] == 1
    kinds = [e["event"] for e in events if "event" in e]
    assert kinds == ["collapse"] * 5 + ["restart", "stopped"]
    at = [i for i, e in enumerate(events) if e.get("event") == "restart"][0]
    assert "starts afresh with seed 1000" in events[at - 1]["watchdog"]
    assert {k: events[at][k] for k in ("attempt", "seed")} == {"attempt": 2, "seed": pipeline.RESTART_SEED}
    assert load_checkpoint(tmp_path / "a" / "out" / "model.pt")["meta"]["restarts"] == 1
    fresh = pipeline.train(
        pipeline.TrainJob(
            tmp_path / "a" / "in.png",
            tmp_path / "b",
            steps=80,
            seed=pipeline.RESTART_SEED,
            overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=1),
        )
    )
    for k, v in fresh["trainer"].generator.state_dict().items():
        assert torch.equal(res["trainer"].generator.state_dict()[k], v), k


def test_a_fresh_start_in_a_minutes_run_gets_the_time_that_is_left(tmp_path, monkeypatch):
    """--minutes: the learning-rate schedule follows the clock. After a fresh start it runs over the
    time that is left, from the top, not from where the failed attempt had got to."""
    monkeypatch.setattr("coopsynth.trainer.WATCHDOG_WARMUP", 0)
    clock = {"t": 0.0}
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: clock["t"])
    write_image(tmp_path / "in.png", texture_image())
    on, seen, begun = {"collapse": True}, [], []
    real_step, real_restart = CoopTrainer.step, CoopTrainer.restart

    def step(self):
        clock["t"] += 1.0  # every iteration takes a second
        if on["collapse"] and self.step_count >= 2:
            self.gap = 50.0
        if not on["collapse"]:
            seen.append(self.progress())
        return real_step(self)

    def restart(self, seed):
        on["collapse"] = False
        begun.append(clock["t"])
        real_restart(self, seed)

    monkeypatch.setattr(CoopTrainer, "step", step)
    monkeypatch.setattr(CoopTrainer, "restart", restart)
    job = pipeline.TrainJob(
        tmp_path / "in.png", tmp_path / "out", minutes=1.0, overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=1)
    )
    res = pipeline.train(job)
    assert res["restarts"] == 1 and res["stopped"] == "minutes" and begun[0] >= 5
    assert seen[0] == pytest.approx(1 / (60 - begun[0]))  # one second into the time left
    assert seen[-1] == pytest.approx(1.0)


def test_a_collapse_end_late_by_steps_stands_though_early_by_the_clock(tmp_path, monkeypatch):
    """--steps and --minutes together: the run is as far along as the further of the two, so a
    watchdog end at step 50 of 80 stands even when only a tenth of the minutes has gone."""
    clock = {"t": 0.0}
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: clock["t"])
    real_step = CoopTrainer.step

    def step(self):
        clock["t"] += 0.1
        return real_step(self)

    monkeypatch.setattr(CoopTrainer, "step", step)
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: t.step_count >= 52, minutes=1.0)
    assert res["stopped"] == "collapse" and res["steps"] == 50 and res["restarts"] == 0


def test_early_collapse_ends_stand_after_the_last_restart(tmp_path, monkeypatch):
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: t.step_count >= 2)
    assert res["stopped"] == "collapse" and res["restarts"] == pipeline.MAX_RESTARTS == 2
    restarts = [e for e in events if e.get("event") == "restart"]
    assert [e["seed"] for e in restarts] == [pipeline.RESTART_SEED, 2 * pipeline.RESTART_SEED]
    assert [e["event"] for e in events[-3:]] == ["collapse", "best_attempt", "stopped"]
    assert "ends at the last balanced state" in events[-3]["watchdog"]


@pytest.mark.parametrize("scores, kept", [((0.5, 0.9, 0.7), 1), ((0.9, 0.6, 0.8), 2), ((0.9, 0.8, 0.5), 3)])
def test_when_every_attempt_ends_early_the_best_scoring_one_is_kept(tmp_path, monkeypatch, scores, kept):
    """All three attempts end early: the run keeps the state of the attempt whose samples scored
    closest to the input (the lowest score), whichever it was, and the log, the checkpoint and the
    summary say which."""
    seen = []

    def score(trainer, seed):
        assert seed == 0 + pipeline.SCORE_SEED  # every attempt judged from the same draws
        seen.append({k: v.clone() for k, v in trainer.generator.state_dict().items()})
        return scores[len(seen) - 1]

    monkeypatch.setattr(pipeline, "attempt_score", score)
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: t.step_count >= 2)
    assert len(seen) == 3 and res["stopped"] == "collapse" and res["restarts"] == 2
    for k, v in res["trainer"].generator.state_dict().items():
        assert torch.equal(v, seen[kept - 1][k]), k
    assert all(any(not torch.equal(a[k], b[k]) for k in a) for a, b in ((seen[0], seen[1]), (seen[1], seen[2])))
    pick = [e for e in events if e.get("event") == "best_attempt"]
    assert len(pick) == 1 and pick[0]["attempt"] == kept and pick[0]["scores"] == list(scores)
    assert [e["score"] for e in events if "score" in e] == list(scores)
    assert res["kept_attempt"] == (None if kept == 3 else kept)
    blob = load_checkpoint(tmp_path / "out" / "model.pt")
    assert blob["meta"].get("kept_attempt") == res["kept_attempt"]
    for k, v in model_from_checkpoint(blob).generator.state_dict().items():
        assert torch.equal(v, seen[kept - 1][k]), k


def test_a_fresh_start_that_keeps_diverging_ends_with_the_best_earlier_attempt(tmp_path, monkeypatch):
    """The first attempt ends early (collapses) and is scored; the fresh start then diverges on
    every iteration from its last good state: instead of an error that throws the run away, the
    run keeps the first attempt's state, and the log and checkpoint say so."""
    on, seen = {"attempt": 1}, []
    real_restart = CoopTrainer.restart

    def restart(self, seed):
        on["attempt"] += 1
        real_restart(self, seed)

    def before(t):
        if on["attempt"] == 2 and t.step_count >= 3:  # a non-finite descriptor: a divergence
            t.descriptor.heads[0].bias.data.fill_(float("nan"))

    def score(trainer, seed):
        seen.append({k: v.clone() for k, v in trainer.generator.state_dict().items()})
        return 0.5

    monkeypatch.setattr(CoopTrainer, "restart", restart)
    monkeypatch.setattr(pipeline, "MAX_RESTARTS", 1)
    monkeypatch.setattr(pipeline, "attempt_score", score)
    first_collapses = lambda t, call: on["attempt"] == 1 and t.step_count >= 2  # noqa: E731
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, first_collapses, before)
    assert res["stopped"] == "collapse" and res["restarts"] == 1 and res["kept_attempt"] == 1 and len(seen) == 1
    assert sum(e.get("event") == "divergence" for e in events) == 21
    pick = [e for e in events if e.get("event") == "best_attempt"]
    assert len(pick) == 1 and pick[0]["attempt"] == 1 and pick[0]["diverged"] == "attempt 2 diverged 21 times"
    for k, v in res["trainer"].generator.state_dict().items():
        assert torch.equal(v, seen[0][k]), k
    assert load_checkpoint(tmp_path / "out" / "model.pt")["meta"]["kept_attempt"] == 1


def test_a_first_attempt_that_keeps_diverging_is_an_error(tmp_path, monkeypatch):
    """With no earlier attempt to fall back on, 21 divergences in a row are one error line."""

    def before(t):
        if t.step_count >= 3:
            t.descriptor.heads[0].bias.data.fill_(float("nan"))

    with pytest.raises(CoopsynthError, match="training diverged 21 times"):
        train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: False, before)


def test_attempts_are_not_scored_when_a_fresh_start_reaches_the_end(tmp_path, monkeypatch):
    """Only an early end is scored, and a run whose fresh start trains to the end keeps that."""
    on, seen = {"collapse": True}, []
    real_restart = CoopTrainer.restart

    def restart(self, seed):
        on["collapse"] = False
        real_restart(self, seed)

    monkeypatch.setattr(CoopTrainer, "restart", restart)
    monkeypatch.setattr(pipeline, "attempt_score", lambda t, seed: seen.append(t.step_count) or 0.0)
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: on["collapse"] and t.step_count >= 2)
    assert res["stopped"] == "steps" and res["restarts"] == 1 and res["kept_attempt"] is None
    assert len(seen) == 1 and not [e for e in events if e.get("event") == "best_attempt"]


def test_attempt_score_is_deterministic_and_leaves_the_training_streams_alone():
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=0)
    t.step()
    state, cpu = t.gen.get_state(), torch.get_rng_state()
    a = pipeline.attempt_score(t, 5)
    assert math.isfinite(a) and a > 0
    assert torch.equal(t.gen.get_state(), state) and torch.equal(torch.get_rng_state(), cpu)
    assert pipeline.attempt_score(t, 5) == a and pipeline.attempt_score(t, 6) != a
    mask = torch.ones(1, 48, 40, dtype=torch.bool)
    mask[:, 20:28, 16:24] = False
    assert pipeline.attempt_score(CoopTrainer(texture_image(), tiny_cfg(), seed=0, mask=mask), 5) is None
    video = CoopTrainer(video_clip(6, 32, 32), tiny_cfg(net=tiny_net(dims=3), crop_frames=4), seed=0)
    assert pipeline.attempt_score(video, 5) is None


@pytest.mark.parametrize("collapses_again", [False, True])
def test_resume_after_a_collapse_end_goes_on_at_the_floor_rate(tmp_path, monkeypatch, collapses_again):
    """--resume on a run the watchdog ended: it goes on from the balanced state it kept (step 50)
    with the learning rates at the floor, and either reaches its steps or, at the next collapse,
    ends there again at once (no halvings are left)."""
    on = {"collapse": True}
    train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: on["collapse"] and t.step_count >= 52)
    on["collapse"] = collapses_again
    job = pipeline.TrainJob(
        tmp_path / "in.png",
        tmp_path / "out",
        steps=80,
        resume=True,
        overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=1),
    )
    res = pipeline.train(job)
    events = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    resumed = events[[i for i, e in enumerate(events) if e.get("event") == "stopped"][0] + 1 :]
    assert res["trainer"].lr_scale == WATCHDOG_FLOOR
    if collapses_again:
        assert res["stopped"] == "collapse" and res["steps"] == 50 and res["rollbacks"] == 1
        assert [e["event"] for e in resumed if "event" in e] == ["collapse", "stopped"]
        assert "ends at the last balanced state" in resumed[0]["watchdog"]
    else:
        assert res["stopped"] == "steps" and res["steps"] == 80 and res["rollbacks"] == 0
        assert resumed[0]["step"] > 50 and resumed[-1] == {**resumed[-1], "event": "stopped", "reason": "steps", "step": 80}
    assert load_checkpoint(tmp_path / "out" / "model.pt")["lr_scale"] == WATCHDOG_FLOOR


def test_a_state_mid_collapse_is_not_balanced():
    """The lead's moving average lags: a state whose last iteration ran far ahead is no roll-back
    target even while the average is still low; with the watchdog off every state is one."""
    t = CoopTrainer(texture_image(), tiny_cfg(watchdog=2.0), seed=0)
    t.step()
    assert t.lead != 0.0 and t.gap == pytest.approx(0.1 * t.lead)  # both kept from the first iteration on
    t.gap, t.lead = 0.8, 0.1
    assert t.balanced
    t.gap, t.lead = 0.8, 4.5
    assert not t.balanced
    t.gap, t.lead = 1.5, 0.1
    assert not t.balanced
    off = CoopTrainer(texture_image(), tiny_cfg(watchdog=0.0), seed=0)
    off.gap, off.lead = 9.0, 9.0
    assert off.balanced


def test_reseed_draws_other_but_reproducible_data():
    """After a roll-back the retry draws new crops and latents, the same ones in every rerun."""
    a, b, c = (CoopTrainer(texture_image(), tiny_cfg(), seed=0) for _ in range(3))
    b.reseed(1)
    c.reseed(1)
    za, zb, zc = (t.model.latent(2, (16, 16), t.gen) for t in (a, b, c))
    assert not torch.equal(za, zb)
    assert torch.equal(zb, zc)
    a.reseed(2)
    assert not torch.equal(a.model.latent(2, (16, 16), a.gen), c.model.latent(2, (16, 16), c.gen))


def test_nan_step_raises_before_updating():
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=0)
    t.descriptor.heads[0].bias.data.fill_(float("nan"))
    before = [p.clone() for p in t.generator.parameters()]
    with pytest.raises(DivergenceError):
        t.step()
    assert all(torch.equal(a, b) for a, b in zip(before, t.generator.parameters(), strict=True))
    assert t.step_count == 0


def test_minutes_budget_stops_on_time_and_schedules_by_clock(tmp_path):
    write_image(tmp_path / "in.png", texture_image())
    job = pipeline.TrainJob(
        tmp_path / "in.png", tmp_path / "out", minutes=0.02, overrides=dict(net=tiny_net(), crop=16, batch=2, langevin_steps=1)
    )
    res = pipeline.train(job)
    assert res["stopped"] == "minutes" and 0 < res["steps"] < 10**6
    assert res["seconds"] < 5
    tr = res["trainer"]
    assert tr.lr_factor() == pytest.approx(TrainConfig().lr_decay, abs=0.05)  # the cosine reached its end with the clock
    events = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert events[-1] == {**events[-1], "event": "stopped", "reason": "minutes"}


def test_masked_training_chains_hold_hidden_pixels_at_zero():
    """Completion training: the revision optimises exactly what the descriptor is scored on, the
    crops with their hidden pixels at 0; visible pixels are revised."""
    torch.manual_seed(0)
    mask = torch.ones(1, 48, 40, dtype=torch.bool)
    for i in range(0, 48, 8):
        for j in range(0, 40, 8):
            mask[:, i : i + 4, j : j + 4] = False  # hidden 4x4 blocks: every 16x16 crop has some
    t = CoopTrainer(texture_image(), tiny_cfg(), seed=1, mask=mask)
    seen = {}
    real_revise, real_batch = t.model.revise, t.observed_batch
    t.model.revise = lambda y0, **kw: seen.setdefault("y", (y0, real_revise(y0, **kw)))[1]
    t.observed_batch = lambda: seen.setdefault("obs", real_batch())
    t.step()
    y0, y = seen["y"]
    m = seen["obs"][1].expand_as(y)  # (B, C, H, W) 1 = visible
    assert (m == 0).any() and (m == 1).any()
    assert torch.all(y[m == 0] == 0)
    assert not torch.allclose(y[m == 1], y0[m == 1])


@pytest.mark.parametrize("dims", [2, 3])
def test_masked_training_draws_the_most_visible_crops(dims):
    """Wholly visible crops where there are enough (a hole in the middle: only its frame is drawn, at
    every side of it); otherwise the best-covered positions, at least MIN_CROP_POSITIONS of them or
    all of a small input's."""
    frames = 6 if dims == 3 else None
    data = texture_image(96, 96) if dims == 2 else video_clip(frames, 96, 96)
    size = data.shape[1:]  # ([T,] H, W)
    cfg = tiny_cfg(net=tiny_net(dims=dims), crop_frames=4, crop_pick="visible")
    mask = torch.ones(1, *size, dtype=torch.bool)
    mask[..., 32:64, 32:64] = False  # a hole in the middle
    t = CoopTrainer(data, cfg, seed=0, mask=mask)
    seen = set()
    for _ in range(100):
        obs, m = t.observed_batch()
        assert torch.all(m == 1)
        seen.add(tuple(int(v) for v in t._crop_offsets(t.gen)))
    hs, ws = {o[-2] for o in seen}, {o[-1] for o in seen}
    assert min(hs) == 0 and max(hs) == 96 - 16 and min(ws) == 0 and max(ws) == 96 - 16  # every side

    def coverage(mask: torch.Tensor) -> torch.Tensor:  # visible fraction of every crop position
        pool = torch.nn.functional.avg_pool2d if dims == 2 else torch.nn.functional.avg_pool3d
        return pool(mask[None].float(), t.crop_size, stride=1).flatten()

    holes = torch.ones(1, *size, dtype=torch.bool)
    holes[..., ::3, ::3] = False  # no crop is wholly visible
    t = CoopTrainer(data, cfg, seed=0, mask=holes)
    frac = coverage(holes)
    k = max(math.ceil(0.1 * frac.numel()), MIN_CROP_POSITIONS)
    best = frac.sort(descending=True).values[k - 1]
    assert torch.equal(t.starts, torch.nonzero(frac >= best).flatten()) and len(t.starts) >= k
    assert all(float(t.observed_batch()[1].float().mean()) >= float(best) - 1e-6 for _ in range(10))
    small = data[..., :24, :24].contiguous()  # 9 x 9 positions (x 3 in time): fewer than the minimum
    t = CoopTrainer(small, cfg, seed=0, mask=holes[..., :24, :24].contiguous())
    assert len(t.starts) == coverage(holes[..., :24, :24]).numel()


def test_balance_holds_the_descriptor_while_it_leads():
    """With the descriptor's lead above `balance`, its weights stay put and the generator learns;
    below it, both learn."""
    t = CoopTrainer(texture_image(), tiny_cfg(balance=0.5, watchdog=0.0), seed=0)
    t.gap = 10.0  # as if the descriptor had run away
    d0 = [p.clone() for p in t.descriptor.parameters()]
    g0 = [p.clone() for p in t.generator.parameters()]
    stats = t.step()
    assert stats["held"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(d0, t.descriptor.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g0, t.generator.parameters(), strict=True))
    t.gap = 0.0
    stats = t.step()
    assert stats["held"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(d0, t.descriptor.parameters(), strict=True))
    assert "gap" in t.state_dict()


def _set_grads(net: torch.nn.Module, norm: float) -> None:
    """Give every parameter a gradient, scaled so that their total norm is `norm`."""
    grads = [torch.randn_like(p) for p in net.parameters()]
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g * (norm / total)


def _grad_norm(net: torch.nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters())))


def test_gradient_spike_is_clipped_to_a_multiple_of_the_running_norm():
    t = CoopTrainer(texture_image(), tiny_cfg(clip=3.0), seed=0)
    t.step_count = 100  # past the warm-up
    t.grad_norms = [2.0, 2.0]
    _set_grads(t.descriptor, 50.0)  # a spike: 25x the running norm
    assert t._clip(0, t.descriptor)
    assert _grad_norm(t.descriptor) == pytest.approx(6.0, rel=1e-5)
    assert t.grad_norms[0] == pytest.approx(0.95 * 2.0 + 0.05 * 6.0)  # the spike counts only as the cap
    _set_grads(t.generator, 5.0)  # an ordinary gradient: below 3x, untouched
    assert not t._clip(1, t.generator)
    assert _grad_norm(t.generator) == pytest.approx(5.0, rel=1e-5)
    assert t.grad_norms[1] == pytest.approx(0.95 * 2.0 + 0.05 * 5.0)


def test_clipping_off_and_warm_up_leave_gradients_alone():
    t = CoopTrainer(texture_image(), tiny_cfg(clip=3.0), seed=0)
    t.grad_norms = [2.0, 2.0]
    _set_grads(t.descriptor, 50.0)
    assert not t._clip(0, t.descriptor)  # step 0: still learning what a usual norm is
    assert _grad_norm(t.descriptor) == pytest.approx(50.0, rel=1e-5)
    t = CoopTrainer(texture_image(), tiny_cfg(clip=0.0), seed=0)
    assert "clipped" not in t.step()
    assert t.grad_norms == [0.0, 0.0] and "grad_norms" in t.state_dict()


def test_energies_scores_batches_in_one_pass_while_they_fit_the_cpu_chunk(monkeypatch):
    """`CoopModel.energies` gives each batch's own energies, in one descriptor pass while the
    batches fit CPU_CHUNK pixels and in one pass per batch beyond (where one pass was slower)."""
    from coopsynth import model as model_module
    from coopsynth.model import CoopModel

    torch.manual_seed(0)
    m = CoopModel(tiny_net(), torch.full((3,), 0.5), torch.full((3,), 0.2))
    a, b = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    batches = []
    real = m.descriptor.forward
    monkeypatch.setattr(m.descriptor, "forward", lambda y, wrap=None: batches.append(y.shape[0]) or real(y, wrap))
    for chunk, passes in ((5 * 256, [5]), (5 * 256 - 1, [2, 3])):
        monkeypatch.setattr(model_module, "CPU_CHUNK", chunk)
        batches.clear()
        fa, fb = m.energies(a, b)
        assert batches == passes
        torch.testing.assert_close(fa, m.energy(a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fb, m.energy(b), rtol=1e-5, atol=1e-5)


def test_a_good_state_that_fails_again_and_again_gives_way_to_the_one_before(tmp_path, monkeypatch):
    """The state saved at iteration 50 passes as good but diverges on every iteration after it,
    whatever the step size (a marker in its weights stands for a generator already blowing up).
    After STEP_BACK_AFTER divergences from it the run goes back to the state before it (iteration
    0), which trains past 50 again, and the run finishes; the log says so."""
    poisoned = {"done": False}

    def before(t):  # in the marked state: a non-finite descriptor, whatever the step size
        bias = t.descriptor.heads[0].bias
        if bias.item() == 123.0:
            bias.data.fill_(float("nan"))

    real_step = CoopTrainer.step

    def after_step_marks(self):  # marked after iteration 50, once: the state the run then saves as good
        out = real_step(self)
        if self.step_count == 50 and not poisoned["done"]:
            poisoned["done"] = True
            with torch.no_grad():
                self.descriptor.heads[0].bias.fill_(123.0)
        return out

    monkeypatch.setattr(CoopTrainer, "step", after_step_marks)
    res, events = train_with_collapses(tmp_path, monkeypatch, 80, lambda t, call: False, before)
    divergences = [e for e in events if e.get("event") == "divergence"]
    assert [e["rolled_back_to"] for e in divergences] == [50, 50, 50, 0]
    assert "the state of iteration 50 failed 3 times" in divergences[3]["stepped_back"]
    assert res["stopped"] == "steps" and res["steps"] == 80 and res["rollbacks"] == 4
    assert res["trainer"].descriptor.heads[0].bias.item() != 123.0


def test_self_check_compares_samples_with_the_inputs_halves():
    """SWD(samples, second half) / SWD(first half, second half): samples cut from the second half
    itself score well below 1, the noise of a barely trained model far above the warning; it is
    deterministic, and None for videos, stacks and inputs whose halves are too small."""
    image = texture_image(64, 96)  # halves of 64x48
    t = CoopTrainer(image, tiny_cfg(), seed=0)
    t.step()
    model, lv = t.model, t.cfg.langevin(t.delta)
    untrained = pipeline.self_check(model, image, 2, lv)
    assert untrained > pipeline.SELF_CHECK_WARN and pipeline.self_check(model, image, 2, lv) == untrained
    half = image[:, :, 48:]

    class Copies:  # a model whose samples are the second half itself
        net = model.net
        device = model.device
        accel = model.accel
        using = model.using

        def sample(self, n, size, **kw):
            return half[None, :, : size[0], : size[1]].expand(n, -1, -1, -1)

    assert pipeline.self_check(Copies(), image, 2, lv) < 0.5  # patch sampling noise alone (0.36)
    assert pipeline.self_check(model, texture_image(54, 54), 2, lv) is None  # halves 54x27: under SELF_CHECK_MIN
    four = CoopTrainer(torch.cat([image, image[:1]]), tiny_cfg(net=tiny_net(channels=4)), seed=0).model
    assert pipeline.self_check(four, torch.cat([image, image[:1]]), 2, lv) is None
    video = CoopTrainer(video_clip(6, 32, 32), tiny_cfg(net=tiny_net(dims=3), crop_frames=4), seed=0).model
    assert pipeline.self_check(video, video_clip(6, 48, 40), 2, lv) is None  # halves 48x20: under SELF_CHECK_MIN


def test_the_self_check_of_a_video_compares_its_frames_with_the_clips_halves(monkeypatch):
    """Videos: halves along the longer side (top and bottom of a tall clip) over the first
    SELF_CHECK_FRAMES frames, samples as long as that and as large as a half, drawn with the
    given refinement and smoothing: the second half's own frames score well below 1, an untrained
    model far above the video warning."""
    clip = video_clip(4, 56, 30)  # tall: halves of 28x30
    t = CoopTrainer(clip, tiny_cfg(net=tiny_net(dims=3), crop_frames=4), seed=0)
    model, lv = t.model, t.cfg.langevin(t.delta)
    assert pipeline.self_check(model, clip, 0, lv, smooth=1.0) > pipeline.SELF_CHECK_WARN_VIDEO
    assert pipeline.self_check_warn("video") == pipeline.SELF_CHECK_WARN_VIDEO
    assert pipeline.self_check_warn("texture") == pipeline.SELF_CHECK_WARN
    asked = []

    class Copies:  # a model whose samples are the clip's bottom half itself
        net = model.net
        device = model.device
        accel = model.accel
        using = model.using

        def sample(self, n, size, **kw):
            asked.append((size, kw["refine"], kw["smooth"]))
            return clip[None, :, : size[0], 28 : 28 + size[1], : size[2]].expand(n, -1, -1, -1, -1)

    assert pipeline.self_check(Copies(), clip, 3, lv, smooth=2.0) < 0.5
    assert asked == [((4, 28, 30), 3, 2.0)]
    monkeypatch.setattr(pipeline, "SELF_CHECK_FRAMES", 3)  # a longer clip: its first frames compared
    asked.clear()
    pipeline.self_check(Copies(), clip, 0, lv)
    assert asked[0][0] == (3, 28, 30)


def test_a_texture_run_reports_its_self_check_and_warns_when_it_is_high(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from coopsynth.cli import app

    write_image(tmp_path / "t.png", texture_image(64, 96))
    args = ["texture", str(tmp_path / "t.png"), "--steps", "2", "--preset", "fast", "--samples", "1"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "warning: the samples look unlike the input (self-check" in r.output  # two iterations: noise
    events = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    check = [e for e in events if e.get("event") == "self_check"]
    assert len(check) == 1 and check[0]["score"] > pipeline.SELF_CHECK_WARN
    assert load_checkpoint(tmp_path / "a" / "model.pt", "texture")["meta"]["self_check"] == check[0]["score"]
    monkeypatch.setattr(pipeline, "self_check", lambda *a, **k: 1.234)
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert r.exit_code == 0 and "self-check: 1.23 (samples against the input" in r.output and "warning" not in r.output
    # a stack of three grey maps has three channels, but its maps were not calibrated: no self-check
    for name in ("height", "rough", "ao"):
        write_image(tmp_path / "mat" / f"{name}.png", texture_image(64, 96)[:1])
    r = CliRunner().invoke(app, ["texture", str(tmp_path / "mat"), "--stack", *args[2:], "-o", str(tmp_path / "c")])
    assert r.exit_code == 0 and "self-check" not in r.output, r.output
    assert "self_check" not in (tmp_path / "c" / "log.jsonl").read_text()


def test_the_maps_of_a_stack_weigh_the_same_whatever_their_channels(tmp_path):
    """pipeline.map_weights: colour 3 + height 1 -> sqrt(4/6) each colour channel, sqrt(2) the
    height, so each map's channels sum to the same squared weight; the trainer standardises each
    channel to its weight, and a stack's run (--stack, or data with maps) trains so."""
    maps = [{"name": "albedo", "channels": 3}, {"name": "height", "channels": 1}]
    w = pipeline.map_weights(maps)
    assert torch.allclose(w, torch.tensor([(2 / 3) ** 0.5] * 3 + [2**0.5]))
    assert torch.isclose((w[:3] ** 2).sum(), w[3:] ** 2)
    assert pipeline.map_weights(maps[:1]) is None and pipeline.map_weights(None) is None
    data = torch.cat([texture_image(), texture_image(seed=1)[:1]])  # (4, 48, 40)
    plain = CoopTrainer(data, tiny_cfg(net=tiny_net(channels=4)), seed=0)
    weighed = CoopTrainer(data, tiny_cfg(net=tiny_net(channels=4)), seed=0, weights=w)
    assert torch.allclose(weighed.model.std, plain.model.std / w)
    assert torch.allclose(weighed.data.flatten(1).std(1), w, rtol=1e-3)  # each channel's spread is its weight
    assert torch.allclose(weighed.model.denormalise(weighed.data[None])[0], data, atol=1e-6)
    job = pipeline.TrainJob(input=tmp_path / "t.png", output=tmp_path / "run", preset="fast", steps=1)
    prep = pipeline.prepare_training(job, data=data, maps=maps)
    assert torch.allclose(prep.trainer.model.std, plain.model.std / w) and prep.meta["maps"] == maps
