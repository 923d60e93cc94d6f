"""The energy estimator (METHOD.md sections 2-3): exact cases, refinement, special cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from erat.energy import LN2, certify, energy, ray_variation
from erat.losses import cross_entropy, kl_div, supervised_loss, virtual_loss
from erat.measure import energy_report
from erat.passes import supervised_search
from erat.search import fgm, fgm_direction, search_direction, vat_direction
from erat.threat import Threat, l2_norm, random_unit


def small_cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 10))
    return net.to(dtype)


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def images(n=8, dtype=torch.float64, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(1)
    x = lo + (hi - lo) * torch.rand(n, 1, 8, 8, generator=g, dtype=dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------- linear loss
@pytest.fixture
def linear():
    """A loss linear in x, l(z) = <z, w>: V(x, u) = eps |<w, u>| on every ray (no clipping
    inside [0.4, 0.6] with eps = 0.1)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    x = 0.5 + 0.05 * (torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) - 0.5)
    return (lambda z: z.flatten(1) @ w), w, x


@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_linear_ray_variation_is_eps_times_abs_g_dot_u(linear, T):
    loss_fn, w, x = linear
    u = random_unit(x)
    expected = 0.1 * (u.flatten(1) @ w).abs()
    assert torch.allclose(ray_variation(loss_fn, x, u, 0.1, T), expected, atol=1e-12)


def test_linear_energy_with_searched_direction_nears_eps_times_grad_norm(linear):
    """S PGD steps from a random start converge to the gradient direction of a linear loss."""
    loss_fn, w, x = linear
    est = energy(loss_fn, x, 0.1, T=3, M=4, S=10)
    assert (est.value <= 0.1 * w.norm() + 1e-10).all()
    assert (est.value >= 0.95 * 0.1 * w.norm()).all()  # fixed-step PGD: cosine ~0.98


@pytest.mark.parametrize("S", [0])
def test_linear_energy_with_gradient_direction_is_eps_times_grad_norm(linear, S):
    loss_fn, w, x = linear
    est = energy(loss_fn, x, 0.1, T=3, M=4, S=S)
    assert torch.allclose(est.value, torch.full((6,), 0.1 * w.norm().item(),
                                                dtype=torch.float64), atol=1e-10)
    # u_1 is the gradient direction; the random directions see strictly less
    assert torch.allclose(est.directions[0].flatten(1), (w / w.norm()).expand(6, -1))
    assert (est.per_direction[:, 1:] < est.value[:, None] - 1e-6).all()
    mean = energy(loss_fn, x, 0.1, T=3, M=4, reduce="mean").value
    assert (mean < est.value).all()


def test_random_first_direction_is_not_the_energy(linear):
    loss_fn, w, x = linear
    est = energy(loss_fn, x, 0.1, T=2, M=1, first_direction=random_unit(x))
    assert (est.value < 0.1 * w.norm() * 0.9).all()


# ------------------------------------------------------------------- refinement in T
def test_bump_along_ray_needs_fine_T():
    """l rises and falls back along the ray: the end points see almost nothing, T=16
    recovers the total variation (2 * height - l(0) - l(eps)) within 5%."""
    eps, centre, width = 0.8, 0.53 * 0.8, 0.15 * 0.8
    x = torch.full((3, 1, 2, 2), 0.1, dtype=torch.float64)
    u = torch.zeros_like(x)
    u[:, 0, 0, 0] = 1.0
    def loss_fn(z):
        return torch.exp(-((z[:, 0, 0, 0] - 0.1 - centre) ** 2) / (2 * width**2))

    ends = loss_fn(x) + loss_fn(x + eps * u)
    exact = 2.0 - ends  # the peak is inside the ray, height 1
    v = {T: ray_variation(loss_fn, x, u, eps, T) for T in (1, 2, 4, 8, 16)}
    assert (v[1] < 0.05 * exact).all()
    assert ((v[16] - exact).abs() < 0.05 * exact).all()
    for a, b in ((1, 2), (2, 4), (4, 8), (8, 16)):  # nested grids: non-decreasing
        assert (v[b] >= v[a] - 1e-12).all()


# ------------------------------------------------------ special cases (METHOD.md sec. 3)
def test_T1_M1_fgm_is_at_objective():
    model, (x, y) = small_cnn(), images(16)
    ce, eps = supervised_loss(model, y), 1.0
    l0 = ce(x).detach()
    est = energy(ce, x, eps, T=1, M=1, S=0, loss_at_x=l0)
    at = ce(fgm(ce, x, Threat("l2", eps))).detach()  # AT's adversarial point
    rises = at > l0
    assert rises.sum() >= 12
    assert torch.allclose((l0 + est.value.detach())[rises], at[rises], rtol=1e-5, atol=1e-6)
    assert ((l0 + est.value.detach()) >= at - 1e-6).all()  # the falling rays: a bound


def test_T1_M1_vat_direction_is_vat_term():
    model, (x, _) = small_cnn(), images(16)
    with torch.no_grad():
        logits = model(x)
    torch.manual_seed(3)
    d = vat_direction(model, x, logits, xi=1e-6, power_iters=1)
    v = virtual_loss(model, logits)
    est = energy(v, x, 3.0, T=1, M=1, first_direction=d, loss_at_x=torch.zeros(16))
    with torch.no_grad():
        vat_term = kl_div(logits, model((x + 3.0 * d).clamp(0, 1)))
    assert torch.allclose(est.value.detach(), vat_term, rtol=1e-5, atol=1e-6)
    assert (vat_term > 0).all()


# ------------------------------------------------------------------- mechanics
def test_all_ray_points_in_one_pass_and_chunking_agrees(linear):
    loss_fn, _, x = linear
    calls: list[int] = []
    def counted(z):
        calls.append(len(z))
        return loss_fn(z)

    u = random_unit(x)
    a = ray_variation(counted, x, u, 0.1, 8)
    assert calls == [(8 + 1) * 6]  # t_0 in the same pass when loss_at_x is not given
    calls.clear()
    est = energy(counted, x, 0.1, T=4, M=3, loss_at_x=loss_fn(x))
    assert calls == [6, 4 * 3 * 6]  # the FGM search, then every ray point at once
    calls.clear()
    b = ray_variation(counted, x, u, 0.1, 8, max_points=20)
    assert all(n % 6 == 0 and n <= 20 for n in calls) and len(calls) > 1
    assert torch.allclose(a, b) and est.ray_losses.shape == (6, 3, 5)


def test_points_clipped_and_eps_zero(linear):
    loss_fn, _, x = linear
    seen: list[torch.Tensor] = []
    def spy(z):
        seen.append(z.detach())
        return loss_fn(z)

    energy(spy, x, 5.0, T=3, M=2)
    assert all(z.min() >= 0 and z.max() <= 1 for z in seen)
    assert torch.equal(energy(loss_fn, x, 0.0, T=3, M=2).value, torch.zeros(6, dtype=x.dtype))


def test_gradients_reach_weights_through_losses_not_directions():
    model, (x, y) = small_cnn(torch.float32), images(8, torch.float32)
    for p in model.parameters():
        p.grad = None
    est = energy(supervised_loss(model, y), x, 1.0, T=2, M=2, S=2)
    assert all(p.grad is None for p in model.parameters())  # the search leaves .grad
    assert not est.directions.requires_grad
    assert torch.allclose(l2_norm(est.directions.flatten(0, 1)), torch.ones(16), atol=1e-5)
    est.value.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_search_direction_variants(linear):
    loss_fn, w, x = linear
    g = (w / w.norm()).expand(6, -1)
    assert torch.allclose(fgm_direction(loss_fn, x).flatten(1), g)
    d = random_unit(x)
    assert torch.allclose(search_direction(loss_fn, x, 0.1, start_direction=3 * d), d)
    refined = search_direction(loss_fn, x, 0.1, S=5, start_direction=d).flatten(1)
    assert ((refined * g).sum(1) > (d.flatten(1) * g).sum(1)).all()


@pytest.mark.parametrize("bad", [dict(eps=-1.0), dict(eps=math.inf), dict(T=0), dict(M=0),
                                 dict(S=-1), dict(reduce="sum")])
def test_energy_rejects_bad_settings(linear, bad):
    loss_fn, _, x = linear
    with pytest.raises(ValueError):
        energy(loss_fn, x, **{"eps": 0.1, **bad})


def test_certify_threshold():
    loss = torch.tensor([0.1, 0.3, 0.0])
    e = torch.tensor([0.5, 0.5, LN2])
    assert certify(loss, e).tolist() == [True, False, False]


# ------------------------------------------------------------------- the report
def test_energy_report_is_json_ready_and_leaves_model_alone():
    model, (x, y) = bn_net(), images(10, torch.float32)
    model.train()
    model[3].eval()  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    kw = dict(eps=1.0, T=2, M=3, S=2, batch_size=4)
    r = energy_report(model, x, y, **kw)
    json.dumps(r)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for key in ("energy_mean", "energy_median", "energy_p10", "energy_p90", "at_term_mean",
                "vat_term_mean", "certified_frac", "certificate_note", "virtual_energy_mean",
                "virtual_energy_median", "settings"):
        assert key in r
    assert r["settings"]["n"] == 10 and r["settings"]["S"] == 2
    assert r["energy_mean"] >= r["at_term_mean"] - 1e-6
    assert r["virtual_energy_mean"] >= r["vat_term_mean"] - 1e-6 > -1e-6
    assert 0.0 <= r["certified_frac"] <= 1.0
    assert energy_report(model, x, y, **kw) == r  # seeded


def test_report_energy_grows_with_search_strength():
    model, (x, y) = small_cnn(torch.float32), images(12, torch.float32)
    weak = energy_report(model, x, y, eps=1.0, T=1, M=1, S=0)
    strong = energy_report(model, x, y, eps=1.0, T=4, M=4, S=5)
    assert strong["energy_mean"] >= weak["energy_mean"] - 1e-6
    with supervised_search(model):
        l0 = cross_entropy(model(x), y)
    assert abs(weak["loss_mean"] - l0.mean().item()) < 1e-5
    assert weak["energy_random_mean"] is None  # (M = 1: no random direction; it was E_hat)
    assert strong["energy_random_mean"] is not None


def test_a_model_giving_probabilities_is_warned_of_and_chance_accuracy_said():
    """A model whose last step is a softmax gave an energy several times lower than its
    logits' without a word; ``erat energy``'s lines give the clean accuracy and say when it
    is at chance (a model in the wrong input range looked the most stable)."""
    from erat.assess import format_report
    from erat.evaluate import evaluate

    model, (x, y) = small_cnn(torch.float32), images(12, torch.float32)
    probabilities = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="outputs look like probabilities"):
        r = energy_report(probabilities, x, y, eps=1.0, T=1, M=1, S=0)
    with pytest.warns(UserWarning, match="outputs look like probabilities"):
        evaluate(probabilities, x, y, eps=[0.5], steps=1, sanity_n=0)
    r["clean_acc"], r["classes"] = 0.1, 10
    lines = format_report(r).splitlines()
    assert lines[2].startswith("clean_acc ") and lines[3].startswith("loss_mean ")
    assert any(line.startswith("note: clean accuracy is at chance level") for line in lines)
    r["clean_acc"] = 0.9
    assert not any("chance" in line for line in format_report(r).splitlines())


# ----------------------------------------------------------------------- the upper bound G_T
def test_gradient_bound_of_a_linear_loss_is_eps_times_grad_norm(linear):
    """``||grad l|| = ||w||`` everywhere, so ``G_T = eps ||w||`` on every ray, any ``T``."""
    loss_fn, w, x = linear
    for T in (1, 3):
        est = energy(loss_fn, x, 0.1, T=T, M=3, S=0, estimator="gradient")
        assert torch.allclose(est.per_direction, torch.full((6, 3), 0.1 * w.norm().item(),
                                                            dtype=torch.float64), atol=1e-12)


def test_gradient_bound_is_never_below_the_end_point_change():
    model, (x, y) = small_cnn(), images(8)
    loss_fn = supervised_loss(model, y)
    torch.manual_seed(0)
    for T in (1, 4, 16):
        est = energy(loss_fn, x, 1.0, T=T, M=6, S=0, estimator="gradient")
        end_change = (est.ray_losses[:, :, -1] - est.ray_losses[:, :, 0]).abs()  # [B, M]
        assert (est.per_direction >= end_change).all()
    for m in range(1, 6):  # and above the (finely resolved) variation of each random ray
        assert (est.per_direction[:, m] >= ray_variation(loss_fn, x, est.directions[m], 1.0,
                                                         64)).all()


def test_gradient_bound_trains_through_the_double_backward():
    model, (x, y) = small_cnn(torch.float32), images(8, torch.float32)
    est = energy(supervised_loss(model, y), x, 1.0, T=2, M=1, S=1, estimator="gradient")
    assert est.value.requires_grad and est.grad_norms.shape == (8, 1, 3)
    est.value.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():  # evaluation: no graph kept
        assert not energy(supervised_loss(model, y), x, 1.0, T=2, M=1,
                          estimator="gradient").value.requires_grad


def test_energy_report_reads_a_radius_as_evaluate_does():
    """``eps="8/255"`` was refused here and read by ``evaluate`` and ``build_method``."""
    import numpy as np

    from erat import load_dataset
    from erat.errors import UserError

    x, y = load_dataset("digits", "test").tensors
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    got = energy_report(model, x[:4], y[:4], eps="8/255", norm="linf", T=2, M=1, S=0)
    assert got["settings"]["eps"] == 8 / 255
    assert energy_report(model, x[:4], y[:4], eps=np.float32(0.5), T=2, M=1, S=0
                         )["settings"]["eps"] == 0.5
    with pytest.raises(UserError, match="eps: want a number or a fraction a/b, got 'big'"):
        energy_report(model, x[:4], y[:4], eps="big", T=2, M=1, S=0)
