"""Every registered training objective: finite loss, gradients, modes, BatchNorm buffers,
untouched ``.grad``, validation; TRADES' search; AT and VAT as special cases of ER.

BatchNorm buffers: each method may update the running statistics in exactly one pass
(its clean train-mode pass; for PGD-AT, which has none, its training pass on the
adversarial points). The test counts the passes that could update them (train-mode
BatchNorm that tracks its running statistics) with a forward hook, and, for methods with a clean
pass, compares the buffers with those of a copy after one clean forward pass. The tiny net
puts BatchNorm before dropout, so the statistics do not depend on the dropout masks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from erat.losses import cross_entropy
from erat.methods import Batch, ball, build_method, method_config, method_names, method_params
from erat.methods.er import ER
from erat.methods.trades import TRADES
from erat.passes import dropout_off, is_stochastic, shared_statistics, supervised_search
from erat.search import fgm
from erat.threat import Threat

FAST = {"eps": 0.5, "steps": 2}  # keep the searches short on the CPU
LINF = {"eps": 0.1}  # the radius of methods that default to the l-inf ball (fast-at)


def make(name: str, **over) -> object:
    params = method_params(name)
    linf = "norm" in params and params["norm"].default == "linf"
    given = {**FAST, **(LINF if linf else {}), **over}
    return build_method(name, **{k: v for k, v in given.items() if k in params})


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def plain_cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).to(dtype)


def batch(unlabeled: bool = True, dtype=torch.float32, n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype)
    xu = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype) if unlabeled else None
    return Batch(x, torch.randint(0, 10, (n,), generator=g), xu)


def clean_inputs(method, b: Batch) -> torch.Tensor:
    return b.x if b.x_unlabeled is None or not method.uses_unlabeled else torch.cat(
        [b.x, b.x_unlabeled])


NAMES = method_names()
SEARCHING = {"at", "vat", "pgd", "fast-at", "trades", "er"}  # erat's own methods with a search


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_and_gradients_reach_every_parameter(name):
    model, b = bn_net().train(), batch()
    out = make(name)(model, b)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert {"loss", "acc"} <= set(out.metrics)
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())
    out.loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_inner_searches_leave_parameter_grad_untouched(name):
    model, b = bn_net().train(), batch()
    sentinels = {n: torch.full_like(p, 0.125) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinels[n].clone()
    make(name, S=2)(model, b)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinels[n]), n


@pytest.mark.parametrize("name", NAMES)
def test_searches_run_on_frozen_parameters_and_restore_them(name, monkeypatch):
    """A search differentiates with respect to its input only: its passes see the
    parameters frozen (a compiled graph then computes no weight gradients); afterwards each
    parameter requires grad as before, a layer the user froze included, and the update
    reaches every trainable parameter."""
    model, b = bn_net().train(), batch()
    model[0].bias.requires_grad_(False)  # frozen by the user
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(
        (inp[0].requires_grad, any(p.requires_grad for p in m.parameters()))))
    make(name, S=2)(model, b).loss.backward()
    searches = [trainable for needs_grad, trainable in seen if needs_grad]
    assert not any(searches) and (searches or name not in SEARCHING)
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert all(p.requires_grad and p.grad is not None for n, p in model.named_parameters()
               if n != "0.bias")


@pytest.mark.filterwarnings("ignore:.*the model is in eval mode")  # (eval mode on purpose)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_mode_is_restored(name, mode):
    model = bn_net().train(mode != "eval")
    if mode == "mixed":
        model[3].eval()  # dropout off, the rest training
    before = [m.training for m in model.modules()]
    make(name)(model, batch())
    assert [m.training for m in model.modules()] == before


def _train_mode_passes(model: nn.Module) -> list[torch.Tensor]:
    """The inputs of ``model[1]`` (BatchNorm) in each of its train-mode passes."""
    seen: list[torch.Tensor] = []
    model[1].register_forward_hook(
        lambda m, inp, out: seen.append(inp[0].detach()) if m.training else None)
    return seen


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("unlabeled", [False, True])
def test_bn_running_stats_updated_by_one_pass_only(name, unlabeled):
    """One pass updates the running statistics: the clean pass, when the method makes one in
    train mode (a method whose only training pass is on perturbed points, as PGD-AT's, has
    those points' statistics)."""
    model, b = bn_net().train(), batch(unlabeled)
    method = make(name)
    reference = copy.deepcopy(model)
    seen = _train_mode_passes(model)
    method(model, b)
    assert seen and model[1].num_batches_tracked.item() == 1
    with torch.no_grad():
        clean = model[0](b.x)
    if not any(len(s) >= len(b.x) and torch.allclose(s[:len(b.x)], clean) for s in seen):
        assert name not in ("erm", "at", "vat", "trades", "er"), name  # (they make one)
        return
    semi = method.uses_unlabeled and b.x_unlabeled is not None and name in ("vat", "er")
    with torch.no_grad():  # semi-supervised: the statistics of the unlabeled rows alone
        reference(b.x_unlabeled if semi else clean_inputs(method, b))
    for (k, v), ref in zip(model.state_dict().items(), reference.state_dict().values(),
                           strict=True):
        if "running" in k or "num_batches" in k:
            assert torch.allclose(v, ref, atol=1e-6), k


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_call_changes_no_buffer(name):
    model, b = bn_net().eval(), batch()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    make(name)(model, b)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    method = make(name)
    cfg = method_config(method)
    assert cfg["name"] == name
    assert build_method(name, **{k: v for k, v in cfg.items() if k != "name"}) == method


@pytest.mark.parametrize("name", [n for n in NAMES if "eps" in method_params(n)])
@pytest.mark.parametrize("eps", [-1.0, math.nan, math.inf])
def test_bad_eps_rejected(name, eps):
    with pytest.raises(ValueError, match="eps"):
        build_method(name, eps=eps)


@pytest.mark.parametrize("name, field, value", [
    ("at", "norm", "l3"), ("at", "adv_weight", -1.0), ("pgd", "steps", -1),
    ("pgd", "step_size", 0.0), ("pgd", "norm", "l1"), ("trades", "beta", -0.5),
    ("trades", "step_size", -1.0), ("vat", "xi", 0.0), ("vat", "power_iters", -1),
    ("er", "T", 0), ("er", "M", 0), ("er", "S", -1), ("er", "reduce", "sum"),
    ("er", "lam", math.nan), ("er", "lam_u", -1.0), ("er", "T", 1.5),
    ("er", "step_size", -0.1), ("er", "warmup_updates", -1), ("er", "warmup_updates", 2.5)])
def test_bad_hyperparameters_rejected(name, field, value):
    with pytest.raises(ValueError, match=field):
        build_method(name, **{field: value})


def test_trades_search_maximises_the_kl():
    model, b = bn_net().train(), batch(False, n=16)
    with supervised_search(model), torch.no_grad():
        target = model(b.x)
    def kl(z):
        return _kl(model, target, z)

    torch.manual_seed(5)
    no_steps = TRADES(eps=1.0)
    object.__setattr__(no_steps, "steps", 0)  # (0 steps is refused as a setting)
    start = no_steps.adversarial(model, b.x)
    torch.manual_seed(5)
    end = TRADES(eps=1.0, steps=10).adversarial(model, b.x)
    assert (start - b.x).flatten(1).norm(dim=1).max() < 0.001 * 8 * 2  # x + 0.001 N(0, 1)
    assert (end - start).flatten(1).norm(dim=1).max() > 0.5
    assert (kl(end) > kl(start)).all()
    rand = (b.x + (end - b.x).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            * nn.functional.normalize(torch.randn_like(b.x).flatten(1)).view_as(b.x))
    assert (kl(end) > kl(rand.clamp(0, 1))).float().mean() >= 0.9


def _kl(model, target, z):
    from erat.losses import kl_div

    with supervised_search(model), torch.no_grad():
        return kl_div(target, model(z))


def test_er_T1_M1_equals_at_objective():
    """ER(T=1, M=1, lam=1): mean l(x) + mean E_hat = mean l(x + eps u)
    = AT(adv_weight=1) - mean l(x) wherever the loss rises along the FGM ray (checked for
    every sample)."""
    model, b = plain_cnn(), batch(False, torch.float64, n=16)
    def ce(z):
        return cross_entropy(model(z), b.y)

    with torch.no_grad():
        rises = ce(fgm(ce, b.x, Threat("l2", 0.5))) > ce(b.x)
    assert rises.all()
    er = build_method("er", eps=0.5, T=1, M=1, S=0, lam=1.0)(model, b).loss
    at = build_method("at", eps=0.5, adv_weight=1.0)(model, b).loss
    erm = build_method("erm")(model, b).loss
    assert torch.allclose(er, at - erm, rtol=1e-5)


def test_er_virtual_T1_M1_equals_vat_term():
    model, b = plain_cnn(), batch(False, torch.float64, n=16)
    torch.manual_seed(3)
    vat = build_method("vat", eps=2.0, adv_weight=1.0)(model, b).metrics["kl"]
    torch.manual_seed(3)
    with torch.no_grad():
        logits = model(b.x)
    e_v = ER(eps=2.0, T=1, M=1, S=0).virtual(model, b.x, logits).value.mean()
    assert vat > 0 and torch.allclose(e_v.detach(), vat, rtol=1e-5)  # (float64 both)


def test_er_virtual_energy_starts_at_zero_with_active_dropout():
    """With dropout active in the clean pass, the virtual form measures ``v`` from the rays'
    own function (dropout off) at ``x``: the energy is the one of the same weights without
    dropout, and ``v(x) = 0`` (it measured from the noisy clean logits, METHOD.md 5)."""
    model, b = bn_net().train(), batch(False)
    method = ER(eps=0.5, T=3, M=1, S=0)
    with shared_statistics(model):  # (as in training: the clean pass's BatchNorm statistics)
        noisy = model(b.x).detach()
        with torch.no_grad(), dropout_off(model):
            quiet = model(b.x)
        assert not torch.allclose(noisy, quiet)
        torch.manual_seed(5)
        with_dropout = method.virtual(model, b.x, noisy).value
        torch.manual_seed(5)
        with dropout_off(model):
            without = method.virtual(model, b.x, quiet).value
    assert torch.allclose(with_dropout, without, rtol=1e-5, atol=1e-7)


def test_er_ray_pass_is_deterministic_on_a_stochastic_model():
    """With train-mode BatchNorm and dropout, ER puts t_0 in the ray pass with dropout off:
    the same directions give the same estimate twice (no dropout noise summed up by V_T)."""
    model, b = bn_net().train(), batch(False)
    assert is_stochastic(model)
    method = ER(eps=0.5, T=4, M=1, S=0)
    with dropout_off(model):
        assert is_stochastic(model)  # BatchNorm still uses batch statistics
    a = method.supervised(model, b.x, b.y, None).value
    c = method.supervised(model, b.x, b.y, None).value
    assert torch.allclose(a, c)
    assert not is_stochastic(model.eval())


def test_er_warmup_searches_without_refinement_first():
    """Steps before ``warmup_updates`` search as with S=0 (VAT's direction, FGM); later steps,
    and calls outside a trainer (``updates=None``), with the S-step refinement."""
    model, b = plain_cnn(), batch(True, torch.float64)

    def loss(method: ER, step: int | None) -> torch.Tensor:
        torch.manual_seed(5)
        return method(model, dataclasses.replace(b, updates=step)).loss

    warm, s0, s2 = ER(eps=0.5, S=2, warmup_updates=3), ER(eps=0.5, S=0), ER(eps=0.5, S=2)
    assert torch.equal(loss(warm, 2), loss(s0, 2))
    assert torch.equal(loss(warm, 3), loss(s2, 3))
    assert torch.equal(loss(warm, None), loss(s2, None))
    assert not torch.equal(loss(s0, 0), loss(s2, 0))


def test_er_search_steps_default_to_vat_direction_semi_supervised():
    """``S`` unset: 1 on a supervised batch, 0 (VAT's direction) on a semi-supervised one, at
    every update; ``S`` set keeps the semi-supervised warm-up (the first 20%)."""
    semi, sup = batch(True), batch(False)

    def at(b: Batch, k: int) -> Batch:
        return dataclasses.replace(b, updates=k, total_updates=100)

    default, explicit = ER(eps=0.5), ER(eps=0.5, S=1)
    assert [default.search_steps(at(sup, k)) for k in (0, 50, 99)] == [1, 1, 1]
    assert [default.search_steps(at(semi, k)) for k in (0, 50, 99)] == [0, 0, 0]
    assert [explicit.search_steps(at(semi, k)) for k in (0, 19, 20, 99)] == [0, 0, 1, 1]
    assert ER(eps=0.5, lam_u=0.0).search_steps(at(semi, 50)) == 1  # reads no unlabeled data


@pytest.mark.parametrize("name", ["vat", "er"])
def test_semi_supervised_terms_and_entmin(name):
    model, b = bn_net().train(), batch(True)
    with_u = make(name, entmin=True)(model, b)
    assert "entropy" in with_u.metrics
    if name == "er":
        assert "energy_u" in with_u.metrics
        off, on = make(name, lam_u=0.0), make(name, lam_u=1.0)
        assert not off.uses_unlabeled and on.uses_unlabeled
        assert "energy_u" not in off(model, b).metrics and on(model, b).metrics["energy_u"] > 0
    no_u = make(name)(model, batch(False))
    assert torch.isfinite(no_u.loss)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_is_a_dataclass_with_cli_fields(name):
    """Every field of every registered method has help text and is an ``erat train`` flag
    whose help names the method; none shadows a training setting."""
    from erat.cli import build_parser
    from erat.config import config_fields

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions}
    for field in dataclasses.fields(make(name)):
        assert field.metadata.get("help"), f"{name}.{field.name} has no help"
        assert field.name not in config_fields(), f"{name}.{field.name} shadows a setting"
        owners = ";".join(re.findall(r"\[([^\]]*)\]", flags[field.name].help))
        assert name in re.split(r"[,;:] ?", owners), flags[field.name].help


def test_er_ray_pass_uses_the_clean_batch_statistics():
    """With train-mode BatchNorm, every ray point is mapped by the clean pass's function:
    T=1, M=1 gives l(x) + E = l(x + eps u) with both ends normalised by the clean batch."""
    from erat.losses import supervised_loss
    from erat.passes import shared_statistics
    from erat.search import fgm_direction

    model, b = bn_net(), batch(False)
    model.train()
    model[3].p = 0.0  # no dropout: BatchNorm alone makes the pass batch-dependent
    method = ER(eps=0.5, T=1, M=1, S=0)
    with shared_statistics(model):
        clean = cross_entropy(model(b.x), b.y)
        est = method.supervised(model, b.x, b.y, clean).value
    with supervised_search(model):
        u = fgm_direction(supervised_loss(model, b.y), b.x)
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    inner = model[0](b.x)
    bn.running_mean.copy_(inner.mean((0, 2, 3)).detach())
    bn.running_var.copy_(inner.var((0, 2, 3), unbiased=False).detach())
    with torch.no_grad():  # eval mode with the clean batch's statistics as running ones
        end = cross_entropy(model.eval()((b.x + 0.5 * u).clamp(0, 1)), b.y)
    bn.running_mean.copy_(stats[0])
    bn.running_var.copy_(stats[1])
    rises = end > clean.detach()
    assert rises.any()
    assert torch.allclose((clean.detach() + est)[rises], end[rises], atol=1e-5)


@pytest.mark.parametrize("name", ["vat", "er"])
def test_virtual_search_probes_the_clean_pass_function(name, monkeypatch):
    """The power iteration runs on the function of the clean training pass (train-mode
    BatchNorm with the clean batch's statistics, running statistics untouched), and its
    target is the clean pass's logits: ``v`` is exactly 0 at ``x`` for the searched function.
    """
    import erat.methods.er as er_module
    import erat.methods.vat as vat_module

    model, b = bn_net().train(), batch(True)
    model[3].p = 0.0
    bn = model[1]
    seen = []
    module = er_module if name == "er" else vat_module
    real = module.vat_direction

    def spy(fn, x, target, **kw):
        assert not bn.track_running_stats  # for the pass: nothing written
        with torch.no_grad():
            value_at_x = fn(x)
        seen.append((x.clone(), target.detach().clone(), value_at_x, bn.training))
        return real(fn, x, target, **kw)

    monkeypatch.setattr(module, "vat_direction", spy)
    before = copy.deepcopy(model)
    make(name, lam=0.0)(model, b)
    (x, target, value_at_x, training), = seen
    assert training  # batch statistics, not the running ones
    assert torch.allclose(value_at_x, target, atol=1e-5)
    with torch.no_grad():  # the clean pass: train mode, the unlabeled rows' statistics
        h = before[0](x)
        stats = h[len(b.x):]
        mean, var = stats.mean((0, 2, 3)), stats.var((0, 2, 3), unbiased=False)
        bn0 = before[1]
        h = (h - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + bn0.eps).sqrt()
        clean = before[2:](h * bn0.weight.view(1, -1, 1, 1) + bn0.bias.view(1, -1, 1, 1))
        running = before.eval()(x)
    assert torch.allclose(target, clean, atol=1e-5)
    assert not torch.allclose(target, running, atol=1e-3)


def test_er_combined_objective_reduces_to_its_parts():
    """``l + lam E_ce + lam_kl E_kl``: with ``lam_kl = 0`` it is plain ER, with ``lam = 0``
    the clean loss plus the virtual energy of the labeled inputs alone."""
    model, b = plain_cnn(torch.float32), batch(False, n=16)

    def loss(method):
        torch.manual_seed(7)
        return method(model, b).loss

    assert torch.equal(loss(ER(eps=0.5, lam_kl=0.0)), loss(ER(eps=0.5)))
    both = ER(eps=0.5, lam=1.0, lam_kl=2.0)
    torch.manual_seed(7)
    out = both(model, b)
    clean = cross_entropy(model(b.x), b.y).mean()
    assert torch.allclose(out.loss, clean + out.metrics["energy"] + 2 * out.metrics["energy_kl"])
    kl_only = ER(eps=0.5, lam=0.0, lam_kl=1.0)
    torch.manual_seed(7)
    out = kl_only(model, b)
    assert "energy" not in out.metrics
    assert torch.allclose(out.loss, clean + out.metrics["energy_kl"])


def test_er_radius_ramp():
    er = ER(eps=2.0, ramp=0.5)
    b = batch(False)
    assert er.radius(b) == 2.0  # outside a trainer
    assert er.radius(dataclasses.replace(b, updates=0, total_updates=100)) == 2.0 / 50
    assert er.radius(dataclasses.replace(b, updates=24, total_updates=100)) == 1.0
    assert er.radius(dataclasses.replace(b, updates=80, total_updates=100)) == 2.0


def test_ball_is_the_training_radius_and_norm_of_every_method():
    """``ball`` reads ``eps`` and ``norm`` (the Method protocol's training ball): None for
    ERM, a float for a fraction, l2 where a method has no norm field."""
    assert ball(build_method("erm")) == ("l2", None)
    assert ball(build_method("pgd", eps="8/255", norm="linf")) == ("linf", 8 / 255)
    for name in method_names():
        norm, eps = ball(build_method(name))
        assert norm in ("l2", "linf") and (eps is None or isinstance(eps, float)), name


def test_numpy_numbers_are_numbers():
    """``eps=np.float32(1.0)`` was refused as "eps must be a number"; stored as Python's, so
    that config.yaml can hold them."""
    import numpy as np

    from erat.config import TrainConfig
    from erat.fit import FitOptions

    er = build_method("er", eps=np.float32(1.0), S=np.int64(3))
    assert (er.eps, er.S) == (1.0, 3) and type(er.eps) is float and type(er.S) is int
    options = FitOptions(epochs=np.int64(2), lr=np.float64(0.1))
    assert type(options.epochs) is int and type(options.lr) is float
    assert type(TrainConfig(labels=np.int32(100)).labels) is int


def test_help_on_a_method_or_attack_lists_its_settings():
    """A library user read ER's settings (T, M, S, lam, ...) only in METHOD.md or the
    command line's --help: ``help(ER)`` now lists them, defaults and help as the flags'."""
    from erat.attacks.base import ATTACKS
    from erat.methods import METHODS

    er = METHODS["er"].__doc__
    assert er.startswith("The energy regulariser") and "build_method('er', key=value)" in er
    assert "- ``T`` (default 1): ER: segments per ray" in er
    assert "- ``restarts`` (default 1): PGD restarts" in ATTACKS["pgd"].__doc__
