"""Data-parallel training with 2 gloo processes matches one process with the same total batch."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from coopsynth import pipeline
from tests.conftest import texture_image, tiny_net

STEPS = 4


def _job(out, batch, shards=1):
    return pipeline.TrainJob(
        input=out / "in.png",
        output=out,
        steps=STEPS,
        seed=3,
        device="cpu",
        force=True,
        shards=shards,
        overrides=dict(net=tiny_net(), crop=16, batch=batch, langevin_steps=2),
    )


def _worker(rank: int, world: int, store: str, out: str) -> None:
    """One process as torchrun starts it (its rank in the environment), joined through a file
    rather than a TCP port: a free port picked beforehand can be taken by the time rank 0 binds it.
    `distributed.init` then finds the group already joined, as it would a second time."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from coopsynth import distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        pipeline.train(_job(Path(out), batch=2), data=texture_image(40, 48))
    finally:
        distributed.shutdown()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_match_one_process_with_same_total_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert ddp["meta"]["world_size"] == 2 and len(ddp["rng_ranks"]) == 2

    single = pipeline.train(_job(tmp_path / "one", batch=4, shards=2), data=texture_image(40, 48))
    one = torch.load(single["checkpoint"], weights_only=True)
    assert one["step"] == ddp["step"] == STEPS
    for net in ("descriptor", "generator"):
        for k in one[net]:
            torch.testing.assert_close(ddp[net][k], one[net][k], rtol=1e-4, atol=1e-5, msg=f"{net}.{k}")


def test_shards_change_the_draws_but_not_the_shapes(tmp_path):
    a = pipeline.train(_job(tmp_path / "a", batch=4, shards=1), data=texture_image(40, 48))["trainer"]
    b = pipeline.train(_job(tmp_path / "b", batch=4, shards=2), data=texture_image(40, 48))["trainer"]
    wa = next(a.model.generator.parameters())
    wb = next(b.model.generator.parameters())
    assert wa.shape == wb.shape and not torch.equal(wa, wb)
