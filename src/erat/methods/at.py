"""Adversarial training with an l2 FGM step (Goodfellow et al. 2015, arXiv 1412.6572;
Miyato et al. 2016, arXiv 1605.07725): ``mean l(x) + adv_weight * mean l(x + eps g/||g||)``,
METHOD.md section 4. With ``norm="linf"`` the step is FGSM (``eps * sign(g)``): l-inf AT
(Goodfellow et al. 2015), whose term is the end-to-end change along the ray ``sign(g)``
(METHOD.md section 3d).

AT's term ``l(x + eps u) - l(x)`` is the end-to-end change along one ray, a lower bound of
the energy; :mod:`erat.methods.er` with ``T=1, M=1`` reproduces it (METHOD.md section 3).

Passes (:mod:`erat.passes`): the clean train-mode pass (the only one that updates BatchNorm
running stats); the FGM search as a supervised search; the adversarial point in a perturbed
pass (dropout, where active, draws its own mask, as in the reference implementations).

Example::

    out = AT(eps=2.0)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from erat import fields
from erat.losses import cross_entropy, supervised_loss
from erat.methods.base import BACKWARD, FORWARD, Batch, StepOutput, param, register, rows
from erat.passes import perturbed_pass, supervised_search
from erat.search import fgm
from erat.threat import Norm, Threat, check_radius


@register("at")
@dataclass
class AT:
    """FGM adversarial training."""

    eps: float = param(2.0, "training radius in pixel space")
    norm: Norm = param("l2", "threat norm")
    adv_weight: float = param(1.0, "weight of the adversarial (AT) or virtual adversarial "
                                   "(VAT) term")

    uses_unlabeled = False
    searches_after_clean = True  # (the clean pass waits across the search: erat.graphs)

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        fields.finite_nonneg("adv_weight", self.adv_weight)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        logits = model(x)  # clean pass: updates BN running stats
        clean = cross_entropy(logits, y)
        with supervised_search(model):
            x_adv = fgm(supervised_loss(model, y), x, Threat(self.norm, self.eps))
        with perturbed_pass(model):
            adv = cross_entropy(model(x_adv), y)
        loss = clean.mean() + self.adv_weight * adv.mean()
        metrics = {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(),
                   "clean_loss": clean.mean(), "adv_loss": adv.mean(),
                   "at_term": (adv - clean).mean()}
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """Clean pass, FGM's forward-backward, the adversarial pass; backward through both."""
        return rows(batch.x) * (3 * FORWARD + 3 * BACKWARD)
