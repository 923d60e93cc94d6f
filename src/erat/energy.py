"""The energy of the loss around an input: ray variation, energy estimators, certificate.

Zhang, Huang, Xu, *On Model Robustness Against Adversarial Examples*, arXiv 1911.06479;
the equations are those of METHOD.md sections 2-3. Threat model: the l2 ball of radius
``eps`` around ``x`` in pixel space, every point clipped to ``[0, 1]``.

- ``V_T(x, u) = sum_{k=1..T} |l(x + t_k u) - l(x + t_{k-1} u)|``, ``t_k = k eps / T``
  (METHOD.md section 3), a lower bound of the ray variation ``V(x, u)`` (section 2);
- ``E_hat(x) = reduce_m V_T(x, u_m)`` over ``M`` unit directions: ``u_1`` from an adversarial
  search (FGM, ``S``-step PGD, or VAT's power iteration for the virtual loss), ``u_2..u_M``
  uniformly random; ``reduce`` is ``max`` (E is a sup) or ``mean`` (the average ``Ebar``);
- the certificate ``l(x) + E(x) < ln 2`` (section 2).

Loss functions map points ``[N, C, H, W]`` to per-point losses ``[N]``. To evaluate all
``M*T`` ray points of a batch of ``B`` inputs in one forward pass, a loss function is
called on ``R`` stacked copies of the batch (``N = R*B``, block-major: row ``r*B + i``
belongs to sample ``i``); :func:`supervised_loss` and :func:`virtual_loss` repeat their
labels / targets to match, and a loss that acts row by row (e.g. linear) needs nothing.

Directions are computed without a graph for the weights and held constant; gradients flow
through the loss values at the ray points, so ``E_hat`` can be trained on. The caller sets
the model's mode: supervised searches under :func:`erat.perturb.search_mode`, virtual ones
under :func:`erat.perturb.clean_function`, ray points trained on with the clean pass's
batch statistics and dropout off (see :mod:`erat.methods.er`).

Example::

    est = energy(supervised_loss(model, y), x, eps=2.0, T=2, M=2)
    est.value            # [B], the estimate of E(x)
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from erat.losses import cross_entropy, kl_div
from erat.perturb import LossFn, input_grad, pgd, search_mode, vat_direction
from erat.threat import Threat, l2_norm, per_sample, random_unit, unit_l2

Reduce = Literal["max", "mean"]
REDUCES: tuple[Reduce, ...] = ("max", "mean")
LN2 = math.log(2.0)
CERTIFICATE_NOTE = (
    "l(x) + E_hat(x) < ln 2 certifies every point of the l2 ball only as far as the estimate "
    "E_hat (a lower bound of the energy E: finitely many directions and ray segments) "
    "reaches E; it is a diagnostic, not a proof."
)


class EnergyEstimate(NamedTuple):
    """Result of :func:`energy`; ``value`` and ``per_direction`` carry the graph of the
    ray losses."""

    value: Tensor  # [B]        E_hat(x) = reduce_m V_T(x, u_m)
    per_direction: Tensor  # [B, M]     V_T(x, u_m)
    ray_losses: Tensor  # [B, M, T+1] l(x + t_k u_m), k = 0..T
    directions: Tensor  # [M, B, ...] unit directions u_m (detached)


def _tile(t: Tensor, n: int) -> Tensor:
    """``t`` [B, ...] repeated to match ``n = R*B`` rows, block-major."""
    reps, rem = divmod(n, t.shape[0])
    if rem:
        raise ValueError(f"{n} points are not whole copies of a batch of {t.shape[0]}")
    return t if reps == 1 else t.repeat(reps, *([1] * (t.dim() - 1)))


def supervised_loss(model: nn.Module, y: Tensor) -> LossFn:
    """``l(z) = CE(p(.|z), y)`` per point, tileable over stacked copies of the batch."""
    return lambda z: cross_entropy(model(z), _tile(y, z.shape[0]))


def virtual_loss(model: nn.Module, target_logits: Tensor) -> LossFn:
    """``v(z) = KL(p(.|x) || p(.|z))`` per point with ``p(.|x)`` from ``target_logits``
    (detached here), tileable over stacked copies of the batch."""
    target = target_logits.detach()
    return lambda z: kl_div(_tile(target, z.shape[0]), model(z))


def _unit_or_random(v: Tensor) -> Tensor:
    """Unit l2 directions; a sample whose vector is zero (flat loss) gets a random one."""
    zero = l2_norm(v) == 0
    if not zero.any():  # (draws no random numbers in the usual case)
        return unit_l2(v).detach()
    return torch.where(per_sample(zero, v), random_unit(v), unit_l2(v)).detach()


def fgm_direction(loss_fn: LossFn, x: Tensor) -> Tensor:
    """The normalised input gradient ``g/||g||`` (one l2 FGM step, METHOD.md section 3)."""
    _, grad = input_grad(loss_fn, x)
    return _unit_or_random(grad)


def search_direction(
    loss_fn: LossFn,
    x: Tensor,
    eps: float,
    *,
    S: int = 0,
    start_direction: Tensor | None = None,
    step_size: float | None = None,
) -> Tensor:
    """The adversarial direction ``u_1`` of METHOD.md section 3, unit l2 per sample.

    ``S = 0``: ``start_direction`` normalised if given (e.g. VAT's power iteration for the
    virtual loss, whose input gradient at ``x`` vanishes), else the FGM direction.
    ``S > 0``: ``S`` l2 PGD steps maximising the end-point loss, from a random point of
    the ball (as in PGD-AT) or from ``x + eps * start_direction``; then
    ``u_1 = (x_adv - x) / ||x_adv - x||``. The random start matters: a search that always
    starts at ``x`` is deterministic, and training against it teaches the model to mask its
    gradient at ``x`` (measured on digits, ER with S=3 from ``x``: PGD-l2 at 0.5 without
    random start left 76% correct, with random start 14%).
    """
    if S == 0:
        return fgm_direction(loss_fn, x) if start_direction is None else _unit_or_random(
            start_direction
        )
    start = None if start_direction is None else x + eps * start_direction
    x_adv = pgd(loss_fn, x, Threat("l2", eps), steps=S, step_size=step_size,
                random_start=start is None, start=start)
    return _unit_or_random(x_adv - x)


def _eval_points(loss_fn: LossFn, points: Tensor, batch: int, max_points: int | None) -> Tensor:
    """``loss_fn`` on ``points`` [R*B, ...] in as few passes as ``max_points`` allows."""
    if max_points is None or points.shape[0] <= max_points:
        return loss_fn(points)
    step = max(1, max_points // batch) * batch  # whole copies of the batch per pass
    return torch.cat([loss_fn(p) for p in points.split(step)])


def _ray_losses(
    loss_fn: LossFn, x: Tensor, dirs: Tensor, eps: float, T: int,
    loss_at_x: Tensor | None, max_points: int | None,
) -> Tensor:
    """``l(x + t_k u_m)`` for ``k = 0..T`` as ``[M, T+1, B]``; points clipped point-wise."""
    M, B = dirs.shape[:2]
    if eps == 0:  # every ray point is x: l(x) repeated, so V_T = 0 exactly by construction
        l0 = loss_fn(x) if loss_at_x is None else loss_at_x
        return l0.view(1, 1, B).expand(M, T + 1, B)
    t = torch.tensor([k * eps / T for k in range(1, T + 1)], dtype=x.dtype, device=x.device)
    t = t.view(1, T, 1, *([1] * (x.dim() - 1)))
    pts = (x.unsqueeze(0).unsqueeze(0) + t * dirs.unsqueeze(1)).clamp(0.0, 1.0)  # [M,T,B,...]
    pts = pts.reshape(M * T * B, *x.shape[1:])
    if loss_at_x is None:  # t_0 in the same pass (same batch statistics as the ray)
        losses = _eval_points(loss_fn, torch.cat([x, pts]), B, max_points)
        l0, ray = losses[:B], losses[B:]
    else:
        l0, ray = loss_at_x, _eval_points(loss_fn, pts, B, max_points)
    ray = ray.view(M, T, B)
    return torch.cat([l0.to(ray.dtype).view(1, 1, B).expand(M, 1, B), ray], dim=1)


def ray_variation(
    loss_fn: LossFn, x: Tensor, u: Tensor, eps: float, T: int, *,
    loss_at_x: Tensor | None = None, max_points: int | None = None,
) -> Tensor:
    """``V_T(x, u)`` [B] of METHOD.md section 3 along the (constant) direction ``u`` [B, ...].

    All ``T`` ray points go through one forward pass of ``T*B`` points (``max_points``
    splits it); ``loss_at_x`` [B], when given, is reused for ``t_0``.
    """
    losses = _ray_losses(loss_fn, x, u.detach().unsqueeze(0), eps, T, loss_at_x, max_points)
    return losses.diff(dim=1).abs().sum(dim=1)[0]


def _check(eps: float, T: int, M: int, S: int, reduce: str) -> None:
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if T < 1 or M < 1 or S < 0:
        raise ValueError(f"need T >= 1, M >= 1, S >= 0, got T={T}, M={M}, S={S}")
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {', '.join(REDUCES)}, got {reduce!r}")


def energy(
    loss_fn: LossFn,
    x: Tensor,
    eps: float,
    *,
    T: int = 2,
    M: int = 2,
    S: int = 0,
    reduce: Reduce = "max",
    loss_at_x: Tensor | None = None,
    first_direction: Tensor | None = None,
    step_size: float | None = None,
    max_points: int | None = None,
) -> EnergyEstimate:
    """The estimate ``E_hat(x) = reduce_m V_T(x, u_m)`` of METHOD.md section 3, per sample.

    ``u_1`` comes from :func:`search_direction` (``S``, ``first_direction``), ``u_2..u_M``
    are uniformly random unit vectors. All ``M*T`` ray points go through ``loss_fn`` in
    one pass of ``M*T*B`` points (plus ``B`` for ``t_0`` unless ``loss_at_x`` is given);
    ``max_points`` caps the points per pass (for evaluation without a graph).
    """
    _check(eps, T, M, S, reduce)
    u1 = search_direction(loss_fn, x, eps, S=S, start_direction=first_direction,
                          step_size=step_size)
    dirs = torch.stack([u1, *(random_unit(x) for _ in range(M - 1))])  # [M, B, ...]
    losses = _ray_losses(loss_fn, x, dirs, eps, T, loss_at_x, max_points)  # [M, T+1, B]
    per_dir = losses.diff(dim=1).abs().sum(dim=1).T  # [B, M]
    value = per_dir.amax(dim=1) if reduce == "max" else per_dir.mean(dim=1)
    return EnergyEstimate(value, per_dir, losses.permute(2, 0, 1), dirs)


def certify(loss_at_x: Tensor, energy: Tensor | EnergyEstimate) -> Tensor:
    """``l(x) + E(x) < ln 2`` per sample (METHOD.md section 2, cross-entropy loss).

    True means every point of the ball keeps ``p(y|z) > 1/2`` -- but only as far as the
    estimate reaches the true energy: ``E_hat`` is a lower bound (see ``CERTIFICATE_NOTE``).
    """
    e = energy.value if isinstance(energy, EnergyEstimate) else energy
    return (loss_at_x.detach() + e.detach()) < LN2


def _summary(prefix: str, v: Tensor) -> dict[str, float]:
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    p10, p25, p50, p75, p90 = torch.quantile(v.double(), q).tolist()
    return {f"{prefix}_mean": v.double().mean().item(), f"{prefix}_median": p50,
            f"{prefix}_std": v.double().std().item() if v.numel() > 1 else 0.0,
            f"{prefix}_p10": p10, f"{prefix}_p25": p25, f"{prefix}_p75": p75,
            f"{prefix}_p90": p90, f"{prefix}_max": v.max().item()}


def _report_batch(model: nn.Module, x: Tensor, y: Tensor, s: dict) -> dict[str, Tensor]:
    """Per-sample report quantities for one batch (model already in eval mode)."""
    run = partial(energy, x=x, eps=s["eps"], T=s["T"], max_points=s["max_points"])
    with torch.no_grad():
        logits = model(x)
    l0, ce = cross_entropy(logits, y), supervised_loss(model, y)
    zero, v = torch.zeros_like(l0), virtual_loss(model, logits)
    with torch.no_grad():  # the searches re-enable grad, for the input only
        fgm_ray = run(ce, M=1, first_direction=fgm_direction(ce, x), loss_at_x=l0)
        strong = run(ce, M=s["M"], S=s["S"], loss_at_x=l0)
        d = vat_direction(model, x, logits, xi=s["xi"], power_iters=s["power_iters"])
        vat_ray = run(v, M=1, first_direction=d, loss_at_x=zero)
        strong_v = run(v, M=s["M"], S=s["S"], first_direction=d, loss_at_x=zero)
    e = torch.maximum(strong.value, fgm_ray.value)  # max over the union of directions
    return {"loss": l0, "correct": (logits.argmax(1) == y).float(), "energy": e,
            "energy_random": strong.per_direction[:, 1:].mean(1) if s["M"] > 1 else e,
            "at_term": fgm_ray.ray_losses[:, 0, -1] - l0,
            "vat_term": vat_ray.ray_losses[:, 0, -1],
            "virtual_energy": torch.maximum(strong_v.value, vat_ray.value),
            "certified": certify(l0, e).float()}


def energy_report(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, T: int = 16, M: int = 16,
    S: int = 20, batch_size: int = 128, seed: int = 0, xi: float = 1e-2,
    power_iters: int = 1, max_points: int = 8192,
) -> dict:
    """Energy statistics of a trained model on ``x`` [N, ...], ``y`` [N] (``erat energy``).

    A strong estimate in eval mode, without gradients to the weights: ``u_1`` from
    ``S``-step l2 PGD, ``M - 1`` random directions, ``T`` segments, plus the FGM ray (so
    ``E_hat`` covers AT's direction); for the virtual loss, VAT's direction (``xi``,
    ``power_iters``) refined by ``S`` PGD steps, plus its own ray. Reports AT's term
    ``l(x + eps u_fgm) - l(x)``, VAT's term ``v(x + eps d_vat)``, both energies, the mean
    over random directions (``Ebar``) and the certified fraction ``l(x) + E_hat(x) < ln 2``.
    Per sample until the final statistics; JSON-ready.

    Example::

        report = energy_report(model, x_test[:1000], y_test[:1000], eps=2.0)
    """
    _check(eps, T, M, S, "max")
    s = {"eps": eps, "norm": "l2", "T": T, "M": M, "S": S, "n": len(y), "seed": seed,
         "xi": xi, "power_iters": power_iters, "reduce": "max", "mode": "eval",
         "batch_size": batch_size, "max_points": max_points}
    cuda = [x.device] if x.device.type == "cuda" else []
    parts: list[dict[str, Tensor]] = []
    with search_mode(model), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            got = _report_batch(model, xb, yb, s)
            parts.append({k: v.detach().cpu() for k, v in got.items()})
    r = {k: torch.cat([p[k] for p in parts]).double() for k in parts[0]}
    out = {"n": len(y), "clean_acc": r["correct"].mean().item(),
           "loss_mean": r["loss"].mean().item()}
    out |= _summary("energy", r["energy"]) | _summary("virtual_energy", r["virtual_energy"])
    out |= {"energy_random_mean": r["energy_random"].mean().item(),
            "at_term_mean": r["at_term"].mean().item(),
            "vat_term_mean": r["vat_term"].mean().item(),
            "certified_frac": r["certified"].mean().item(),
            "certificate_note": CERTIFICATE_NOTE, "settings": s}
    return out
