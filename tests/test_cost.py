"""Training cost as a first-class number: each method's counted passes match the passes it
really makes, ``budget`` gives the expected number of updates, validation never overlaps
training, and ``select="best-robust"`` keeps the right epoch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from erat.config import TrainConfig
from erat.fit import FitData, FitOptions, fit
from erat.methods import Batch, build_method, method_names
from erat.train import train

FAST = {"eps": 0.5, "steps": 2}


class Counter:
    """Rows through the model: forwards (hook on the model) and backwards (hook on the last
    layer, one call per backward through a forward's graph)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.backward = 0
        model.register_forward_hook(lambda m, i, o: self._fwd(o))
        model[-1].register_full_backward_hook(lambda m, gi, go: self._bwd(go))

    def _fwd(self, out: torch.Tensor) -> None:
        self.forward += out.shape[0]

    def _bwd(self, grad_out: tuple) -> None:
        self.backward += grad_out[0].shape[0]

    @property
    def passes(self) -> int:
        return self.forward + 2 * self.backward


def tiny(dropout: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(64, 32), nn.Tanh()]
    return nn.Sequential(*layers, *([nn.Dropout(0.2)] if dropout else []), nn.Linear(32, 10))


def batch(n: int = 8, nu: int = 0, updates: int | None = None, total: int | None = None):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    xu = torch.rand(nu, 1, 8, 8, generator=g) if nu else None
    return Batch(x, torch.randint(0, 10, (n,), generator=g), xu, updates, total)


PARAMS = {"erm": {}, "at": {}, "vat": {}, "pgd": {"steps": 3}, "trades": {"steps": 3},
          "er": {}, "fast-at": {"eps": 0.1}}
LINF = {"norm": "linf", "eps": 0.1}
CASES = [(m, p) for m, p in PARAMS.items()] + [
    ("er", {"S": 3, "T": 2, "M": 2}), ("er", {"S": 0}), ("er", {"lam": 0.5, "lam_u": 1.0}),
    ("vat", {"power_iters": 2}),
    # the l-inf variants (METHOD.md 3d): the norm changes no pass
    ("at", LINF), ("vat", LINF), ("pgd", {**LINF, "steps": 2}), ("trades", {**LINF, "steps": 2}),
    ("er", {**LINF, "S": 2, "T": 2, "M": 2}), ("er", {**LINF, "S": 0, "lam_u": 1.0}),
    ("fast-at", {"eps": 0.1, "step_size": 0.05})]


@pytest.mark.parametrize("name, params", CASES)
@pytest.mark.parametrize("unlabeled", [0, 12])
@pytest.mark.parametrize("dropout", [False, True])
def test_counted_cost_matches_the_passes_made(name, params, unlabeled, dropout):
    model = tiny(dropout).train()
    method = build_method(name, **{"eps": 0.5, **params} if name != "erm" else params)
    b = batch(8, unlabeled)
    counter = Counter(model)
    method(model, b).loss.backward()
    assert counter.passes == method.cost(b, model), (counter.forward, counter.backward)


def test_the_norm_changes_no_pass():
    """l-inf variants count what their l2 twins count (the gradient estimator's double
    backward too, which the hooks above cannot see: METHOD.md 3b's convention)."""
    model, b = tiny().train(), batch(8, 12)
    for name, params in [("at", {}), ("vat", {}), ("pgd", {"steps": 3}),
                         ("er", {"S": 2, "M": 2}), ("er", {"estimator": "gradient"})]:
        l2 = build_method(name, eps=0.5, **params).cost(b, model)
        assert build_method(name, **LINF, **params).cost(b, model) == l2, name
    fast = build_method("fast-at", eps=0.1).cost(b, model)
    assert fast == build_method("pgd", **LINF, steps=1).cost(b, model) == 7 * 8


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("dropout", [False, True])
def test_every_registered_method_counts_its_cost(name, dropout):
    """A method registered without a case here is counted at its defaults (an l-inf default
    radius of 0.1), on a model with dropout too (a newcomer's method had no case there)."""
    params = PARAMS.get(name, {})
    method = build_method(name, **params)
    if getattr(method, "norm", "l2") == "linf" and "eps" not in params:
        method = build_method(name, **params, eps=0.1)
    model, b = tiny(dropout).train(), batch(8, 16)
    counter = Counter(model)
    method(model, b).loss.backward()
    assert method.cost(b, model) == counter.passes, name


def test_warm_up_costs_are_counted_per_update():
    model, er = tiny().train(), build_method("er", eps=0.5, S=2, warmup_updates=3)
    assert er.cost(batch(8, 0, 0), model) < er.cost(batch(8, 0, 5), model)
    counter = Counter(model)
    er(model, batch(8, 0, 0)).loss.backward()
    assert counter.passes == er.cost(batch(8, 0, 0), model)


@pytest.mark.parametrize("name, per_example", [("erm", 3), ("at", 9), ("pgd", 13)])
def test_budget_gives_the_updates_a_known_cost_pays_for(name, per_example):
    from erat import load_dataset

    x, y = load_dataset("digits", "train").tensors  # 1,437: 22 updates of 64 per ERM epoch
    method = build_method(name, **({"eps": 0.5, "steps": 3} if name == "pgd" else
                                   {"eps": 0.5} if name == "at" else {}))
    res = fit(tiny(), method, FitData(x, y), FitOptions(budget=6, batch_size=64,
                                                         progress=False), log=lambda *_: None)
    expected = int(6 * 22 * 3 / per_example)  # whole updates the budget pays for
    assert res.updates == expected and res.cost == pytest.approx(expected * per_example / 66)
    assert res.cost <= 6


def test_a_budget_pays_for_a_warm_up_tied_to_the_runs_length():
    """ER's semi-supervised warm-up (its first fifth of the updates search with S=0) is
    cheaper: priced without it, the run stopped up to 12% below its budget."""
    from erat import load_dataset

    x, y = load_dataset("digits", "train").tensors
    er = build_method("er", eps=0.5, S=3)
    res = fit(tiny(), er, FitData(x[:100], y[:100], x_unlabeled=x[100:]),
              FitOptions(budget=40, batch_size=32, progress=False), log=lambda *_: None)
    one_more = fit(tiny(), er, FitData(x[:100], y[:100], x_unlabeled=x[100:]),
                   FitOptions(epochs=1, epoch_updates=res.updates + 1, batch_size=32,
                              progress=False, budget=None), log=lambda *_: None)
    assert res.cost <= 40 < one_more.cost  # (the most updates 40 ERM epochs pay for)


def test_budget_too_small_for_one_update():
    from erat import load_dataset
    from erat.errors import UserError

    x, y = load_dataset("digits", "train").tensors
    with pytest.raises(UserError, match="pays for no update"):
        fit(tiny(), build_method("pgd", eps=0.5, steps=10), FitData(x, y),
            FitOptions(budget=0.01, batch_size=64, progress=False), log=lambda *_: None)


def test_validation_never_overlaps_training(tmp_path, monkeypatch):
    import erat.train

    seen = {}
    real = erat.train.fit

    def spy(model, method, data, *a, **k):
        seen["data"] = data
        return real(model, method, data, *a, **k)

    monkeypatch.setattr(erat.train, "fit", spy)
    cfg = TrainConfig.from_dict(dict(dataset="digits", model_kwargs={"hidden": [16]}, epochs=1,
                                     val=200, labels=50, method="vat",
                                     method_params={"eps": 0.5}, epoch_updates=2,
                                     progress=False))
    train(cfg, tmp_path / "run", log=lambda *_: None)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    val, labeled = set(split["val_indices"]), set(split["labeled"])
    assert len(val) == 200 and len(labeled) == 50 and not val & labeled
    data = seen["data"]
    from erat import load_dataset

    x, _ = load_dataset("digits", "train").tensors
    flat = x.flatten(1)
    train_rows = torch.cat([data.x, data.x_unlabeled]).flatten(1)
    val_rows = data.val[0].flatten(1)
    assert len(train_rows) + len(val_rows) == len(x)
    # no validation image among the training images (digits has duplicates: compare indices)
    used = {int(torch.cdist(r[None], flat).argmin()) for r in train_rows[:300]}
    assert not used & val
    balanced = torch.bincount(data.val[1]).tolist()
    assert max(balanced) - min(balanced) <= 1
    other = TrainConfig.from_dict({**cfg.to_dict(), "seed": 5})  # another seed: same hold-out
    train(other, tmp_path / "run2", log=lambda *_: None)
    assert json.loads((tmp_path / "run2" / "split.json").read_text())["val_indices"] == \
        split["val_indices"]


def test_select_best_robust_keeps_the_best_epoch(tmp_path, monkeypatch):
    import erat.fit.loop

    scores = iter([0.30, 0.50, 0.40])  # validation robust accuracy of epochs 1, 2, 3
    monkeypatch.setattr(erat.fit.loop, "validate", lambda *a, **k: {
        "val_clean_acc": 0.9, "val_robust_acc": next(scores)})
    cfg = TrainConfig.from_dict(dict(dataset="digits", model_kwargs={"hidden": [16]}, epochs=3,
                                     val=100, method="at", method_params={"eps": 0.5},
                                     select="best-robust", epoch_updates=3, progress=False,
                                     keep_checkpoint=True))
    lines: list[str] = []
    train(cfg, tmp_path / "run", log=lines.append)
    run = tmp_path / "run"
    assert lines[-1].endswith("model.pt (epoch 2 of 3: the best validation robust accuracy)")
    model = torch.load(run / "model.pt", weights_only=True)
    last = torch.load(run / "model-last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert model["meta"]["selected_epoch"] == 2 and model["meta"]["last_epoch"] == 3
    assert last["meta"]["selected_epoch"] == 3
    assert all(torch.equal(model["state_dict"][k], best["state_dict"][k]) for k in best[
        "state_dict"])
    ck = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(last["state_dict"][k], ck[k]) for k in ck)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_best_epoch"] for r in rows] == [1, 2, 2]


def test_the_cost_unit_is_one_erm_pass_over_every_training_image():
    """64 labels and 640 unlabeled images: one ERM epoch is 704 images (11 updates of 64, 3
    passes per image), whatever share of them carries a label."""
    from erat import load_dataset

    x, y = load_dataset("digits", "train").tensors
    vat = build_method("vat", eps=0.5)
    res = fit(tiny(), vat, FitData(x[:64], y[:64], x_unlabeled=x[64:704]),
              FitOptions(epochs=1, batch_size=64, progress=False), log=lambda *_: None)
    per_update = vat.cost(batch(64, 64), tiny().train())
    assert res.updates == 10
    assert res.cost == pytest.approx(10 * per_update / (11 * 3 * 64))
