"""Threat models: l2 and l-inf balls around inputs in pixel space [0, 1].

Every radius in erat is measured in pixel space: normalisation (mean/std) lives inside the
model, so ``x`` here is always in ``[0, 1]`` and perturbed points are clipped to that box.
All norms and projections are per sample (the first dimension is the batch).

Example::

    threat = Threat("l2", eps=2.0)
    x_adv = threat.project(x, x + delta)   # inside the ball and [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from erat.errors import UserError

Norm = Literal["l2", "linf"]
NORMS: tuple[Norm, ...] = ("l2", "linf")


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``[B]`` so it broadcasts against ``like`` ``[B, ...]``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample l2 norm ``[B]``, computed in float32."""
    return t.flatten(1).float().norm(dim=1)


def linf_norm(t: Tensor) -> Tensor:
    """Per-sample l-inf norm ``[B]``."""
    return t.flatten(1).abs().amax(dim=1).float()


def unit_l2(t: Tensor, tiny: float = 1e-12) -> Tensor:
    """Each sample scaled to unit l2 norm (zero stays zero)."""
    return t / per_sample(l2_norm(t).clamp_min(tiny), t).to(t.dtype)


def random_unit(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Directions drawn uniformly from the unit l2 sphere, one per sample."""
    g = torch.randn(like.shape, generator=generator, dtype=torch.float32, device=like.device)
    return unit_l2(g).to(like.dtype)


@dataclass(frozen=True)
class Threat:
    """A norm ball of radius ``eps`` in pixel space, intersected with the box ``[0, 1]``."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise UserError(f"eps must be a finite number >= 0, got {self.eps}")

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
