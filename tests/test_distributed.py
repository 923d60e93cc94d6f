"""Multi-process training on the CPU (gloo, 2 processes) equals one process, same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from erat.config import TrainConfig
from erat.distributed import close
from erat.train import train

CFG = dict(
    dataset="digits",
    model="cnn",
    method="erm",
    epochs=2,
    batch_size=64,
    epoch_updates=4,
    optimizer="sgd",
    lr=0.05,
    progress=False,
    seed=5,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        train(TrainConfig.from_dict(CFG), out, log=lambda *_: None)
    finally:
        close()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = train(TrainConfig.from_dict(CFG), tmp_path / "single", log=lambda *_: None)
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    a = torch.load(single, weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # one set of files: one metrics line per epoch, no stray temporary files
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


def test_shards_partition_the_global_batch():
    from erat.distributed import Dist, shard

    index = torch.arange(10)
    parts = [shard(index, Dist(rank=r, world_size=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert torch.equal(shard(index, Dist()), index)
