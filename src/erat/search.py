"""Every direction search of erat, written once and shared by training and evaluation:
FGM/FGSM, PGD with restarts, VAT's power iteration, ER's searched direction and the
landscape's adversarial direction.

Each search is a pure function of the input: ``loss_fn`` maps points ``[B, ...]`` to a
per-sample loss ``[B]`` that the search maximises (:mod:`erat.losses` builds them).
Gradients are taken with respect to the input only (``torch.autograd.grad``), so parameter
``.grad`` is never touched, and every result is detached, inside the threat's ball and
inside ``[0, 1]``. The caller picks the model's mode with a recipe of :mod:`erat.passes`.

Two rules live here and nowhere else: the inner searches' default PGD step ``2.5 * eps /
steps`` (:func:`pgd_step_size`, ``STEP_RULE`` for help texts; the evaluation attack's own is
in :mod:`erat.attacks.pgd`) and VAT's float32-safe
finite-difference step ``XI`` (see :mod:`erat.methods.vat`). Directions are of unit size in
the threat's norm (METHOD.md section 3d for l-inf: ``||u||_inf = 1``, FGSM's ``sign(g)``,
random sign vectors).

Example::

    with supervised_search(model):
        x_adv = pgd(supervised_loss(model, y), x, Threat("l2", 2.0), steps=10)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from erat.losses import LossFn, kl_div, supervised_loss
from erat.threat import (
    Norm,
    Threat,
    l2_norm,
    per_sample,
    random_direction,
    random_unit,
    unit,
    unit_l2,
)

STEP_RULE = "2.5*eps/steps"  # PGD's default step (Madry et al. 2018 use 2.5 eps / steps)
XI = 1e-2  # VAT's finite-difference step: float32-safe (1e-6, the paper's, is not)


def pgd_step_size(eps: float, steps: int, step_size: float | None = None) -> float:
    """``step_size``, or by default ``STEP_RULE``: ``2.5 * eps / steps`` (at least one
    step), so that the steps can cross the ball and come back to its boundary."""
    return 2.5 * eps / max(steps, 1) if step_size is None else step_size


def input_grad(loss_fn: LossFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample loss ``[B]`` at ``x`` (detached) and its gradient with respect to ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach()


def fgm(loss_fn: LossFn, x: Tensor, threat: Threat) -> Tensor:
    """One step of size ``eps`` along the steepest-ascent direction (Goodfellow et al. 2015
    FGSM for l-inf; Miyato et al. 2016 FGM for l2). Returns a detached point."""
    _, grad = input_grad(loss_fn, x)
    return threat.project(x, x + threat.eps * threat.ascent_direction(grad)).detach()


def pgd(
    loss_fn: LossFn,
    x: Tensor,
    threat: Threat,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    start: Tensor | None = None,
) -> Tensor:
    """Projected gradient ascent on ``loss_fn`` (Madry et al. 2018, arXiv 1706.06083).

    ``step_size`` defaults to :func:`pgd_step_size` (``2.5 * eps / steps``). With
    ``restarts > 1`` the point of highest loss over the restarts is kept, per example.
    ``eps = 0`` returns ``x``.
    ``start`` (projected into the ball) replaces the random start, e.g. TRADES' start
    ``x + 0.001 * N(0, 1)`` or a search refined from a given direction.
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got {steps} and {restarts}")
    x = x.detach()
    if threat.eps == 0:
        return x.clone()
    alpha = pgd_step_size(threat.eps, steps, step_size)
    best, best_loss = x.clone(), None
    for _ in range(restarts):
        if start is not None:
            x_adv = threat.project(x, start.detach())
        else:
            x_adv = threat.random_start(x) if random_start else x.clone()
        for _ in range(steps):
            _, grad = input_grad(loss_fn, x_adv)
            x_adv = threat.project(x, x_adv + alpha * threat.ascent_direction(grad))
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            loss = loss_fn(x_adv)
        if best_loss is None:
            best, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            best = torch.where(per_sample(better, x), x_adv, best)
            best_loss = torch.maximum(loss, best_loss)
    return best.detach()


def vat_direction(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    clean_logits: Tensor,
    *,
    xi: float = XI,
    power_iters: int = 1,
) -> Tensor:
    """Unit l2 direction of VAT's power iteration (Miyato et al. 2018, arXiv 1704.03976, eq. 8).

    Starts from a random direction (zero-mean Gaussian, normalised), and takes ``power_iters``
    finite-difference steps of size ``xi`` on ``KL(p(.|x) || p(.|x + xi d))``. The points
    ``x + xi d`` are not clipped: ``xi`` is a differentiation step, not a perturbation.
    In every norm the search is VAT's l2 power iteration; :func:`vat_step` maps ``d`` to
    the ball's perturbation direction.
    """
    target = clean_logits.detach()
    d = random_unit(x)
    for _ in range(power_iters):
        _, grad = input_grad(lambda z: kl_div(target, logits_fn(z)), x + xi * d)
        # where the float32 KL difference vanishes (grad exactly 0), keep the previous d
        # rather than return a zero direction (no perturbation at all)
        d = torch.where(per_sample(l2_norm(grad) == 0, d), d, unit_l2(grad))
    return d.detach()


def vat_step(d: Tensor, norm: Norm = "l2") -> Tensor:
    """The direction of VAT's perturbation ``eps * vat_step(d)`` from the power iteration's
    ``d``: ``d`` itself in l2 (Miyato et al.'s ``eps d``), ``sign(d)`` in l-inf, the
    vertex nearest ``d`` and the l-inf steepest ascent of the virtual loss at VAT's probe
    point (erat's choice, METHOD.md section 3d)."""
    return d if norm == "l2" else d.sign()


def unit_or_random(v: Tensor, norm: Norm = "l2") -> Tensor:
    """Directions of unit size in ``norm`` (:func:`erat.threat.unit`); a sample whose vector
    is zero (flat loss) gets a random one (:func:`erat.threat.random_direction`). On the CPU
    the random numbers are drawn only when a vector is zero; on a GPU always, so that the
    host never waits for the device to tell (the fast path's queue stays full)."""
    zero = l2_norm(v) == 0
    if not v.is_cuda and not zero.any():
        return unit(v, norm).detach()
    return torch.where(per_sample(zero, v), random_direction(v, norm), unit(v, norm)).detach()


def fgm_direction(loss_fn: LossFn, x: Tensor, norm: Norm = "l2") -> Tensor:
    """The steepest-ascent direction of unit size: the normalised input gradient ``g/||g||``
    in l2 (one FGM step, METHOD.md section 3), ``sign(g)`` in l-inf (FGSM, section 3d)."""
    _, grad = input_grad(loss_fn, x)
    return unit_or_random(grad if norm == "l2" else grad.sign(), norm)


def search_direction(
    loss_fn: LossFn,
    x: Tensor,
    eps: float,
    *,
    S: int = 0,
    start_direction: Tensor | None = None,
    step_size: float | None = None,
    norm: Norm = "l2",
) -> Tensor:
    """The adversarial direction ``u_1`` of METHOD.md section 3, of unit size in ``norm``
    per sample (``||u||_2 = 1``, or ``||u||_inf = 1`` in l-inf, section 3d).

    ``S = 0``: ``start_direction`` normalised if given (e.g. VAT's power iteration for the
    virtual loss, whose input gradient at ``x`` vanishes; in l-inf pass
    :func:`vat_step`'s ``sign(d)``), else the FGM direction (FGSM's ``sign(g)`` in l-inf).
    ``S > 0``: ``S`` PGD steps in ``norm`` maximising the end-point loss, from a random point
    of the ball (as in PGD-AT) or from ``x + eps * start_direction``; then
    ``u_1 = (x_adv - x) / ||x_adv - x||``. The random start matters: a search that always
    starts at ``x`` taught the model to mask its gradient at ``x`` (docs/results/findings.md).
    """
    if S == 0:
        if start_direction is None:
            return fgm_direction(loss_fn, x, norm)
        return unit_or_random(start_direction, norm)
    start = None if start_direction is None else x + eps * start_direction
    x_adv = pgd(loss_fn, x, Threat(norm, eps), steps=S, step_size=step_size,
                random_start=start is None, start=start)
    return unit_or_random(x_adv - x, norm)


def adversarial_direction(model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
                          steps: int = 20, norm: Norm = "l2") -> Tensor:
    """Direction ``[1, ...]`` of unit size in ``norm`` from ``x`` ``[1, ...]`` to its PGD point
    in the ``norm`` ball of radius ``eps`` (the loss landscape's direction); the steepest
    ascent if PGD does not move, a random one (:func:`~erat.threat.random_direction`) if the
    gradient is zero too. Run it under a supervised-search recipe."""
    loss_fn = supervised_loss(model, y)
    threat = Threat(norm, eps)
    delta = pgd(loss_fn, x, threat, steps=steps) - x
    if delta.flatten().norm() == 0:
        delta = threat.ascent_direction(input_grad(loss_fn, x)[1])
    return unit(delta, norm) if delta.flatten().norm() > 0 else random_direction(x, norm)
