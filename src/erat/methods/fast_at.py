"""Fast-AT (Wong, Rice, Kolter 2020, *Fast is better than free*, arXiv 2001.03994): FGSM
adversarial training from a random start, ``mean l(x + r*)`` with
``r* = clip_eps(delta + alpha sign(grad l(x + delta)))``, ``delta`` uniform in the l-inf
ball and ``alpha = 1.25 eps`` (their Algorithm 3); METHOD.md sections 3d and 4.

A named configuration of PGD-AT, written here in full: :class:`~erat.methods.pgd.PGD` with
``norm="linf"``, one step, a random start and the step ``1.25 * eps`` (not PGD's
``2.5 * eps / steps``). Everything else, passes, BatchNorm and cost (``3 * 1 + 4 = 7`` per
example, as PGD-AT with one step), is PGD-AT's. l-inf AT without a random start (FGSM at
``x``, Goodfellow et al. 2015) is ``at --norm linf``.

Fast-AT is known to fail by catastrophic overfitting at larger radii (robust accuracy
against PGD collapses within an epoch); this file does not prevent it, the trainer flags
it when there is a validation set (:mod:`erat.fit.guard`).

Example::

    out = FastAT(eps=8 / 255)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from erat.methods.base import Batch, StepOutput, param, register
from erat.methods.pgd import PGD
from erat.threat import Norm, check_radius

STEP_FACTOR = 1.25  # Wong et al.'s alpha = 1.25 eps


@register("fast-at")
@dataclass
class FastAT:
    """PGD-AT with one l-inf step of ``1.25 eps`` from a random start."""

    eps: float = param(0.3, "training radius in pixel space")
    norm: Norm = param("linf", "threat norm")
    step_size: float | None = param(None, "step size of the inner search "
                                    "(unset: 1.25*eps)")

    uses_unlabeled = False

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        self.pgd()  # the other settings are checked by PGD's own checks

    def pgd(self) -> PGD:
        """The PGD-AT configuration this method is."""
        step = self.step_size
        if step is None and self.eps > 0:  # (radius 0: PGD returns x whatever the step)
            step = STEP_FACTOR * self.eps
        return PGD(eps=self.eps, norm=self.norm, steps=1, step_size=step)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        return self.pgd()(model, batch)

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """PGD-AT's with one step: a forward-backward of the search, the accuracy pass, the
        training forward-backward."""
        return self.pgd().cost(batch, model)
