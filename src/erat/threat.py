"""Threat models: l2 and l-inf balls around inputs in pixel space [0, 1].

Every radius in erat is measured in pixel space: normalisation (mean/std) lives inside the
model, so ``x`` here is always in ``[0, 1]`` and perturbed points are clipped to that box.
All norms and projections are per sample (the first dimension is the batch).

Every radius a user gives is checked here, once (:func:`check_radius`): a negative or
non-finite radius is refused, an l-inf radius above 1 is refused (at 1 the ball holds the
whole box) and one above ``LINF_L2_SIZED`` warns once (it looks like an l2 radius);
METHOD.md section 3d. Directions of unit size in either norm (:func:`unit`,
:func:`random_direction`) and the dual norm of a gradient (:func:`dual_norm`) serve the
energy's rays (section 3d: ``||u||_inf = 1`` rays and random sign vectors in l-inf).

Example::

    threat = Threat("l2", eps=2.0)
    x_adv = threat.project(x, x + delta)   # inside the ball and [0, 1]
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from erat.errors import UserError

Norm = Literal["l2", "linf"]
NORMS: tuple[Norm, ...] = ("l2", "linf")
LINF_L2_SIZED = 0.4  # an l-inf radius above this on [0, 1] pixels looks like an l2 radius
LINF_RADII = "l-inf radii are about 0.3 on MNIST, 8/255 on CIFAR-10 and SVHN"
_warned: set[float] = set()  # radii already warned about (once each, whatever their name)


def norm_name(norm: str) -> str:
    """The name tables and the console give a norm: ``linf`` -> ``l-inf``."""
    return "l-inf" if norm == "linf" else norm


def ball_name(norm: str, eps: float) -> str:
    """The name tables and the console give a ball: ``linf``, 8/255 -> ``l-inf 8/255``
    (:func:`radius_name`), ``l2``, 0.5 -> ``l2 0.5``."""
    return f"{norm_name(norm)} {radius_name(norm, f'{eps:g}')}"


def check_radius(eps: object, norm: str = "l2", name: str = "eps", *, warn: bool = True
                 ) -> float:
    """The one check of a radius ``eps`` in ``norm`` (METHOD.md section 3d); returns it as a
    float. Raises a one-line ``UserError`` for an unknown norm, a radius that is not a
    finite number >= 0, and an l-inf radius above 1 (the ball then holds the whole box
    ``[0, 1]^d``: an l2 radius given with ``--norm linf``). An l-inf radius above
    ``LINF_L2_SIZED``, and an l2 radius of 1 to 16 whole 8-bit levels (8/255: an l-inf radius
    given without ``--norm linf``), warn once per radius in a process (``warn=False``: never,
    for radii the program derives rather than the user gives)."""
    if norm not in NORMS:
        raise UserError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not math.isfinite(eps) or eps < 0):
        raise UserError(f"{name} must be a finite number >= 0, got {eps!r}")
    eps = float(eps) + 0.0  # (-0.0 is 0.0: one radius, one result key)
    if norm == "linf" and eps > 1:
        meant = f"; {eps:g} of 255 levels is {eps:g}/255 = {eps / 255:.6g}" \
            if eps <= 255 and eps == int(eps) else ""
        raise UserError(f"an l-inf radius {name}={eps:g} on [0, 1] pixels is above 1, where "
                        f"the ball holds every image: it looks like an l2 radius or pixels of "
                        f"0..255 ({LINF_RADII}{meant})")
    if warn and norm == "linf" and eps > LINF_L2_SIZED and eps not in _warned:
        _warned.add(eps)
        warnings.warn(f"an l-inf radius {name}={eps:g} on [0, 1] pixels looks like an l2 "
                      f"radius ({LINF_RADII})", UserWarning, stacklevel=2)
    levels = round(eps * 255)
    if warn and norm == "l2" and 1 <= levels <= 16 and abs(eps * 255 - levels) < 1e-6 \
            and eps not in _warned:  # (8/255 given without --norm linf)
        _warned.add(eps)
        warnings.warn(f"an l2 radius {name}={eps:g} is {levels}/255, an l-inf radius "
                      f"({LINF_RADII}); pass --norm linf if that is the threat model",
                      UserWarning, stacklevel=2)
    return eps


def radius_name(norm: str, eps: str) -> str:
    """A radius as a key writes it, an l-inf one of whole 8-bit levels as ``k/255``
    (``0.0313725`` -> ``8/255``)."""
    k = round(float(eps) * 255)
    digits = len(eps.split(".")[-1].lstrip("0")) if "." in eps and "e" not in eps else 0
    return f"{k}/255" if norm == "linf" and 0 < k < 255 and digits >= 5 \
        and f"{k / 255:g}" == eps else eps  # (0.2 stays 0.2; 0.0313725 is 8/255)


def check_radius_fits(eps: float, norm: str, shape: tuple[int, ...] | list[int],
                      name: str = "--eps") -> None:
    """Refuse an l2 radius above the diameter ``sqrt(d)`` of the box ``[0, 1]^d`` of images
    of ``shape``: that ball holds every image, so nothing is measured or trained (the l-inf
    bound, 1, is :func:`check_radius`'s)."""
    d = math.prod(shape)
    if norm == "l2" and eps > math.sqrt(d):
        raise UserError(f"{name} {eps:g} is above {math.sqrt(d):g}, the l2 diameter of "
                        f"{'x'.join(map(str, shape))} images in [0, 1]: that ball holds every "
                        "image; choose a smaller radius")


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``[B]`` so it broadcasts against ``like`` ``[B, ...]``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample l2 norm ``[B]``, computed in float32."""
    return t.flatten(1).float().norm(dim=1)


def linf_norm(t: Tensor) -> Tensor:
    """Per-sample l-inf norm ``[B]``."""
    return t.flatten(1).abs().amax(dim=1).float()


def dual_norm(t: Tensor, norm: Norm) -> Tensor:
    """Per-sample dual norm ``[B]`` of a gradient ``t``: l2 for the l2 ball, l1 for the
    l-inf ball (Hölder: ``<g, u> <= ||g||_* ||u||``; METHOD.md sections 3b and 3d),
    computed in at least float32."""
    v = t.flatten(1).to(torch.promote_types(t.dtype, torch.float32))
    return v.norm(dim=1) if norm == "l2" else v.abs().sum(dim=1)


def unit_l2(t: Tensor, tiny: float = 1e-12) -> Tensor:
    """Each sample scaled to unit l2 norm (zero stays zero)."""
    return t / per_sample(l2_norm(t).clamp_min(tiny), t).to(t.dtype)


def unit(t: Tensor, norm: Norm = "l2", tiny: float = 1e-12) -> Tensor:
    """Each sample scaled to unit size in ``norm`` (zero stays zero): ``t / ||t||_2`` or
    ``t / ||t||_inf``, whose largest entry is then exactly +-1."""
    if norm == "l2":
        return unit_l2(t, tiny)
    return t / per_sample(linf_norm(t).clamp_min(tiny), t).to(t.dtype)


def random_unit(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Directions drawn uniformly from the unit l2 sphere, one per sample."""
    g = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=like.device)
    return unit_l2(g).to(like.dtype)


def random_sign(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random sign vectors (independent +-1 entries), the uniformly random vertices of the
    l-inf unit cube: erat's random l-inf directions (METHOD.md section 3d: the extreme
    points of the ball, where l-inf worst cases lie, and its longest rays)."""
    bits = torch.rand(like.shape, generator=generator, dtype=torch.float32, device=like.device)
    return torch.where(bits < 0.5, -1.0, 1.0).to(like.dtype)


def random_direction(like: Tensor, norm: Norm = "l2",
                     generator: torch.Generator | None = None) -> Tensor:
    """One random direction of unit size in ``norm`` per sample: uniform on the l2 sphere
    (:func:`random_unit`) or a random vertex of the l-inf cube (:func:`random_sign`)."""
    return random_unit(like, generator) if norm == "l2" else random_sign(like, generator)


@dataclass(frozen=True)
class Threat:
    """A norm ball of radius ``eps`` in pixel space, intersected with the box ``[0, 1]``."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm, warn=False)  # (the user's radius warned already)

    def norms(self, r: Tensor) -> Tensor:
        """Per-sample size ``[B]`` of a perturbation in this threat's norm."""
        return l2_norm(r) if self.norm == "l2" else linf_norm(r)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Nearest point to ``x_adv`` (per sample) inside the ball around ``x``, then clipped."""
        r = x_adv - x
        if self.norm == "l2":
            scale = (self.eps / l2_norm(r).clamp_min(1e-12)).clamp(max=1.0)
            r = r * per_sample(scale, r).to(r.dtype)
        else:
            r = r.clamp(-self.eps, self.eps)
        return (x + r).clamp(0.0, 1.0)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """Steepest-ascent direction of unit size in this norm (normalised gradient or sign)."""
        return unit_l2(grad) if self.norm == "l2" else grad.sign()

    def random_start(self, x: Tensor) -> Tensor:
        """A point drawn uniformly from the ball around ``x`` (clipped to ``[0, 1]``)."""
        if self.norm == "linf":
            r = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            d = x[0].numel()
            radius = torch.rand(x.shape[0], device=x.device) ** (1.0 / d) * self.eps
            r = random_unit(x) * per_sample(radius, x).to(x.dtype)
        return (x + r).clamp(0.0, 1.0)
