"""Semi-supervised learning: the label split, the unlabeled terms of VAT and ER, that the
trainer never reads the labels of unlabeled examples, and what an epoch is.

Every trainer run here is tiny: scikit-learn's digits (1,437 train), an MLP with one hidden
layer of 32 units, a few optimiser steps on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import erat.fit.loop
import erat.train
from erat.config import TrainConfig
from erat.datasets import DataError, labeled_split, load_dataset
from erat.files import load_file
from erat.fit import EpochSampler
from erat.losses import cross_entropy
from erat.methods import Batch, build_method
from erat.train import train

N_TRAIN = 1437  # digits train split
SEMI_METHODS = [("vat", {}), ("vat", {"entmin": True}), ("er", {}), ("er", {"entmin": True})]


@pytest.fixture(scope="module")
def digits_y() -> torch.Tensor:
    return load_dataset("digits", "train").tensors[1]


def _cfg(**kw) -> TrainConfig:
    base = dict(
        dataset="digits",
        model="mlp",
        model_kwargs={"hidden": [32]},
        epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
        seed=0,
    )
    return TrainConfig.from_dict(base | kw)


def _quiet(*_) -> None:
    pass


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "model.pt")["state_dict"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the split ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 20, 25, 100])
def test_labeled_split_is_exact_balanced_and_a_partition(digits_y, n):
    labeled, unlabeled = labeled_split(digits_y, n, seed=0)
    assert len(labeled) == n
    counts = torch.bincount(digits_y[labeled], minlength=10)
    assert int(counts.max() - counts.min()) <= 1  # balanced; the lowest classes get the extra
    assert counts.tolist() == [n // 10 + (c < n % 10) for c in range(10)]
    assert len(set(labeled.tolist()) & set(unlabeled.tolist())) == 0
    assert sorted(labeled.tolist() + unlabeled.tolist()) == list(range(len(digits_y)))
    assert len(set(labeled.tolist())) == n  # no index twice


def test_labeled_split_depends_on_the_seed_only(digits_y):
    a = labeled_split(digits_y, 20, seed=3)
    b = labeled_split(digits_y.clone(), 20, seed=3)
    c = labeled_split(digits_y, 20, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_labeled_split_refuses_impossible_quota(digits_y):
    with pytest.raises(DataError):
        labeled_split(digits_y, len(digits_y) + 1, seed=0)
    with pytest.raises(DataError):  # 3 labels per class, but class 1 has only 2 examples
        labeled_split(torch.tensor([0, 0, 0, 1, 1]), 6, seed=0)


def test_a_split_too_large_to_balance_says_the_largest_that_is():
    from erat.datasets.splits import most_balanced, validation_split

    y = torch.tensor([0] * 5 + [1] * 2 + [2] * 9)
    assert most_balanced(y) == 7  # (3, 2, 2: an eighth gives class 1 a third, lowest first)
    for n in range(1, 8):
        assert len(validation_split(y, n, seed=0)[0]) == n
    with pytest.raises(DataError, match=r"^--val 8: class 1 has 2 examples, fewer than the 3 "
                                        r"a balanced split takes from each; hold out at most 7$"):
        validation_split(y, 8, seed=0)
    with pytest.raises(DataError, match=r"--labels 10: .*; give at most 7$"):
        labeled_split(y, 10, seed=0)


def test_trainer_saves_the_split(tmp_path, digits_y):
    def split_of(name: str, seed: int) -> list[int]:
        out = tmp_path / name
        train(_cfg(method="erm", labels=20, epoch_updates=1, seed=seed), out, log=_quiet)
        saved = json.loads((out / "split.json").read_text())
        assert saved["labels"] == 20 and saved["seed"] == seed
        return saved["labeled"]

    first, again, other = split_of("a", 0), split_of("b", 0), split_of("c", 1)
    assert len(first) == len(set(first)) == 20
    assert torch.bincount(digits_y[first], minlength=10).tolist() == [2] * 10
    assert first == again  # same seed, same split
    assert first != other  # seed + 1, another split
    assert first == labeled_split(digits_y, 20, 0)[0].tolist()


# --- the unlabeled terms of VAT and ER ---------------------------------------------------


def _tiny_model() -> nn.Module:
    """No BatchNorm, no dropout: a labeled example's loss cannot depend on the unlabeled
    ones through batch statistics, so any effect of ``x_unlabeled`` is the unlabeled term."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    xu = torch.rand(12, 1, 8, 8, generator=g)
    xu2 = torch.rand(12, 1, 8, 8, generator=g)
    return x, y, xu, xu2


def _grads(method, model: nn.Module, batch: Batch, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)  # the methods draw random directions
    loss = method(model, batch).loss
    return list(torch.autograd.grad(loss, list(model.parameters())))


def _gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))


def _norm(g: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t**2).sum() for t in g)))


@pytest.mark.parametrize(("name", "params"), SEMI_METHODS)
def test_unlabeled_batch_changes_the_gradient(data, name, params):
    x, y, xu, xu2 = data
    model, method = _tiny_model(), build_method(name, eps=1.0, **params)
    assert method.uses_unlabeled
    with_u = _grads(method, model, Batch(x, y, xu))
    assert _gap(with_u, _grads(method, model, Batch(x, y, xu))) == 0.0  # deterministic
    assert _gap(with_u, _grads(method, model, Batch(x, y, None))) > 1e-4
    assert _gap(with_u, _grads(method, model, Batch(x, y, xu2))) > 1e-4  # other unlabeled data


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("er", {"lam": 0.0}),
        ("er", {"lam": 0.0, "lam_u": 0.0, "entmin": True}),
        ("vat", {"adv_weight": 0.0, "entmin": True}),
    ],
)
def test_unlabeled_term_alone_has_a_gradient(data, name, params):
    """With every labeled regulariser weighted 0 the loss is ``CE(x) + unlabeled term``, so
    subtracting ERM's gradient leaves the unlabeled term's gradient alone."""
    x, y, xu, xu2 = data
    model = _tiny_model()
    ce_only = _grads(build_method("erm"), model, Batch(x, y))
    method = build_method(name, eps=1.0, **params)
    with_u = _grads(method, model, Batch(x, y, xu))
    assert _norm([a - b for a, b in zip(with_u, ce_only, strict=True)]) > 1e-3
    assert _gap(with_u, _grads(method, model, Batch(x, y, xu2))) > 1e-4  # a term of x_u
    if name == "er" and not params.get("entmin"):  # no unlabeled batch: ER is plain CE here
        assert _gap(_grads(method, model, Batch(x, y, None)), ce_only) < 1e-6


@pytest.mark.parametrize(("name", "params"), [("er", {"lam_u": 0.0}), ("vat", {"adv_weight": 0.0})])
def test_controls_without_an_unlabeled_term_ignore_x_unlabeled(data, name, params):
    """The comparison above can fail: with the unlabeled terms off, the same check finds no
    difference (up to float rounding of a larger matmul)."""
    x, y, xu, _ = data
    model, method = _tiny_model(), build_method(name, eps=1.0, **params)
    assert _gap(_grads(method, model, Batch(x, y, xu)), _grads(method, model, Batch(x, y))) < 1e-6


# --- the trainer never reads the labels of unlabeled examples ----------------------------


@pytest.mark.parametrize(("name", "params"), [("vat", {}), ("er", {"entmin": True})])
def test_labels_of_unlabeled_examples_are_never_read(tmp_path, monkeypatch, digits_y, name, params):
    cfg = _cfg(method=name, method_params=params, labels=20, epoch_updates=3,
               unlabeled_batch_size=32)
    x, y = load_dataset("digits", "train").tensors
    labeled, unlabeled = labeled_split(y, 20, cfg.fit.seed)
    logs: list[str] = []
    train(cfg, tmp_path / "true", log=logs.append)
    assert f"semi-supervised: 20 labeled, {N_TRAIN - 20} unlabeled" in logs

    real_load = erat.train.load_dataset
    calls = {"load": 0, "split": 0}

    def run_with(labels: torch.Tensor, folder: str) -> dict[str, torch.Tensor]:
        def load(name_, split, *args, **kwargs):
            if split != "train":
                return real_load(name_, split, *args, **kwargs)
            calls["load"] += 1
            return TensorDataset(x.clone(), labels)

        def split(y_seen, n, seed):  # the split of the true labels, whatever the run sees
            calls["split"] += 1
            return labeled.clone(), unlabeled.clone()

        monkeypatch.setattr(erat.train, "load_dataset", load)
        monkeypatch.setattr(erat.train, "labeled_split", split)
        train(cfg, tmp_path / folder, log=_quiet)
        return _weights(tmp_path / folder)

    corrupt = y.clone()
    corrupt[unlabeled] = -1  # not a class: any use (CE, accuracy, a split) crashes or changes
    assert _same_weights(_weights(tmp_path / "true"), run_with(corrupt, "corrupt"))
    assert calls == {"load": 1, "split": 1}  # the patched loader and split were used

    # The comparison is sensitive: one changed *labeled* label changes the final weights,
    wrong = y.clone()
    wrong[labeled[0]] = (wrong[labeled[0]] + 1) % 10
    assert not _same_weights(_weights(tmp_path / "true"), run_with(wrong, "wrong"))
    # and a -1 reaching the loss would stop the run.
    with pytest.raises((IndexError, RuntimeError)):
        cross_entropy(torch.zeros(1, 10), torch.tensor([-1]))


# --- methods that use no unlabeled data; what an epoch is --------------------------------


class _Recorder:
    """Patches the trainer's EpochSampler and step to record the sampler and every batch."""

    def __init__(self, monkeypatch) -> None:
        self.samplers: list[EpochSampler] = []
        self.batches: list[Batch] = []
        recorder, real_step = self, erat.fit.loop.update

        class Sampler(EpochSampler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                recorder.samplers.append(self)

        def step(model, method, batch, *args, **kwargs):
            recorder.batches.append(batch)
            return real_step(model, method, batch, *args, **kwargs)

        monkeypatch.setattr(erat.fit.loop, "EpochSampler", Sampler)
        monkeypatch.setattr(erat.fit.loop, "update", step)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("erm", {}),
        ("at", {}),
        ("pgd", {"steps": 2}),
        ("trades", {"steps": 2}),
        ("er", {"lam_u": 0.0}),
    ],
)
def test_methods_without_unlabeled_use_train_on_the_labels_alone(
    tmp_path, monkeypatch, digits_y, name, params
):
    rec = _Recorder(monkeypatch)
    logs: list[str] = []
    cfg = _cfg(method=name, method_params=params, labels=20, batch_size=8)
    train(cfg, tmp_path / "run", log=logs.append)

    assert any("uses no unlabeled data" in m and "20 labeled" in m for m in logs)
    assert not any(m.startswith("semi-supervised") for m in logs)
    assert "note: --batch-size 8 is" not in "".join(logs)  # (a batch within the labels: quiet)
    (sampler,) = rec.samplers
    assert (sampler.n_labeled, sampler.n_unlabeled) == (20, N_TRAIN - 20)
    assert not sampler.uses_unlabeled
    # an epoch is a semi-supervised run's, a pass over the unlabeled set: the labels-only
    # baseline made 2 updates an epoch here, a semi-supervised run 172
    assert sampler.updates == (N_TRAIN - 20) // 8
    assert len(rec.batches) == sampler.updates
    x_train = load_dataset("digits", "train").tensors[0].flatten(1)
    x_labeled = x_train[labeled_split(digits_y, 20, cfg.fit.seed)[0]]
    for batch in rec.batches:
        assert batch.x_unlabeled is None and len(batch.x) == 8
        # every input is one of the 20 labeled images (digits has no augmentation)
        assert torch.cdist(batch.x.flatten(1), x_labeled).min(1).values.max() == 0


def test_an_epoch_is_a_pass_over_the_larger_set():
    """Many labels and few unlabeled images: the epoch passes over the labels (it was one
    update an epoch: the unlabeled set's 47 images make no whole batch of 16)."""
    cfg = _cfg(method="vat", labels=1000, batch_size=16)
    assert EpochSampler(cfg.fit, 1000, 47).updates == 1000 // 16
    assert EpochSampler(cfg.fit, 1000, 47, uses_unlabeled=False).updates == 1000 // 16


def test_an_unlabeled_batch_larger_than_the_set_is_counted_as_drawn(tmp_path):
    """An unlabeled batch above the unlabeled set's size drew the whole set, but the cost
    counted the batch asked for (9.0 ERM epochs where the passes made cost 6.2)."""
    cfg = _cfg(method="vat", labels=100, unlabeled_batch_size=2000)
    logs: list[str] = []
    erat.fit.loop._say_clipped(EpochSampler(cfg.fit, 10, 1337), cfg.fit, logs.append)
    assert logs == ["note: --batch-size 16 is more than the 10 labeled examples: batches of 10",
                    "note: --unlabeled-batch-size 2000 is more than the 1337 unlabeled "
                    "examples: batches of 1337"]  # (it drew the whole set without a word)
    sampler = EpochSampler(cfg.fit, 100, 1337)
    assert sampler.unlabeled_batch == 1337 and sampler.updates == 100 // 16
    seen = [len(u) for _, u in sampler.batches(torch.Generator().manual_seed(0))]
    assert seen == [1337] * (100 // 16)


def test_semisupervised_epoch_is_one_pass_over_the_unlabeled_set():
    cfg = _cfg(method="vat", labels=20, batch_size=16, unlabeled_batch_size=64)
    sampler = EpochSampler(cfg.fit, 20, N_TRAIN - 20)
    assert sampler.updates == (N_TRAIN - 20) // 64 == 22
    batches = list(sampler.batches(torch.Generator().manual_seed(0)))
    assert len(batches) == 22
    seen = torch.cat([ui for _, ui in batches])
    assert len(seen) == len(set(seen.tolist())) == 22 * 64  # no unlabeled example twice
    assert int(seen.max()) < N_TRAIN - 20
    for li, ui in batches:  # the 20 labels cycle, reshuffled, in batches of 16
        assert len(li) == 16 and len(ui) == 64 and int(li.max()) < 20
    assert EpochSampler(_cfg(labels=20, batch_size=16).fit, 20, N_TRAIN - 20).updates == 88
    assert EpochSampler(_cfg(labels=20, epoch_updates=5).fit, 20, N_TRAIN - 20).updates == 5
    assert EpochSampler(_cfg(labels=20, batch_size=16).fit, 20, 0).updates == 1  # labels only


def test_trainer_epoch_length_with_unlabeled_data(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    logs: list[str] = []
    train(
        _cfg(method="vat", labels=20, batch_size=8, unlabeled_batch_size=256),
        tmp_path / "run",
        log=logs.append,
    )
    (sampler,) = rec.samplers
    assert (sampler.n_labeled, sampler.n_unlabeled) == (20, N_TRAIN - 20)
    assert sampler.updates == len(rec.batches) == (N_TRAIN - 20) // 256
    assert all(len(b.x) == 8 and len(b.x_unlabeled) == 256 for b in rec.batches)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and json.loads(metrics[0])["epoch"] == 1


# --- defaults that do not collapse, and the guard that says so when a run does -----------
def _semi(tmp_path, name, method, params):
    logs: list[str] = []
    cfg = TrainConfig.from_dict(dict(dataset="digits", model="mlp", model_kwargs={"hidden": [64]},
                                     labels=50, method=method, method_params=params, epochs=5,
                                     epoch_updates=60, batch_size=50, unlabeled_batch_size=100,
                                     lr=0.002, seed=0, progress=False))
    train(cfg, tmp_path / name, log=logs.append)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text()
            .splitlines()]
    return rows, logs


def test_default_semi_supervised_er_does_not_drift_below_the_labels_alone(tmp_path):
    """300 updates, 50 labels: ER at its semi-supervised defaults (lam 0, S 0) ends above
    the supervised-only model and never falls far below its own best."""
    sup, _ = _semi(tmp_path, "sup", "erm", {})
    er, logs = _semi(tmp_path, "er", "er", {"eps": 1.0})
    assert er[-1]["test_acc"] >= sup[-1]["test_acc"] + 0.02
    assert er[-1]["test_acc"] >= max(r["test_acc"] for r in er) - 0.05
    assert not any("guard" in r for r in er) and not any("warning" in m for m in logs)
    assert all(r["unlabeled_max_share"] < 0.2 for r in er)


def test_the_guard_fires_on_a_collapsing_run(tmp_path):
    rows, logs = _semi(tmp_path, "collapse", "er", {"eps": 1.0, "lam_u": 100.0,
                                                   "balance": 0.0, "S": 1})
    assert rows[-1]["unlabeled_max_share"] > 0.3
    assert any("one class" in r.get("guard", "") for r in rows)
    assert any(m.startswith("erat: warning:") and "one class" in m for m in logs)


def test_the_collapse_is_said_only_for_a_method_with_an_unlabeled_term():
    """A labels-alone run given unlabeled data (fit's, from Python) records the share of its
    predictions' largest class, and is not warned of a collapse it has no term to cause."""
    from erat.fit.guard import guard

    one_class = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(one_class[1].weight)
    with torch.no_grad():
        one_class[1].bias[3] = 1.0
    xu, y = torch.rand(40, 1, 8, 8), torch.arange(10).repeat(4)
    for term, says in ((False, None), (True, "fall into one class")):
        row: dict = {}
        warning = guard(one_class, xu, y, row, [], unlabeled_term=term)
        assert row["unlabeled_max_share"] == 1.0 and (warning is None) == (says is None)
        assert says is None or says in warning


def test_a_batch_larger_than_the_labels_is_said(tmp_path):
    logs: list[str] = []
    train(_cfg(method="vat", labels=20, batch_size=32, epoch_updates=1), tmp_path / "run",
          log=logs.append)
    assert "note: --batch-size 32 is more than the 20 labeled examples: batches of 20" in logs


def test_the_guard_reads_the_validation_accuracy():
    from erat.fit.guard import guard as _guard

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    y = torch.arange(20) % 10
    history = [{"val_clean_acc": 0.80}, {"val_clean_acc": 0.85}]
    assert _guard(model, None, y, {"val_clean_acc": 0.83}, history) is None
    warning = _guard(model, None, y, {"val_clean_acc": 0.70}, history)
    assert "validation accuracy fell to 0.700 from its best 0.850" in warning


def test_a_warm_up_at_s_0_is_said_to_do_nothing():
    """--warmup-updates at the semi-supervised default S 0 trained the same weights as
    without it, without a word."""
    from erat.config import idle

    cfg = TrainConfig.from_dict(dict(dataset="digits", labels=50, method="er",
                                     method_params={"eps": 1.0, "warmup_updates": 5}))
    assert any(line.startswith("--warmup-updates has no effect here") for line in
               idle(cfg, {"warmup_updates"}))
    cfg = TrainConfig.from_dict(dict(dataset="digits", labels=50, method="er",
                                     method_params={"eps": 1.0, "S": 1, "warmup_updates": 5}))
    assert idle(cfg, {"warmup_updates"}) == []


def test_er_at_its_semi_supervised_defaults_says_it_is_vat(tmp_path):
    """At T 1, M 1, S 0 and lam 0 ER's loss is VAT's (METHOD.md 3c): a user comparing them
    at the defaults compares VAT with itself, and training says so."""
    logs: list[str] = []
    train(_cfg(method="er", method_params={"eps": 1.0}, labels=20, epoch_updates=1),
          tmp_path / "a", log=logs.append)
    assert any("ER's loss is VAT's" in m for m in logs)
    logs.clear()
    train(_cfg(method="er", method_params={"eps": 1.0, "S": 1}, labels=20, epoch_updates=1),
          tmp_path / "b", log=logs.append)
    assert not any("VAT's" in m for m in logs)


def test_eval_and_report_say_a_run_was_semi_supervised(tmp_path, capsys):
    from erat.cli import main

    run = tmp_path / "semi"
    train(_cfg(method="vat", method_params={"eps": 1.0}, labels=20, epoch_updates=1), run,
          log=lambda _: None)
    assert main(["eval", str(run), "--n", "8", "--steps", "1", "--no-checks", "--json",
                 str(run / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "trained semi-supervised on 20 labels" in out and "(1 restart, each" in out
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "| run | method | trained at | labels | clean |" in capsys.readouterr().out


def test_a_run_planned_with_other_epochs_is_not_resumed(tmp_path, capsys):
    """A labels-only run started before the epoch became the unlabeled set's made one update
    per epoch; resumed, it mixed both schedules (10 updates recorded as 20)."""
    import json

    from erat.errors import UserError

    run = tmp_path / "run"
    cfg = _cfg(method="erm", labels=20, epochs=3)
    train(cfg, run, stop_after=1, log=lambda _: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[0]["updates"] = 1  # (as the earlier erat made it)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"--resume: the run made 1 updates in its first 1 "
                                        r"epoch\(s\), and this erat plans"):
        train(cfg, run, resume=True, log=lambda _: None)


def test_a_finished_run_of_other_epochs_is_not_reused(tmp_path):
    """A finished labels-only run of an erat before the epoch became the unlabeled set's
    (its rows lack ``epoch_updates``) is refused by ``--resume`` and by a suite, not reused
    under-trained."""
    from erat.errors import UserError
    from erat.reproduce import run_one
    from erat.rundir import RunDir

    run = tmp_path / "run"
    cfg = _cfg(method="erm", labels=20, epochs=1)
    train(cfg, run, log=_quiet)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("epoch_updates" in r for r in rows)  # (this erat's rows: reused)
    run_one({}, {"name": "run", "eval": False}, cfg, RunDir(run), _quiet)
    for r in rows:
        del r["epoch_updates"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_one({}, {"name": "run", "eval": False}, cfg, RunDir(run), _quiet)  # (its first epoch
    # made a pass over the unlabeled set: an erat of the same day, before rows said so)
    for r in rows:
        r["updates"] = r["epoch"]  # (one update an epoch: a pass over 20 labels in 16s)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = r"run was trained by an older erat whose labels-only epochs were one pass"
    with pytest.raises(UserError, match=message):
        train(cfg, run, resume=True, log=_quiet)
    with pytest.raises(UserError, match=message):
        run_one({}, {"name": "run"}, cfg, RunDir(run), _quiet)
    from erat.reproduce import NotReady

    with pytest.raises(NotReady, match="trained by an older erat"):  # (a report: left out)
        run_one({}, {"name": "run"}, cfg, RunDir(run), _quiet, report_only=True)
    semi = _cfg(method="vat", labels=20, epochs=1)  # (a method reading the unlabeled set)
    train(semi, tmp_path / "semi", log=_quiet)
    rows = [json.loads(line) for line in (tmp_path / "semi/metrics.jsonl").read_text().splitlines()]
    for r in rows:
        del r["epoch_updates"]
    (tmp_path / "semi/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(semi, tmp_path / "semi", resume=True, log=_quiet)


def test_eval_says_a_labels_only_run_is_not_semi_supervised(tmp_path, capsys):
    from erat.cli import main

    run = tmp_path / "sup"
    train(_cfg(method="erm", labels=20, epoch_updates=1), run, log=lambda _: None)
    assert main(["eval", str(run), "--n", "8", "--steps", "1", "--no-checks"]) == 0
    assert "trained on 20 labels alone (its method reads no unlabeled data)" in \
        capsys.readouterr().out
