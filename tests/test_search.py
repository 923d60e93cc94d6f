"""Threat balls and the one perturbation module: properties every search must keep."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from erat.losses import cross_entropy
from erat.passes import perturbed_pass, supervised_search
from erat.search import fgm, pgd, vat_direction
from erat.threat import Threat, l2_norm, random_unit


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_project_and_random_start_stay_inside(norm, data):
    x, _ = data
    threat = Threat(norm, 0.3)
    far = x + 5 * torch.randn_like(x)
    for point in (threat.project(x, far), threat.random_start(x)):
        assert point.min() >= 0 and point.max() <= 1
        assert (threat.norms(point - x) <= 0.3 + 1e-5).all()


def test_threat_rejects_bad_settings():
    for bad in (dict(norm="l3", eps=1.0), dict(norm="l2", eps=-1.0), dict(norm="l2", eps=math.nan)):
        with pytest.raises(ValueError):
            Threat(**bad)


def test_random_unit_is_unit(data):
    x, _ = data
    assert torch.allclose(l2_norm(random_unit(x)), torch.ones(len(x)), atol=1e-5)


@pytest.mark.parametrize("norm, eps", [("l2", 1.0), ("linf", 0.1)])
def test_pgd_properties(norm, eps, data):
    x, y = data
    model = tiny_net().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    threat = Threat(norm, eps)
    with supervised_search(model):
        loss_fn = lambda z: cross_entropy(model(z), y)  # noqa: E731
        x_adv = pgd(loss_fn, x, threat, steps=10, restarts=2)
        clean, adv = loss_fn(x), loss_fn(x_adv)
        x_fgm = fgm(loss_fn, x, threat)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    for point in (x_adv, x_fgm):
        assert not point.requires_grad
        assert point.min() >= 0 and point.max() <= 1
        assert (threat.norms(point - x) <= eps + 1e-5).all()
    assert adv.mean() > clean.mean()
    assert (adv >= clean - 1e-6).float().mean() > 0.9


def test_eps_zero_returns_input(data):
    x, y = data
    model = tiny_net().eval()
    threat = Threat("l2", 0.0)
    assert torch.equal(pgd(lambda z: cross_entropy(model(z), y), x, threat, steps=5), x)
    assert torch.equal(fgm(lambda z: cross_entropy(model(z), y), x, threat), x)


def test_search_mode_restores_mixed_modes():
    model = tiny_net().train()
    model[1].eval()  # a user froze one BatchNorm on purpose
    with supervised_search(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training and model[3].training


def test_frozen_bn_stats_keeps_running_stats(data):
    x, _ = data
    model = tiny_net().train()
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    with perturbed_pass(model):
        model(x * 0.5)
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in before.items())
    assert model[1].momentum == 0.1
    model(x)
    assert not torch.equal(before["running_mean"], model[1].running_mean)


def test_perturbed_pass_leaves_frozen_and_synced_batchnorm_working(data):
    """A BatchNorm layer a user froze (eval mode) keeps normalising with its running
    statistics in a perturbed pass; a SyncBatchNorm (``--sync-bn``) runs it; neither's
    buffers change."""
    x, _ = data
    model = tiny_net().train()
    model[1].eval()
    model[1].running_mean.fill_(5.0)
    model[3].eval()
    with torch.no_grad():
        frozen = model(x)
        with perturbed_pass(model):
            assert torch.equal(model(x), frozen)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(tiny_net()).train()
    before = {k: v.clone() for k, v in synced[1].state_dict().items()}
    with perturbed_pass(synced), torch.no_grad():
        synced(x)
    assert all(torch.equal(v, synced[1].state_dict()[k]) for k, v in before.items())
    assert synced[1].track_running_stats


def test_vat_direction_is_unit_and_leaves_grads(data):
    x, _ = data
    model = tiny_net().eval().double()
    with torch.no_grad():
        clean = model(x.double())
    d = vat_direction(model, x.double(), clean, xi=1e-6, power_iters=2)
    assert torch.allclose(l2_norm(d), torch.ones(len(x)), atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_search_target_is_the_eval_mode_prediction():
    """The clean logits serve as a search's target only when train mode computes the same
    function; with train-mode BatchNorm one eval-mode pass replaces them."""
    from erat.passes import supervised_target

    torch.manual_seed(0)
    x = torch.rand(6, 4)
    plain = torch.nn.Linear(4, 3).train()
    clean = plain(x)
    assert supervised_target(plain, x, clean) is not clean  # detached
    assert torch.equal(supervised_target(plain, x, clean), clean.detach())
    bn = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    clean = bn(x)
    target = supervised_target(bn, x, clean)
    assert bn.training and not target.requires_grad
    assert torch.allclose(target, bn.eval()(x)) and not torch.allclose(target, clean)


def test_clean_function_is_the_clean_pass_function():
    """Inside shared_statistics, clean_function maps any batch (one input, a perturbed one)
    with the clean pass's statistics and dropout off, updates no running statistics, and
    restores every module's mode afterwards."""
    from erat.passes import clean_function, label_free_target, shared_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(6, 3)).train()
    x = torch.rand(8, 4)
    with shared_statistics(model):
        model[3].p = 0.0
        clean = model(x)
        model[3].p = 0.5
        stats = (model[1].running_mean.clone(), model[1].running_var.clone())
        with clean_function(model):
            assert model[1].training and not model[3].training
            one = model(x[:1])  # alone: still the clean batch's statistics
            again = model(x)
        assert torch.allclose(one, clean[:1], atol=1e-6) and torch.allclose(again, clean)
        assert torch.equal(stats[0], model[1].running_mean)
        assert torch.equal(stats[1], model[1].running_var)
        target = label_free_target(model, x, clean)  # dropout active: a fresh pass
        assert not target.requires_grad and torch.allclose(target, clean, atol=1e-6)
    assert model[1].training and model[3].training
    model[3].p = 0.0
    assert label_free_target(model, x, clean) is not clean
    assert torch.equal(label_free_target(model, x, clean), clean.detach())


def test_shared_statistics_from_the_unlabeled_rows():
    """``stats_from``: every row of the clean pass is normalised with the statistics of the
    rows from ``stats_from`` on (the unlabeled part), later passes too, and the running
    statistics take one update from those rows, as BatchNorm's own would."""
    from erat.passes import shared_statistics

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).train()
    labeled, unlabeled = torch.randn(4, 3) + 5.0, torch.randn(12, 3)
    reference = nn.BatchNorm1d(3).train()
    expected = reference(unlabeled)  # BatchNorm's own pass over the unlabeled rows alone
    with shared_statistics(bn, stats_from=4):
        out = bn(torch.cat([labeled, unlabeled]))
        again = bn(labeled)  # a later pass: the same statistics
    assert torch.allclose(out[4:], expected, atol=1e-5)
    assert torch.allclose(again, out[:4], atol=1e-5)
    assert torch.allclose(bn.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, reference.running_var, atol=1e-6)
    assert bn.num_batches_tracked.item() == 1
