"""Adversarial training with an l2 FGM step (Goodfellow et al. 2015, arXiv 1412.6572;
Miyato et al. 2016, arXiv 1605.07725): ``mean l(x) + alpha * mean l(x + eps g/||g||)``,
METHOD.md section 4. With ``norm="linf"`` the step is FGSM (``eps * sign(g)``).

AT's term ``l(x + eps u) - l(x)`` is the end-to-end change along one ray, a lower bound of
the energy; :mod:`erat.methods.er` with ``T=1, M=1`` reproduces it (METHOD.md section 3).

Passes: the clean train-mode pass (the only one that updates BatchNorm running stats); the
FGM search in :func:`~erat.perturb.search_mode` (eval mode); the perturbed pass in train
mode under :func:`~erat.perturb.frozen_bn_stats`. Dropout, where active, draws its own mask
in the perturbed pass, as in the reference implementations.

Example::

    out = AT(eps=2.0)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from erat.energy import supervised_loss
from erat.losses import cross_entropy
from erat.methods import _checks
from erat.methods.base import Batch, StepOutput, register
from erat.perturb import fgm, frozen_bn_stats, search_mode
from erat.threat import Norm, Threat


@register("at")
@dataclass
class AT:
    """FGM adversarial training; ``alpha`` weighs the adversarial term."""

    eps: float = 2.0
    norm: Norm = "l2"
    alpha: float = 1.0

    uses_unlabeled = False

    def __post_init__(self) -> None:
        _checks.finite_nonneg("eps", self.eps)
        _checks.norm(self.norm)
        _checks.finite_nonneg("alpha", self.alpha)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        logits = model(x)  # clean pass: updates BN running stats
        clean = cross_entropy(logits, y)
        with search_mode(model):
            x_adv = fgm(supervised_loss(model, y), x, Threat(self.norm, self.eps))
        with frozen_bn_stats(model):
            adv = cross_entropy(model(x_adv), y)
        loss = clean.mean() + self.alpha * adv.mean()
        metrics = {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(),
                   "clean_loss": clean.mean(), "adv_loss": adv.mean(),
                   "at_term": (adv - clean).mean()}
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})
