"""TRADES (Zhang et al. 2019, arXiv 1901.08573): ``mean l(x) + beta * mean KL(p(.|x) ||
p(.|x'))``, with ``x'`` from ``steps``-step PGD that maximises that KL (not the CE) from the
start ``x + 0.001 * N(0, 1)``, as in the authors' code; METHOD.md section 4.

As in TRADES, the training KL carries gradients through both ``p(.|x)`` and ``p(.|x')``.
Passes (:mod:`erat.passes`): the clean train-mode pass (the only one that updates BatchNorm
running stats); the KL search as a supervised search, its target from that search's own
function (:func:`~erat.passes.supervised_target`, so the KL is 0 at ``x``); the pass on
``x'`` as a perturbed pass (dropout, where active, draws its own mask).

Example::

    out = TRADES(eps=2.0, beta=6.0)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erat import fields
from erat.fields import param
from erat.losses import cross_entropy, kl_div, virtual_loss
from erat.methods.base import BACKWARD, FORWARD, STEP_SIZE_HELP, Batch, StepOutput, register, rows
from erat.passes import is_stochastic, perturbed_pass, supervised_search, supervised_target
from erat.search import pgd
from erat.threat import Norm, Threat, check_radius


@register("trades")
@dataclass
class TRADES:
    """Clean CE plus ``beta`` times the worst-case KL."""

    eps: float = param(2.0, "training radius in pixel space")
    norm: Norm = param("l2", "threat norm")
    steps: int = param(10, "steps of the inner PGD search")
    step_size: float | None = param(None, STEP_SIZE_HELP)
    beta: float = param(6.0, "TRADES' weight of the KL term")

    uses_unlabeled = False
    searches_after_clean = True  # (the clean pass waits across the search: erat.graphs)

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        fields.integer("steps", self.steps, 1)
        fields.positive("step_size", self.step_size, optional=True)
        fields.finite_nonneg("beta", self.beta)

    def adversarial(self, model: nn.Module, x: Tensor, clean_logits: Tensor | None = None
                    ) -> Tensor:
        """TRADES' inner maximisation of ``KL(p(.|x) || p(.|x'))``; labels are not used.
        ``clean_logits`` (eval-mode-equivalent) saves a forward pass when given."""
        with supervised_search(model):
            if clean_logits is None:
                with torch.no_grad():
                    clean_logits = model(x)
            start = x + 0.001 * torch.randn_like(x)
            return pgd(virtual_loss(model, clean_logits), x, Threat(self.norm, self.eps),
                       steps=self.steps, step_size=self.step_size, start=start)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        logits = model(x)  # clean pass: updates BN running stats
        clean = cross_entropy(logits, y)
        x_adv = self.adversarial(model, x, supervised_target(model, x, logits))
        with perturbed_pass(model):
            kl = kl_div(logits, model(x_adv))
        loss = clean.mean() + self.beta * kl.mean()
        metrics = {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(),
                   "clean_loss": clean.mean(), "kl": kl.mean()}
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """Clean pass, ``steps`` forward-backwards, the pass on ``x'``, backward through both
        (plus the target's eval-mode pass when BatchNorm or dropout is active)."""
        target = FORWARD if is_stochastic(model) else 0.0
        return rows(batch.x) * ((self.steps + 2) * FORWARD + (self.steps + 2) * BACKWARD
                                + target)
