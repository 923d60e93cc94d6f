"""The l-inf ball (METHOD.md section 3d): the energy's rays, searches, random directions and
gradient bound; ER, VAT and Fast-AT with ``norm="linf"``; the one radius check; the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml
from torch import nn

from erat import threat as threat_module
from erat.energy import energy, ray_variation
from erat.errors import UserError
from erat.losses import supervised_loss
from erat.measure import energy_report
from erat.methods import Batch, build_method
from erat.methods.er import ER
from erat.search import (
    XI,
    fgm,
    fgm_direction,
    pgd_step_size,
    search_direction,
    vat_direction,
    vat_step,
)
from erat.threat import Threat, check_radius, linf_norm, random_direction


def small_cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).to(dtype)


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def images(n=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def linear():
    """``l(z) = <z, w>`` with ``x`` inside [0.4, 0.6]: no clipping at ``eps = 0.05``."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    x = 0.5 + 0.2 * (torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64) - 0.5)
    return (lambda z: z.flatten(1) @ w), w, x


@pytest.fixture
def fresh_warnings(monkeypatch):
    """An empty record of the radii warned about (the check warns once per process)."""
    monkeypatch.setattr(threat_module, "_warned", set())


# ----------------------------------------------------------------------- the energy
def test_linf_energy_at_radius_zero_is_exactly_zero(linear):
    loss_fn, _, x = linear
    for estimator in ("variation", "gradient"):
        est = energy(loss_fn, x, 0.0, T=3, M=3, S=2, norm="linf", estimator=estimator)
        assert torch.equal(est.value, torch.zeros(6, dtype=x.dtype))


def test_linf_ray_points_lie_in_the_ball_and_the_box():
    model, (x, y) = small_cnn(), images(8)
    seen: list[torch.Tensor] = []
    ce = supervised_loss(model, y)

    def spy(z):
        seen.append(z.detach())
        return ce(z)

    eps = 0.3
    est = energy(spy, x, eps, T=3, M=4, S=2, norm="linf")
    rays = seen[-1]  # the last pass: x and every ray point
    assert rays.shape[0] == (1 + 4 * 3) * 8
    assert rays.min() >= 0 and rays.max() <= 1
    dist = linf_norm(rays.view(-1, 8, 64) - x.view(1, 8, 64)).max()
    assert dist <= eps + 1e-12
    # the end points reach the cube's surface wherever the box does not clip them
    end = (x + eps * est.directions).clamp(0, 1)  # [M, B, ...]
    assert torch.allclose(rays.view(13, 8, 1, 8, 8)[3::3], end)


def test_linf_directions_have_unit_linf_norm():
    model, (x, y) = small_cnn(), images(8)
    ce = supervised_loss(model, y)
    torch.manual_seed(0)
    for S in (0, 1, 3):
        u = search_direction(ce, x, 0.2, S=S, norm="linf")
        assert torch.equal(linf_norm(u), torch.ones(8, dtype=torch.float32))
    g = torch.autograd.functional.jacobian(lambda z: ce(z).sum(), x)
    assert torch.equal(fgm_direction(ce, x, "linf"), g.sign())  # S = 0: FGSM's sign(g)
    r = random_direction(x, "linf")
    assert set(r.unique().tolist()) == {-1.0, 1.0}  # vertices of the cube
    assert (r == 1).double().mean().sub(0.5).abs() < 0.1
    est = energy(ce, x, 0.2, T=2, M=3, S=2, norm="linf")
    assert torch.equal(linf_norm(est.directions.flatten(0, 1)), torch.ones(24))


def test_linf_search_refines_towards_the_fgsm_vertex(linear):
    """For a linear loss the l-inf worst case is the vertex ``sign(w)``: V along it is
    ``eps ||w||_1`` exactly, every other direction sees less, and S PGD steps get there."""
    loss_fn, w, x = linear
    eps, best = 0.05, 0.05 * w.abs().sum().item()
    est = energy(loss_fn, x, eps, T=2, M=4, S=0, norm="linf")
    assert torch.allclose(est.value, torch.full((6,), best, dtype=x.dtype), atol=1e-10)
    assert (est.per_direction[:, 1:] < best - 1e-6).all()
    refined = energy(loss_fn, x, eps, T=2, M=1, S=5, norm="linf")
    assert torch.allclose(refined.value, est.value, atol=1e-10)


# ------------------------------------------------------------- the gradient bound G_T
def test_linf_gradient_bound_of_a_linear_loss_is_eps_times_l1_norm(linear):
    loss_fn, w, x = linear
    for T in (1, 3):
        est = energy(loss_fn, x, 0.05, T=T, M=3, S=0, estimator="gradient", norm="linf")
        expected = torch.full((6, 3), 0.05 * w.abs().sum().item(), dtype=torch.float64)
        assert torch.allclose(est.per_direction, expected, atol=1e-12)


def test_linf_gradient_bound_is_never_below_the_change_along_the_ray():
    model, (x, y) = small_cnn(), images(8)
    loss_fn = supervised_loss(model, y)
    torch.manual_seed(0)
    for T in (4, 16):
        est = energy(loss_fn, x, 0.2, T=T, M=5, S=2, estimator="gradient", norm="linf")
        end_change = (est.ray_losses[:, :, -1] - est.ray_losses[:, :, 0]).abs()
        assert (est.per_direction >= end_change - 1e-3 * end_change.abs().max()).all()
    for m in range(5):  # and above each ray's finely resolved variation
        v = ray_variation(loss_fn, x, est.directions[m], 0.2, 64)
        assert (est.per_direction[:, m] >= v * (1 - 1e-3)).all()
    l2 = energy(loss_fn, x, 0.2, T=16, M=1, S=0, estimator="gradient")  # the dual norm
    assert (est.grad_norms[:, 0, 0] >= l2.grad_norms[:, 0, 0]).all()  # ||g||_1 >= ||g||_2


# ------------------------------------------------ special cases of METHOD.md section 3
def test_er_linf_T1_M1_S0_equals_fgsm_at_objective():
    model, (x, y) = small_cnn(), images(16)
    b, eps = Batch(x, y), 0.1
    ce = supervised_loss(model, y)
    with torch.no_grad():
        fgsm = fgm(ce, x, Threat("linf", eps))
        rises = ce(fgsm) > ce(x)
    assert torch.equal(fgsm, (x + eps * fgm_direction(ce, x, "linf")).clamp(0, 1))
    assert rises.all()
    er = build_method("er", eps=eps, norm="linf", T=1, M=1, S=0, lam=1.0)(model, b).loss
    at = build_method("at", eps=eps, norm="linf", adv_weight=1.0)(model, b).loss
    erm = build_method("erm")(model, b).loss
    assert torch.allclose(er, at - erm, rtol=1e-5)  # (the CE runs in float32)


def test_er_linf_virtual_T1_M1_equals_linf_vat_term():
    model, (x, _) = small_cnn(), images(16)
    b = Batch(x, torch.zeros(16, dtype=torch.long))
    torch.manual_seed(3)
    vat = build_method("vat", eps=0.1, norm="linf", adv_weight=1.0)(model, b).metrics["kl"]
    torch.manual_seed(3)
    with torch.no_grad():
        logits = model(x)
    e_v = ER(eps=0.1, norm="linf", T=1, M=1, S=0).virtual(model, x, logits).value
    assert vat > 0 and torch.allclose(e_v.detach().mean(), vat, rtol=1e-6)  # (float64)


def test_linf_vat_perturbation_lies_in_the_ball():
    model, (x, y) = bn_net().train(), images(8, torch.float32)
    xu = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    inputs: list[torch.Tensor] = []
    model[0].register_forward_pre_hook(lambda m, i: inputs.append(i[0].detach()))
    out = build_method("vat", eps=0.1, norm="linf")(model, Batch(x, y, xu))
    assert torch.isfinite(out.loss)
    z, perturbed = torch.cat([x, xu]), inputs[-1]
    r = perturbed - z
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert (linf_norm(r) <= 0.1 + 1e-6).all()
    inside = (z > 0.1) & (z < 0.9)  # unclipped pixels move by the whole radius: eps sign(d)
    assert torch.allclose(r[inside].abs(), torch.full_like(r[inside], 0.1), atol=1e-6)
    d = torch.randn(3, 5)
    assert torch.equal(vat_step(d, "linf"), d.sign()) and vat_step(d, "l2") is d


@pytest.mark.parametrize("name", ["er", "vat"])
def test_semi_supervised_linf_trains(name):
    model, (x, y) = bn_net().train(), images(8, torch.float32)
    xu = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    out = build_method(name, eps=0.1, norm="linf", entmin=True)(model, Batch(x, y, xu))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    if name == "er":
        assert out.metrics["energy_u"] > 0


# ----------------------------------------------------------------------- Fast-AT
def test_fast_at_is_one_linf_pgd_step_of_one_and_a_quarter_eps():
    b = Batch(*images(8, torch.float32))

    def update(method):
        model = bn_net().train()
        torch.manual_seed(11)
        out = method(model, b)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    fast = build_method("fast-at", eps=0.2)
    assert fast.norm == "linf" and fast.pgd().steps == 1
    pgd = build_method("pgd", eps=0.2, norm="linf", steps=1, step_size=1.25 * 0.2)
    (la, ga), (lb, gb) = update(fast), update(pgd)
    assert torch.equal(la, lb) and all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
    other = update(build_method("pgd", eps=0.2, norm="linf", steps=1))  # PGD's own step rule
    assert not torch.equal(other[0], la)
    assert fast.cost(b, bn_net()) == pgd.cost(b, bn_net()) == 7 * 8


def test_at_linf_is_fgsm():
    model, (x, y) = small_cnn(), images(8)
    ce = supervised_loss(model, y)
    x_adv = fgm(ce, x, Threat("linf", 0.1))
    xr = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(ce(xr).sum(), xr)
    assert torch.equal(x_adv, (x + 0.1 * grad.sign()).clamp(0, 1))


# ------------------------------------------------------------ one home per rule
def test_one_radius_check(fresh_warnings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            check_radius(0.5, "linf")
        build_method("er", eps=0.5, norm="linf")
        check_radius(2.0, "l2")
        check_radius(0.3, "linf")
        Threat("linf", 0.6)  # derived radii (e.g. the large-radius check) never warn
    assert len(caught) == 1 and "looks like an l2 radius" in str(caught[0].message)
    with warnings.catch_warnings(record=True) as caught:  # the mirror: 8/255 without linf
        warnings.simplefilter("always")
        for eps in (8 / 255, 8 / 255, 0.05, 0.2, 0.5, 17 / 255):
            check_radius(eps, "l2")
    assert len(caught) == 1 and "is 8/255, an l-inf radius" in str(caught[0].message)
    for eps, norm in [(2.0, "linf"), (1.5, "linf"), (-0.1, "linf"), (-0.1, "l2"),
                      (float("nan"), "l2"), (float("inf"), "l2"), ("1", "l2")]:
        with pytest.raises(UserError) as err:
            check_radius(eps, norm)
        assert "\n" not in str(err.value) and "eps" in str(err.value)
    with pytest.raises(UserError, match="norm"):
        check_radius(0.1, "l1")
    for name in ("at", "vat", "pgd", "trades", "er", "fast-at"):
        with pytest.raises(UserError, match="above 1"):
            build_method(name, eps=1.5, norm="linf")
    assert check_radius(1, "linf", warn=False) == 1.0  # the whole box: the largest allowed


def test_an_l2_sized_val_eps_of_an_linf_method_is_refused_before_training():
    """``--val-eps`` is checked in the method's norm when the run is set up (it was checked
    as an l2 radius, then refused by the first epoch's validation, an epoch later)."""
    from erat.fit import FitData, FitOptions, fit

    x, y = images(16, torch.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UserError, match="val_eps=2 .*above 1"):
        fit(model, build_method("fast-at", eps=0.1), FitData(x, y, val=(x, y)),
            FitOptions(epochs=1, val_eps=2.0, progress=False), log=lambda _: None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_method_without_a_ball_validates_in_the_norm_given(capsys):
    """``val_norm``: ERM in an l-inf suite had its checkpoint chosen on l2 robustness (its
    validation took l2, having no norm of its own, and no setting said otherwise)."""
    from erat.fit import FitData, FitOptions, fit

    x, y = images(32, torch.float32)
    lines: list[str] = []
    out = fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), build_method("erm"),
              FitData(x, y, val=(x, y)), FitOptions(epochs=1, val_eps=8 / 255, val_norm="linf",
                                                     val_n=16, progress=False), log=lines.append)
    assert "PGD-l-inf at 8/255" in " ".join(lines) and "val_robust_acc" in out.history[0]
    with pytest.raises(UserError, match="--val-norm linf is not the norm .* give --val-eps"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), build_method("pgd", eps=0.5),
            FitData(x, y, val=(x, y)), FitOptions(epochs=1, val_norm="linf", progress=False),
            log=lambda _: None)
    with pytest.raises(UserError, match="val_norm must be one of l2, linf"):
        FitOptions(val_norm="inf")


def test_one_step_rule_and_one_xi():
    from erat.attacks.pgd import PGDAttack
    from erat.methods.vat import VAT

    assert PGDAttack(steps=7).step(0.3) == pgd_step_size(0.3, 7) == 2.5 * 0.3 / 7
    # the attack's own floor: a quarter of the radius from 10 steps on (50 steps: not eps/20)
    assert PGDAttack(steps=50).step(0.3) == 0.3 / 4 == PGDAttack(steps=10).step(0.3)
    assert PGDAttack(steps=7, step_size=0.01).step(0.3) == 0.01
    assert pgd_step_size(0.3, 0) == 2.5 * 0.3  # (at least one step)
    import inspect

    assert inspect.signature(vat_direction).parameters["xi"].default == XI == 1e-2
    assert VAT().xi == ER().xi == XI


# ----------------------------------------------------------------- the report and CLI
def test_linf_energy_report():
    model, (x, y) = bn_net(), images(10, torch.float32)
    model.eval()
    kw = dict(eps=0.1, T=2, M=3, S=2, batch_size=4, norm="linf")
    r = energy_report(model, x, y, **kw)
    json.dumps(r)
    assert r["settings"]["norm"] == "linf"
    assert r["energy_mean"] >= r["at_term_mean"] - 1e-6
    assert r["virtual_energy_mean"] >= r["vat_term_mean"] - 1e-6 > -1e-6
    assert energy_report(model, x, y, **kw) == r  # seeded
    with torch.no_grad():
        l2 = energy_report(model, x, y, **{**kw, "norm": "l2"})
    assert l2["settings"]["norm"] == "l2" and l2 != r


def test_cli_energy_linf_and_norm_errors(tmp_path, capsys, fresh_warnings):
    from erat.cli import main

    run = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--epochs", "1", "--epoch-updates", "2",
            "--no-progress"]
    assert main([*base, "--method", "erm", "--out", str(run)]) == 0
    out = tmp_path / "e.json"
    code = main(["energy", str(run), "--norm", "linf", "--eps", "0.1", "--n", "12", "--T", "2",
                 "--M", "2", "--S", "1", "--json", str(out)])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "ball: l-inf radius 0.1, T 2, M 2, S 1" in said.out  # (the JSON had it only)
    result = json.loads(out.read_text())
    assert result["settings"]["norm"] == "linf" and result["energy_mean"] >= 0
    for args, message in [
        ([*base, "--method", "erm", "--norm", "linf", "--out", str(tmp_path / "a")],
         "takes no norm"),
        ([*base, "--method", "vat", "--norm", "linf", "--out", str(tmp_path / "b")],
         "--norm linf needs --eps"),  # VAT's default radius 2.0 is an l2 radius
        ([*base, "--method", "vat", "--norm", "linf", "--eps", "2", "--out",
          str(tmp_path / "b")], "above 1"),
        (["energy", str(run), "--norm", "linf", "--eps", "1.5"], "above 1"),
        (["energy", str(run), "--norm", "linf", "--eps", "-0.1"], "eps"),
        (["energy", str(run), "--eps", "0.5", "--batch-size", "0"], "--batch-size must be >= 1"),
    ]:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("erat: error:") and message in err, err
        assert err.count("\n") == 1


def test_radii_as_fractions_and_the_slips_of_l_inf_radii(tmp_path, capsys, fresh_warnings):
    """A newcomer's l-inf slips: ``--eps 8/255`` was refused everywhere (users typed a
    rounded 0.031373); ``--eps 8`` was read as an l2 radius only; a method's default radius
    (Fast-AT's MNIST 0.3 on CIFAR-10) was taken without a word; ``erat energy`` took an l2
    radius above the image's diameter."""
    from erat.cli import main
    from erat.fields import number

    assert number("8/255") == 8 / 255 and number("0.5") == 0.5
    with pytest.raises(UserError, match=r"8 of 255 levels is 8/255 = 0.0313725\)"):
        check_radius(8, "linf", "--eps")
    run = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--epochs", "1", "--epoch-updates", "2",
            "--no-progress", "--method", "fast-at"]
    assert main([*base, "--eps", "8/255", "--out", str(run)]) == 0
    said = capsys.readouterr()
    assert "note: fast-at trains at its default radius" not in said.out + said.err
    assert yaml.safe_load((run / "config.yaml").read_text())["method_params"]["eps"] == 8 / 255
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    said = capsys.readouterr()
    assert "note: fast-at trains at its default radius, l-inf 0.3 (--eps to choose)" in said.out
    code = main(["eval", str(run), "--eps", "4/255,8/255", "--n", "12", "--steps", "2",
                 "--no-checks", "--json", str(tmp_path / "e.json")])
    assert code == 0, capsys.readouterr().err
    keys = json.loads((tmp_path / "e.json").read_text())["robust_acc"]
    assert set(keys) == {f"pgd-linf-eps{8 / 255:g}", f"pgd-linf-eps{4 / 255:g}"}
    assert "note: the run was trained" not in capsys.readouterr().out
    assert main(["eval", str(run), "--norm", "l2", "--eps", "0.5", "--n", "12", "--steps", "2",
                 "--no-checks"]) == 0  # another norm: said (robust = clean was silent)
    assert "note: the run was trained in l-inf 8/255, and is evaluated in l2 (--norm)" \
        in capsys.readouterr().out
    assert main(["eval", str(run), "--n", "12", "--steps", "2", "--no-checks", "--json",
                 str(run / "eval.json")]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "| run | method | trained at | clean | PGD-l-inf 8/255 |" in \
        capsys.readouterr().out  # (the training ball beside the accuracies)
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--landscape-eps",
                 "1.5"]) == 2  # (the landscape is in the plot's norm: l-inf)
    assert "--landscape-eps" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--landscape-eps",
                 "8/255"]) == 0 and (tmp_path / "rep" / "landscape.png").is_file()
    assert main(["energy", str(run), "--n", "4", "--T", "2", "--M", "2", "--S", "1"]) == 0
    assert "ball: l-inf radius 0.03137" in capsys.readouterr().out  # (its training ball)
    with pytest.raises(SystemExit) as stop:  # (argparse's one line)
        main(["eval", str(run), "--eps", "8/0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "fractions a/b" in err and err.count("\n") == 1, err
    assert main(["energy", str(run), "--eps", "9", "--norm", "l2"]) == 2
    err = capsys.readouterr().err
    assert "l2 diameter" in err and err.count("\n") == 1, err
