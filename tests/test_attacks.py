"""Every registered attack, walked as the methods, models and datasets are: a newcomer's
attack (one file in ``erat/attacks``) gets these checks with no edit.

The interface (:mod:`erat.attacks.base`): ``attack(model, x, y, threat, seed)`` on still
robust examples, the model in eval mode, returns a robust flag per example ``[B]``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from erat.attacks import ATTACKS, build_attack, correct, title, upper_bound
from erat.threat import Threat

SHAPE = (3, 15, 15)  # (square: an l2 start that tiles it)


def _model() -> nn.Module:
    """A small network with BatchNorm and dropout (an attack must leave both as it found
    them), in eval mode as the caller puts it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 15 * 15, 5)).eval()


class Constant(nn.Module):
    """Logits that do not depend on the input: no attack can change its prediction (and its
    input gradient is zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0 * x.flatten(1)[:, :5] + self.bias


def _attack(name: str, norm: str):
    cls = ATTACKS[name]
    missing = [p for p in getattr(cls, "requires", {}) if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    refusal = getattr(cls, "refuses", lambda h, w, n: None)(*SHAPE[1:], norm)
    if refusal:
        pytest.skip(f"{name} refuses {SHAPE}: {refusal}")
    options = {"square_queries": 50, "steps": 5}  # (cheap: the properties, not the strength)
    return build_attack(name, options)


@pytest.fixture(scope="module")
def data():
    """Images the model classifies correctly, each with a logit margin above 0.05 (a
    radius of 1e-4 cannot flip them)."""
    model = _model()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(400, *SHAPE, generator=gen)
    with torch.no_grad():
        top = model(x).topk(2, dim=1)
    keep = (top.values[:, 0] - top.values[:, 1]) > 0.05
    return x[keep][:12], top.indices[keep, 0][:12]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_has_a_title_and_says_whether_its_figures_are_bounds(name):
    assert isinstance(title(name), str) and title(name)
    assert upper_bound([name]) == ("reference" not in getattr(ATTACKS[name], "roles", ()))


def test_titles_and_bounds_of_chains_and_presets():
    assert title("pgd+square") == "PGD+Square" and title("all") == "PGD+AutoAttack"
    assert title("rs-fgsm") == "rs-fgsm"  # (a name no attack is registered under: as it is)
    assert upper_bound(["pgd"]) and upper_bound(["pgd", "square"])
    assert not upper_bound(["all"]) and not upper_bound(["pgd+autoattack"])


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_returns_flags_and_leaves_the_model_as_it_found_it(name, norm, data):
    x, y = data
    attack, model = _attack(name, norm), _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 0.5 if norm == "l2" else 4 / 255
    flags = attack(model, x.clone(), y.clone(), Threat(norm, eps), 0)
    assert flags.dtype == torch.bool and flags.shape == (len(y),) and flags.device.type == "cpu"
    assert not model.training and all(not m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # (BN stats)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    again = attack(model, x.clone(), y.clone(), Threat(norm, eps), 0)
    assert torch.equal(flags, again), f"{name}: the same seed gave other flags"


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_cannot_flip_what_no_perturbation_changes(name, norm, data):
    """A radius of 1e-4 keeps every example with a margin (the flags are the clean
    correctness), and a model that ignores its input is robust at any radius (a zero
    gradient is no reason to give up an example)."""
    x, y = data
    attack, model = _attack(name, norm), _model()
    assert correct(model, x, y).all()
    assert attack(model, x, y, Threat(norm, 1e-4), 0).all()
    constant = Constant().eval()
    big = 3.0 if norm == "l2" else 0.3
    assert attack(constant, x, torch.ones_like(y), Threat(norm, big), 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_breaks_a_model_at_a_radius_that_spans_the_box(name, norm, data):
    """At a radius as large as the image box every point of it is in the ball: an attack
    finds another class for most examples of a model that is not constant."""
    x, y = data
    attack, model = _attack(name, norm), _model()
    big = float(torch.tensor(SHAPE).prod().sqrt()) if norm == "l2" else 1.0
    flags = attack(model, x, y, Threat(norm, big), 0)
    assert flags.float().mean() <= 0.5, f"{name} left {int(flags.sum())} of {len(y)} robust"


def test_autoattack_says_what_runs_for_the_models_classes():
    """With fewer than 4 classes APGD-T is left out (with a warning), and the result's
    ``threat`` said it had run."""
    from erat.evaluate import EvalConfig, _threat

    cfg = EvalConfig.build(attack="all", eps=[0.5])
    assert "APGD-CE, APGD-T, FAB-T" in _threat(cfg, 8, 8, classes=10)["worst_case"]
    two = _threat(cfg, 8, 8, classes=2)["worst_case"]
    assert "AutoAttack standard (APGD-CE, FAB-T, Square)" in two and "PGD on" in two
