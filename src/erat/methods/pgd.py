"""PGD adversarial training (Madry et al. 2018, arXiv 1706.06083): ``mean l(x + r*)`` with
``r*`` from ``steps``-step PGD with a random start, l2 or l-inf, METHOD.md section 4.

Passes (:mod:`erat.passes`): the PGD search as a supervised search; one no-grad eval-mode
pass on ``x`` for the clean-accuracy metric; the training pass on ``x + r*`` in train mode.
PGD-AT has no clean training pass, so its one training pass updates the BatchNorm running
stats (on the adversarial points, as in Madry et al.); freezing them would leave the
running stats at their initial values.

Example::

    out = PGD(eps=2.0, steps=10)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from erat import fields
from erat.fields import param
from erat.losses import cross_entropy, supervised_loss
from erat.methods.base import BACKWARD, FORWARD, STEP_SIZE_HELP, Batch, StepOutput, register, rows
from erat.passes import supervised_search
from erat.search import pgd
from erat.threat import Norm, Threat, check_radius


@register("pgd")
@dataclass
class PGD:
    """Madry et al.'s min-max training."""

    eps: float = param(2.0, "training radius in pixel space")
    norm: Norm = param("l2", "threat norm")
    steps: int = param(10, "steps of the inner PGD search")
    step_size: float | None = param(None, STEP_SIZE_HELP)

    uses_unlabeled = False

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        fields.integer("steps", self.steps, 1)
        fields.positive("step_size", self.step_size, optional=True)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        with supervised_search(model):
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

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """``steps`` forward-backwards, the accuracy pass, the training forward-backward."""
        return rows(batch.x) * ((self.steps + 2) * FORWARD + (self.steps + 1) * BACKWARD)
