"""Data-parallel training with 2 gloo processes matches one process with the same total batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from coopsynth import pipeline
from tests.conftest import texture_image, tiny_net

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from coopsynth import distributed

    try:
        pipeline.train(_job(Path(out), batch=2), data=texture_image(40, 48))
    finally:
        distributed.shutdown()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_match_one_process_with_same_total_batch(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
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
