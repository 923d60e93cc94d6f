"""The catastrophic-overfitting guard (Wong et al. 2020): FGSM accuracy beside the validation
PGD accuracy, the epoch flagged when PGD collapses while FGSM holds, the warning, and the
flag shown by ``erat report`` and suites."""

from __future__ import annotations

import json

import torch
from torch import nn

import erat.fit.loop
from erat.cli import main
from erat.config import TrainConfig
from erat.evaluate import evaluate
from erat.fit.guard import catastrophic, guard, overfitting_epoch, stuck
from erat.train import train


def _rows(pairs):
    return [{"epoch": i + 1, "val_robust_acc": p, "val_fgsm_acc": f}
            for i, (p, f) in enumerate(pairs)]


def test_collapse_while_fgsm_holds_is_flagged():
    history = _rows([(0.30, 0.45), (0.34, 0.50)])
    assert catastrophic({"val_robust_acc": 0.33, "val_fgsm_acc": 0.52}, history) is None
    assert "catastrophic" in catastrophic({"val_robust_acc": 0.02, "val_fgsm_acc": 0.80},
                                          history)
    # PGD and FGSM falling together is ordinary overfitting or divergence, not this
    assert catastrophic({"val_robust_acc": 0.02, "val_fgsm_acc": 0.05}, history) is None
    # no validation PGD (no eps) or a first epoch: nothing to compare
    assert catastrophic({"val_clean_acc": 0.9}, history) is None
    assert catastrophic({"val_robust_acc": 0.0, "val_fgsm_acc": 0.9}, []) is None
    assert overfitting_epoch([{"epoch": 1}, {"epoch": 2, "catastrophic_overfitting": True},
                              {"epoch": 3, "catastrophic_overfitting": True}]) == 2


def test_erm_is_not_flagged():
    """ERM trains on no perturbed input: its validation PGD accuracy falling while FGSM's holds
    is ordinary non-robust training (a suite flagged ERM with val_eps 1.0)."""
    history, row = _rows([(0.26, 0.45), (0.25, 0.50)]), {"val_robust_acc": 0.1,
                                                        "val_fgsm_acc": 0.5}
    y = torch.arange(10)
    assert "catastrophic" in guard(nn.Identity(), None, y, dict(row), history)
    assert guard(nn.Identity(), None, y, dict(row), history, perturbed=False) is None


def test_a_model_at_chance_is_flagged_once():
    at = [{"epoch": i + 1, "val_clean_acc": 0.10} for i in range(3)]
    assert not stuck(at[1], at[:1], 0.1)  # two epochs are not yet evidence
    assert stuck(at[2], at[:2], 0.1)
    assert not stuck({"epoch": 4, "val_clean_acc": 0.1}, at, 0.1)  # said once
    assert not stuck({"epoch": 3, "val_clean_acc": 0.25}, at[:2], 0.1)  # learning
    assert not stuck({"epoch": 3}, at[:2], 0.1)  # no validation set


def test_fgsm_is_one_full_step_and_weaker_than_pgd():
    import erat

    xt, yt = erat.load_dataset("digits", "test").tensors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    weak = evaluate(model, xt[:100], yt[:100], attacks="fgsm", eps=[0.5], sanity_n=0)
    strong = evaluate(model, xt[:100], yt[:100], attacks="pgd", eps=[0.5], steps=10,
                      sanity_n=0)
    assert weak["robust_acc"]["fgsm-l2-eps0.5"] >= strong["robust_acc"]["pgd-l2-eps0.5"]
    assert weak["robust_acc"]["fgsm-l2-eps0.5"] <= weak["clean_acc"]


def test_the_trainer_flags_the_epoch_and_report_shows_it(tmp_path, monkeypatch, capsys):
    scores = iter([(0.30, 0.40), (0.35, 0.45), (0.01, 0.90)])  # PGD, FGSM of epochs 1-3

    def fake(*_a, **_k):
        pgd, fgsm = next(scores)
        return {"val_clean_acc": 0.9, "val_robust_acc": pgd, "val_fgsm_acc": fgsm}

    monkeypatch.setattr(erat.fit.loop, "validate", fake)
    logs: list[str] = []
    cfg = TrainConfig.from_dict(dict(dataset="digits", model_kwargs={"hidden": [16]}, epochs=3,
                                     val=100, method="fast-at", method_params={"eps": 0.1},
                                     select="best-robust", epoch_updates=2, progress=False))
    run = tmp_path / "run"
    train(cfg, run, log=logs.append)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("catastrophic_overfitting", False) for r in rows] == [False, False, True]
    assert any(m.startswith("erat: warning: catastrophic overfitting") for m in logs)
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    assert meta["selected_epoch"] == 2  # the best robust epoch, before the collapse
    assert main(["eval", str(run), "--n", "20", "--steps", "2", "--no-checks",
                 "--json", str(run / "eval.json")]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "results.csv").read_text()
    assert "catastrophic_overfitting_epoch" in table.splitlines()[0]
    assert table.splitlines()[1].endswith(",3") or ",3," in table.splitlines()[1]
    capsys.readouterr()
