"""The energy of the loss around an input: ray variation, the energy estimator, certificate.

Zhang, Huang, Xu, *On Model Robustness Against Adversarial Examples*, arXiv 1911.06479;
the equations are those of METHOD.md sections 2-3. Threat model: the l2 ball of radius
``eps`` around ``x`` in pixel space, or the l-inf ball (``norm="linf"``, section 3d: rays
``x + t u`` with ``||u||_inf = 1``), every point clipped to ``[0, 1]``.

- ``V_T(x, u) = sum_{k=1..T} |l(x + t_k u) - l(x + t_{k-1} u)|``, ``t_k = k eps / T``
  (METHOD.md section 3), a lower bound of the ray variation ``V(x, u)`` (section 2);
- ``E_hat(x) = reduce_m V_T(x, u_m)`` over ``M`` unit directions: ``u_1`` from an adversarial
  search (:func:`erat.search.search_direction`), ``u_2..u_M`` random (uniform on the l2
  sphere; random sign vectors, the cube's vertices, in l-inf); ``reduce`` is ``max`` (E is a
  sup) or ``mean`` (the average ``Ebar``);
- ``G_T(x, u)``, the gradient-norm integral ``integral_0^eps ||grad l(x + s u)||_* ds`` by the
  trapezoid rule over the same ``T + 1`` ray points (METHOD.md sections 3b, 3d; ``||.||_*``
  the dual norm: l2 for the l2 ball, l1 for the l-inf ball): an upper bound of the ray
  variation that does not telescope where the loss is monotone (``estimator``);
- the certificate ``l(x) + E(x) < ln 2`` (section 2).

Loss closures (:mod:`erat.losses`) map points ``[N, ...]`` to losses ``[N]``; all ``M*T``
ray points of a batch go through one call on stacked copies of the batch.

Directions are computed without a graph for the weights and held constant; gradients flow
through the loss values at the ray points, so ``E_hat`` can be trained on. The caller sets
the model's mode (:mod:`erat.passes`: a search recipe for ``u_1``, :func:`~erat.passes.ray_pass`
for the points trained on; see :mod:`erat.methods.er`).

Example::

    est = energy(supervised_loss(model, y), x, eps=2.0, T=2, M=2)
    est.value            # [B], the estimate of E(x)
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from erat import fields
from erat.losses import LossFn
from erat.search import search_direction
from erat.threat import Norm, check_radius, dual_norm, random_direction

Reduce = Literal["max", "mean"]
REDUCES: tuple[Reduce, ...] = ("max", "mean")
Estimator = Literal["variation", "gradient"]
ESTIMATORS: tuple[Estimator, ...] = ("variation", "gradient")
LN2 = math.log(2.0)
CERTIFICATE_NOTE = (
    "l(x) + E_hat(x) < ln 2 certifies every point of the ball only as far as the estimate "
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
    grad_norms: Tensor | None = None  # [B, M, T+1] ||grad l(x + t_k u_m)|| (gradient estimator)


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
    pts = _ray_points(x, dirs, eps, T)
    if loss_at_x is None:  # t_0 in the same pass (same batch statistics as the ray)
        losses = _eval_points(loss_fn, torch.cat([x, pts]), B, max_points)
        l0, ray = losses[:B], losses[B:]
    else:
        l0, ray = loss_at_x, _eval_points(loss_fn, pts, B, max_points)
    ray = ray.view(M, T, B)
    return torch.cat([l0.to(ray.dtype).view(1, 1, B).expand(M, 1, B), ray], dim=1)


def _ray_points(x: Tensor, dirs: Tensor, eps: float, T: int) -> Tensor:
    """The points ``clip(x + t_k u_m)``, ``k = 1..T``, as ``[M*T*B, ...]`` (block-major)."""
    M, B = dirs.shape[:2]
    # k * eps / T in float64 on the device, then x's dtype (the values of a Python list, with
    # no host-to-device copy, which would wait for the GPU's queue)
    t = (torch.arange(1, T + 1, dtype=torch.float64, device=x.device) * eps / T).to(x.dtype)
    t = t.view(1, T, 1, *([1] * (x.dim() - 1)))
    pts = (x.unsqueeze(0).unsqueeze(0) + t * dirs.unsqueeze(1)).clamp(0.0, 1.0)  # [M,T,B,...]
    return pts.reshape(M * T * B, *x.shape[1:])


def gradient_norms(loss_fn: LossFn, x: Tensor, dirs: Tensor, eps: float, T: int,
                   norm: Norm = "l2") -> tuple[Tensor, Tensor]:
    """``l`` and the dual norm ``||grad_z l(z)||_*`` (l2 for ``norm="l2"``, l1 for
    ``"linf"``) at ``x`` and the ``T`` points of each ray, both ``[M, T+1, B]``, in one
    pass; differentiable (a double backward) when grad is enabled."""
    M, B = dirs.shape[:2]
    graph = torch.is_grad_enabled()
    z = torch.cat([x, _ray_points(x, dirs, eps, T)]).detach().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(z)
        (g,) = torch.autograd.grad(losses.sum(), z, create_graph=graph)
    norms = dual_norm(g, norm)
    if not graph:
        losses, norms = losses.detach(), norms.detach()

    def rays(v: Tensor) -> Tensor:  # [B + M*T*B] -> [M, T+1, B]
        return torch.cat([v[:B].view(1, 1, B).expand(M, 1, B), v[B:].view(M, T, B)], dim=1)

    return rays(losses), rays(norms)


def gradient_bound(norms: Tensor, eps: float) -> Tensor:
    """``G_T = eps/T * (g_0/2 + g_1 + ... + g_{T-1} + g_T/2)`` over the last dimension
    ``[..., T+1]``: the trapezoid rule for ``integral_0^eps ||grad l(x + s u)||_* ds``
    (``g_k`` the dual norms of :func:`gradient_norms`)."""
    T = norms.shape[-1] - 1
    w = torch.ones(T + 1, dtype=norms.dtype, device=norms.device)
    w[0] = w[-1] = 0.5
    return (norms * w).sum(-1) * (eps / T)


def ray_variation(
    loss_fn: LossFn, x: Tensor, u: Tensor, eps: float, T: int, *,
    loss_at_x: Tensor | None = None, max_points: int | None = None,
) -> Tensor:
    """``V_T(x, u)`` [B] of METHOD.md section 3 along the (constant) direction ``u`` [B, ...].

    All ``T`` ray points go through one forward pass of ``T*B`` points (``max_points``
    splits it); ``loss_at_x`` [B], when given, is reused for ``t_0``.
    """
    losses = _ray_losses(loss_fn, x, u.detach().unsqueeze(0), eps, T, loss_at_x, max_points)
    return _variation(losses)[0]


def _variation(losses: Tensor) -> Tensor:
    """``V_T = sum_t |l(t_t) - l(t_{t-1})|`` [M, B] of ray losses [M, T+1, B]."""
    return losses.diff(dim=1).abs().sum(dim=1)


def check_settings(eps: float, T: int, M: int, S: int, reduce: str, norm: str = "l2", *,
                   warn: bool = True) -> None:
    """One-line errors for settings of :func:`energy` a user can get wrong; the radius by
    :func:`erat.threat.check_radius` (``warn``: an l2-sized l-inf radius warns once)."""
    check_radius(eps, norm, warn=warn)
    for name, value, least in (("T", T, 1), ("M", M, 1), ("S", S, 0)):
        fields.integer(name, value, least)
    fields.choice("reduce", reduce, REDUCES)


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
    estimator: Estimator = "variation",
    norm: Norm = "l2",
) -> EnergyEstimate:
    """The estimate ``E_hat(x) = reduce_m V_T(x, u_m)`` of METHOD.md section 3, per sample
    (``estimator="gradient"``: ``reduce_m G_T(x, u_m)``, section 3b), in the l2 or the
    l-inf ball (``norm``, section 3d).

    ``u_1`` comes from :func:`search_direction` (``S``, ``first_direction``, ``norm``),
    ``u_2..u_M`` are random directions of unit size in ``norm``
    (:func:`erat.threat.random_direction`). The radius is checked without a warning (the
    callers that take it from a user warn). All ``M*T`` ray points go through ``loss_fn`` in
    one pass of ``M*T*B`` points (plus ``B`` for ``t_0`` unless ``loss_at_x`` is given;
    the gradient estimator always evaluates ``x`` again, for its gradient);
    ``max_points`` caps the points per pass (for evaluation without a graph).
    """
    check_settings(eps, T, M, S, reduce, norm, warn=False)
    fields.choice("estimator", estimator, ESTIMATORS)
    u1 = search_direction(loss_fn, x, eps, S=S, start_direction=first_direction,
                          step_size=step_size, norm=norm)
    dirs = torch.stack([u1, *(random_direction(x, norm) for _ in range(M - 1))])  # [M, B, ..]
    norms = None
    if estimator == "gradient":
        losses, norms = gradient_norms(loss_fn, x, dirs, eps, T, norm)  # [M, T+1, B] each
        per_dir = gradient_bound(norms.permute(2, 0, 1), eps)  # [B, M]
    else:
        losses = _ray_losses(loss_fn, x, dirs, eps, T, loss_at_x, max_points)  # [M, T+1, B]
        per_dir = _variation(losses).T  # [B, M]
    value = per_dir.amax(dim=1) if reduce == "max" else per_dir.mean(dim=1)
    return EnergyEstimate(value, per_dir, losses.permute(2, 0, 1), dirs,
                          None if norms is None else norms.permute(2, 0, 1))


def certify(loss_at_x: Tensor, energy: Tensor | EnergyEstimate) -> Tensor:
    """``l(x) + E(x) < ln 2`` per sample (METHOD.md section 2, cross-entropy loss).

    True means every point of the ball keeps ``p(y|z) > 1/2`` -- but only as far as the
    estimate reaches the true energy: ``E_hat`` is a lower bound (see ``CERTIFICATE_NOTE``).
    """
    e = energy.value if isinstance(energy, EnergyEstimate) else energy
    return (loss_at_x.detach() + e.detach()) < LN2


