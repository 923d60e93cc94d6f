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


def _spawned(rank: int, world: int, port: int, out: str, cfg: dict, stop_after, resume: bool,
             report: str) -> None:
    """A rank of ``train``: writes what it raised (or ``ok``) and its buffers to ``report``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import erat.fit.loop

    seen = []  # the model each rank trained, to compare their BatchNorm statistics
    real = erat.fit.loop.Loop.result

    def result(self):
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()
                     if "running" in k})
        return real(self)

    erat.fit.loop.Loop.result = result
    try:
        train(TrainConfig.from_dict(cfg), out, stop_after=stop_after, resume=resume,
              log=lambda *_: None)
        said = "ok"
    except Exception as e:  # (the test reads each rank's outcome)
        said = f"{type(e).__name__}: {e}"
    finally:
        close(wait_for_all=False)
    torch.save({"said": said, "buffers": seen[0] if seen else {}}, f"{report}.{rank}")


def _two(tmp_path, out, cfg, stop_after=None, resume=False):
    report = str(tmp_path / "report")
    mp.spawn(_spawned, args=(2, _free_port(), str(out), cfg, stop_after, resume, report),
             nprocs=2, join=True)
    return [torch.load(f"{report}.{r}", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_a_resumed_two_process_run_ends_as_the_uninterrupted_one(tmp_path):
    """Each rank reseeded its searches once, at the start: a run resumed after epoch 1 drew
    other random starts than the same run uninterrupted (ER). Now reseeded per epoch."""
    cfg = {**CFG, "method": "er", "method_params": {"eps": 1.0}}
    assert [r["said"] for r in _two(tmp_path, tmp_path / "whole", cfg)] == ["ok", "ok"]
    _two(tmp_path, tmp_path / "parts", cfg, stop_after=1)
    assert [r["said"] for r in _two(tmp_path, tmp_path / "parts", cfg, resume=True)] == \
        ["ok", "ok"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "parts" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ranks_share_batchnorm_statistics_and_a_refusal(tmp_path):
    """BatchNorm's running statistics drifted apart between ranks (each its own shards'); now
    rank 0's after every update, as DDP does. A refusal that only rank 0 checks (a resume
    with other settings) ended rank 1 with a broken connection; now with one line."""
    cfg = {**CFG, "model": "mlp", "method": "pgd", "method_params": {"eps": 1.0},
           "model_kwargs": {"hidden": [16]}}
    ranks = _two(tmp_path, tmp_path / "run", cfg)
    assert [r["said"] for r in ranks] == ["ok", "ok"] and ranks[0]["buffers"]
    assert all(torch.equal(ranks[0]["buffers"][k], ranks[1]["buffers"][k])
               for k in ranks[0]["buffers"])
    ranks = _two(tmp_path, tmp_path / "run", {**cfg, "seed": 9}, resume=True)
    assert ranks[0]["said"].startswith("UserError: --resume: settings differ")
    assert ranks[1]["said"].startswith("UserError: rank 0 refused the run")


def test_batches_that_do_not_divide_among_the_processes_are_refused():
    """Only --batch-size was checked: 15 labels (a labeled batch of 15) or an unlabeled
    batch of 101 split 8/7 and 51/50, and the shards' gradients were averaged as equals."""
    from erat.distributed import Dist
    from erat.errors import UserError
    from erat.fit.loop import _check_shards
    from erat.fit.options import FitOptions
    from erat.fit.sampler import EpochSampler

    two = Dist(rank=0, world_size=2)
    _check_shards(EpochSampler(FitOptions(batch_size=64), 1000, 0), two)
    with pytest.raises(UserError, match=r"--batch-size: a batch of 15 \(the 15 labels"):
        _check_shards(EpochSampler(FitOptions(batch_size=64), 15, 0), two)
    with pytest.raises(UserError, match="--unlabeled-batch-size: a batch of 101"):
        _check_shards(EpochSampler(FitOptions(batch_size=64, unlabeled_batch_size=101),
                                   100, 5000), two)
    _check_shards(EpochSampler(FitOptions(batch_size=64, unlabeled_batch_size=101), 100,
                               5000, uses_unlabeled=False), two)  # (not read: not split)


def test_devices_that_are_not_there_and_sync_bn_on_the_cpu(tmp_path, monkeypatch):
    """--device mps without an Apple GPU was a traceback when training began (and erat eval
    blamed the model file); cpu:1 was taken as cpu; --sync-bn under torchrun on the CPU
    failed in SyncBatchNorm's first forward, on every rank."""
    from erat.distributed import resolve_device
    from erat.errors import EnvironmentProblem, UserError

    if not torch.backends.mps.is_available():
        with pytest.raises(EnvironmentProblem, match="no Apple GPU"):
            resolve_device("mps")
    with pytest.raises(UserError, match="takes no index"):
        resolve_device("cpu:1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        train(TrainConfig.from_dict({**CFG, "sync_bn": True, "device": "cpu"}),
              tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def _fit_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from erat.distributed import setup

    try:
        state = _fit_augmented(setup(torch.device("cpu")))
        if rank == 0:
            torch.save(state, out)
    finally:
        close()


def _fit_augmented(dist=None) -> dict:
    """A small CNN trained 4 updates on digits with crops and flips (the CIFAR recipe)."""
    from erat.datasets import load_dataset
    from erat.fit import FitData, FitOptions, fit
    from erat.methods import build_method
    from erat.models import build_model

    x, y = load_dataset("digits", "train").tensors
    torch.manual_seed(5)
    model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.3,))
    options = FitOptions(epochs=1, epoch_updates=4, batch_size=64, optimizer="sgd", lr=0.05,
                         seed=5, progress=False)
    fit(model, build_method("erm"), FitData(x, y, augment="crop-flip"), options,
        log=lambda *_: None, **({"dist": dist} if dist is not None else {}))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_two_processes_augment_each_image_as_one_process_does(tmp_path):
    """Each rank drew the crops and flips of its own shard from the shared generator, so the
    k-th image of every rank got the same ones, and the run was not one process's."""
    single = _fit_augmented()
    mp.spawn(_fit_worker, args=(2, _free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for k in single:
        assert torch.allclose(single[k], ddp[k], atol=1e-5, rtol=1e-4), k
