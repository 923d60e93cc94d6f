"""The trainer: run folder contents, portable checkpoints, exact resume, semi-supervised split."""

from __future__ import annotations

import json

import pytest
import torch

import erat
from erat.config import TrainConfig
from erat.files import tensor_sha256
from erat.train import train

FAST = dict(
    dataset="digits",
    model="mlp",
    model_kwargs={"hidden": [64, 32]},
    epochs=4,
    batch_size=64,
    epoch_updates=5,
    progress=False,
    seed=3,
)


def quiet(*_: object) -> None:
    pass


def test_run_folder_and_portable_model(tmp_path):
    cfg = TrainConfig.from_dict({**FAST, "epochs": 2, "keep_checkpoint": True})
    path = train(cfg, tmp_path / "run", log=quiet)
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "model.pt"} <= {
        p.name for p in run.iterdir()
    }
    train(TrainConfig.from_dict({**FAST, "epochs": 1}), tmp_path / "lean", log=quiet)
    assert {p.name for p in (tmp_path / "lean").iterdir()} == {
        "config.yaml", "metrics.jsonl", "split.json", "model.pt"}  # no checkpoint.pt unless kept
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["test_acc"] <= 1 and r["seconds"] > 0 for r in rows)
    blob = torch.load(path, weights_only=True)
    assert blob["meta"]["method"]["name"] == "erm" and blob["meta"]["dataset"] == "digits"
    torch.load(run / "checkpoint.pt", weights_only=True)
    model = erat.load_model(run)
    assert not model.training
    x, y = erat.load_dataset("digits", split="test").tensors
    assert model(x[:5]).shape == (5, 10)


def test_resume_gives_the_same_weights(tmp_path):
    cfg = TrainConfig.from_dict(FAST)
    full = train(cfg, tmp_path / "full", log=quiet)
    train(cfg, tmp_path / "part", stop_after=2, log=quiet)
    assert not (tmp_path / "part" / "model.pt").exists()
    resumed = train(cfg, tmp_path / "part", resume=True, log=quiet)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # the file's bytes differ (train_seconds); the weights' hash is how to compare two runs
    assert a["meta"]["state_dict_sha256"] == b["meta"]["state_dict_sha256"]
    assert a["meta"]["state_dict_sha256"] == tensor_sha256(list(a["state_dict"].values()))
    other = train(TrainConfig.from_dict({**FAST, "seed": 4}), tmp_path / "other", log=quiet)
    assert torch.load(other, weights_only=True)["meta"]["state_dict_sha256"] != \
        a["meta"]["state_dict_sha256"]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_batches_carry_the_update_count_across_epochs_and_resume(tmp_path, monkeypatch):
    """``Batch.updates`` (what ER's warm-up reads) counts updates from 0, also after a resume."""
    from erat.methods.er import ER

    seen: list[int | None] = []
    call = ER.__call__
    monkeypatch.setattr(ER, "__call__",
                        lambda self, m, b: seen.append(b.updates) or call(self, m, b))
    cfg = TrainConfig.from_dict({**FAST, "epochs": 2, "method": "er",
                                 "method_params": {"eps": 0.5, "S": 0}})
    train(cfg, tmp_path / "run", stop_after=1, log=quiet)
    train(cfg, tmp_path / "run", resume=True, log=quiet)
    assert seen == list(range(10))


def test_model_file_records_how_the_run_was_trained(tmp_path):
    """config.yaml keeps the flags (``fast: auto``); what they came to on this machine (the
    device, processes, threads, precision, a compiled step) was nowhere."""
    path = train(TrainConfig.from_dict({**FAST, "epochs": 1, "device": "cpu"}),
                 tmp_path / "run", log=quiet)
    ran = torch.load(path, weights_only=True)["meta"]["ran"]
    assert ran == {"device": "cpu", "processes": 1, "threads": torch.get_num_threads(),
                   "amp": "none", "channels_last": False, "fast_path": False,
                   "compiled": False, "method_defaults": {}}


def test_model_file_records_the_values_of_ers_mode_dependent_defaults(tmp_path):
    """ER's ``S``, ``lam`` and warm-up default by mode (supervised or not): the record kept
    None, not what the run used."""
    sup = train(TrainConfig.from_dict({**FAST, "epochs": 1, "method": "er",
                                       "method_params": {"eps": 0.5, "lam": 0.5}}),
                tmp_path / "sup", log=quiet)
    assert torch.load(sup, weights_only=True)["meta"]["ran"]["method_defaults"] == \
        {"S": 1, "warmup_updates": 0}
    semi = train(TrainConfig.from_dict({**FAST, "epochs": 1, "method": "er", "labels": 50,
                                        "method_params": {"eps": 0.5, "S": 1}}),
                 tmp_path / "semi", log=quiet)
    meta = torch.load(semi, weights_only=True)["meta"]
    assert meta["method"]["S"] == 1 and meta["method"]["lam"] is None
    assert meta["ran"]["method_defaults"] == {"lam": 0.0,
                                              "warmup_updates": int(0.2 * meta["updates"])}


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = TrainConfig.from_dict({**FAST, "epochs": 1})
    train(cfg, tmp_path / "run", log=quiet)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, tmp_path / "run", log=quiet)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"optimizer": "rmsprop"}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig.from_dict({**FAST, **bad})


def test_a_huge_epochs_starts_its_first_epoch_at_once(tmp_path):
    """A run's length costs nothing up front (costs are counted as the updates happen):
    --epochs 10**9 reaches the end of its first epoch quickly and in little memory."""
    import time
    import tracemalloc

    settings = {**FAST, "method": "er", "method_params": {"eps": 0.5, "S": 0}}
    train(TrainConfig.from_dict({**settings, "epochs": 1}), tmp_path / "warm", log=quiet)
    cfg = TrainConfig.from_dict({**settings, "epochs": 10**9})  # 5 * 10**9 updates
    tracemalloc.start()  # (after the warm-up: imports are not the run's)
    t0 = time.perf_counter()
    try:
        train(cfg, tmp_path / "run", stop_after=1, log=quiet)
        seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 15 and peak < 20e6, (seconds, peak)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["cost"] > 0


def test_mixed_precision_on_the_cpu_is_said_to_be_slow(tmp_path):
    """--amp on the CPU runs, and says that it is usually slower there than float32; the
    epoch line gives the cost with its unit."""
    lines: list[str] = []
    train(TrainConfig.from_dict({**FAST, "epochs": 1, "amp": "bf16", "method": "er"}),
          tmp_path / "run", log=lines.append)
    assert sum("--amp bf16 on the CPU is usually slower" in line for line in lines) == 1, lines
    assert any(line.endswith(" ERM epochs") for line in lines if line.startswith("epoch 1/1"))


def test_validation_measures_images_of_every_class_of_a_set_stored_class_by_class():
    """Your own data's held-out images come class by class: the first 10 of 40 were all of
    the first class, and the choice of epoch read that class alone."""
    from torch import nn

    from erat.fit import FitOptions
    from erat.fit.validate import measured, validate

    y = torch.arange(4).repeat_interleave(10)
    idx = measured(len(y), 10)
    assert len(idx) == 10 and idx.tolist() == sorted(idx.tolist())
    assert len(torch.unique(y[idx])) >= 3 and torch.equal(idx, measured(len(y), 10))
    assert measured(len(y), 40) == slice(None) and measured(len(y), 1000) == slice(None)
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            seen.append(x[:, 0, 0, 0].clone())
            return self.w.expand(len(x), 4)

    x = torch.arange(40.0).div(40).reshape(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    validate(Spy(), (x, y), FitOptions(val_n=10), None, torch.device("cpu"))
    assert torch.equal(seen[0], x[idx, 0, 0, 0])


def test_fit_resumes_only_the_run_its_checkpoint_was_trained_as(tmp_path):
    """``fit(resume=True)`` took any checkpoint: another method, radius, learning rate or
    data trained on from it without a word (another optimiser failed inside torch); a
    ``run_dir`` given as a path failed after the first epoch."""
    from torch import nn

    from erat.errors import UserError
    from erat.fit import FitData, FitOptions, fit
    from erat.methods import build_method

    x, y = erat.load_dataset("digits", "train").tensors
    x, y = x[:256], y[:256]

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def run(method, data, options, **kw):
        return fit(net(), method, data, options, str(tmp_path / "run"), log=quiet, **kw)

    er, opts = build_method("er", eps=1.0), FitOptions(epochs=3, epoch_updates=2, progress=False)
    run(er, FitData(x, y), opts, stop_after=1)  # (run_dir as a str)
    for method, data, options, says in [
        (build_method("pgd", eps=0.3), FitData(x, y), opts, "method.name 'pgd' (run: 'er')"),
        (build_method("er", eps=0.5), FitData(x, y), opts, "method.eps 0.5 (run: 1.0)"),
        (er, FitData(1 - x, y), opts, "the training data"),
        (er, FitData(x, y), FitOptions(epochs=3, epoch_updates=2, optimizer="sgd",
                                       progress=False), "options.optimizer 'sgd' (run: 'adam')"),
    ]:
        with pytest.raises(UserError, match="was trained with other settings") as err:
            run(method, data, options, resume=True)
        assert says in str(err.value)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del saved["settings"]["options"]["val_n"]  # (a setting a later erat added: not compared)
    torch.save(saved, tmp_path / "run" / "checkpoint.pt")
    result = run(er, FitData(x, y), FitOptions(epochs=3, epoch_updates=2, progress=False,
                                               compile=False), resume=True)
    assert result.last_epoch == 3 and len(result.history) == 3  # (how it runs may change)
    with pytest.raises(UserError, match="resume=True continues a run_dir's checkpoint"):
        fit(net(), er, FitData(x, y), opts, resume=True, log=quiet)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl, checkpoint.pt"):
        run(build_method("pgd", eps=0.3), FitData(x, y), opts)  # (a new run, not resumed)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before  # (nothing replaced)
    # a method built without the registry (a NumPy radius), and one that is no dataclass
    import numpy as np

    from erat.methods.pgd import PGD

    class Plain:
        uses_unlabeled = False

        def __call__(self, model, batch):
            return build_method("erm")(model, batch)

    for i, method in enumerate([PGD(eps=np.float32(0.5)), Plain()]):
        folder = tmp_path / f"own{i}"
        fit(net(), method, FitData(x, y), opts, folder, stop_after=1, log=quiet)
        assert fit(net(), method, FitData(x, y), opts, folder, resume=True,
                   log=quiet).last_epoch == 3


def test_inputs_the_model_cannot_take_are_one_error_naming_them():
    """float64 images, a channel count the model does not take, a validation set shaped
    otherwise, NaN: each was a torch traceback from inside the model, or a puzzling range;
    a model that casts its input itself, or fails on its own, is left as it is."""
    from torch import nn

    from erat.errors import UserError
    from erat.evaluate import evaluate
    from erat.fit import FitData, FitOptions, fit
    from erat.methods import build_method

    x, y = erat.load_dataset("digits", "train").tensors
    x, y = x[:64], y[:64]
    er, opts = build_method("er", eps=1.0), FitOptions(epochs=1, epoch_updates=1, progress=False)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    conv(x[:1])
    with pytest.raises(UserError, match=r"the model cannot take FitData.x \(torch.float64 "
                                        r"images .*; pass FitData.x.to\(torch.float32\)"):
        fit(conv, er, FitData(x.double(), y), opts, log=quiet)
    with pytest.raises(UserError, match=r"the model cannot take FitData.x \(torch.float32 "
                                        r"images of shape \(3, 8, 8\)\): Given groups=1"):
        fit(conv, er, FitData(x.repeat(1, 3, 1, 1), y), opts, log=quiet)
    with pytest.raises(UserError, match=r"the model cannot take x"):
        evaluate(conv, x.repeat(1, 3, 1, 1), y, eps=[0.5], steps=1, sanity_n=0)
    with pytest.raises(ValueError, match=r"FitData.val\[0\]'s images \(64,\) are not shaped "
                                         r"as FitData.x's \(1, 8, 8\)"):
        FitData(x, y, val=(x.flatten(1), y))
    class Casting(nn.Module):  # (its parameters bf16, it takes float32 images)
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(torch.bfloat16)

        def forward(self, x):
            return self.net(x.to(torch.bfloat16)).float()

    assert evaluate(Casting(), x[:8], y[:8], eps=[0.5], steps=1, sanity_n=0)["clean_acc"] >= 0

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("my own bug")

    with pytest.raises(RuntimeError, match="my own bug") as err:
        evaluate(Broken(), x[:8], y[:8], eps=[0.5], steps=1, sanity_n=0)
    assert not isinstance(err.value, UserError)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"FitData.x holds NaN \(1 entries\)"):
        FitData(nan, y)
