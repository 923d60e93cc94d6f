"""PGD adversarial training (Madry et al. 2018, arXiv 1706.06083): ``mean l(x + r*)`` with
``r*`` from ``steps``-step PGD with a random start, l2 or l-inf, METHOD.md section 4.

Passes: the PGD search in :func:`~erat.perturb.search_mode` (eval mode); one no-grad
eval-mode pass on ``x`` for the clean-accuracy metric; the training pass on ``x + r*`` in
train mode. PGD-AT has no clean training pass, so its one training pass updates the
BatchNorm running stats (on the adversarial points, as in Madry et al.); freezing them
would leave the running stats at their initial values.

Example::

    out = PGD(eps=2.0, steps=10)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from erat.energy import supervised_loss
from erat.losses import cross_entropy
from erat.methods import _checks
from erat.methods.base import Batch, StepOutput, register
from erat.perturb import pgd, search_mode
from erat.threat import Norm, Threat


@register("pgd")
@dataclass
class PGD:
    """Madry et al.'s min-max training; ``step_size=None`` means ``2.5 * eps / steps``."""

    eps: float = 2.0
    norm: Norm = "l2"
    steps: int = 10
    step_size: float | None = None

    uses_unlabeled = False

    def __post_init__(self) -> None:
        _checks.finite_nonneg("eps", self.eps)
        _checks.norm(self.norm)
        _checks.integer("steps", self.steps, 0)
        _checks.positive("step_size", self.step_size, optional=True)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        with search_mode(model):
            x_adv = pgd(supervised_loss(model, y), x, Threat(self.norm, self.eps),
                        steps=self.steps, step_size=self.step_size, random_start=True)
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean()
        logits = model(x_adv)  # the training pass: updates BN running stats
        adv = cross_entropy(logits, y)
        loss = adv.mean()
        metrics = {"loss": loss, "acc": acc, "adv_loss": adv.mean(),
                   "adv_acc": (logits.argmax(1) == y).float().mean()}
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})
