"""Virtual adversarial training (Miyato et al. 2018, arXiv 1704.03976):
``mean l(x) + adv_weight * mean v(x + eps d)``, ``v(z) = KL(p(.|x) || p(.|z))`` with
``p(.|x)`` held constant, ``d`` from ``power_iters`` power iterations with finite-difference
step ``xi``; METHOD.md section 4. Optional entropy minimisation (VAT+EntMin). With
``norm="linf"`` the perturbation is ``eps * sign(d)``: the vertex of the l-inf ball nearest
``d``, and the l-inf steepest ascent of ``v`` at the power iteration's probe point (erat's
choice, METHOD.md section 3d; :func:`erat.search.vat_step`).

The virtual term runs over the labeled and the unlabeled inputs when ``batch.x_unlabeled``
is given, over the labeled inputs otherwise; EntMin runs over the unlabeled inputs (the
labeled ones without an unlabeled batch). VAT's term is the end-to-end change of ``v``
along one ray; :mod:`erat.methods.er` with ``T=1, M=1`` reproduces it.

Passes (:mod:`erat.passes`): one clean train-mode pass over labeled + unlabeled inputs
inside :func:`~erat.passes.shared_statistics` (the only pass that updates BatchNorm running
stats); the power iteration as a label-free search (target: the clean logits); the
perturbed pass normalised with the clean batch's statistics, so ``v`` is exactly 0 at
``x``, drawing its own dropout mask as in the reference implementation.

On ``xi`` in float32: with ``xi = 1e-6`` the logit change ``xi * J d`` is at the level of
float32 rounding and the direction is far from the exact power-iteration direction; erat's
default ``xi = 1e-2`` (:data:`erat.search.XI`) is float32-safe (``--xi 1e-6`` for the
paper's value; the measurement is in docs/results/findings.md).

Example::

    out = VAT(eps=2.0)(model, Batch(x, y, x_unlabeled)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from erat import fields
from erat.losses import cross_entropy, kl_div, semi_terms
from erat.methods.base import BACKWARD, FORWARD, Batch, StepOutput, param, register, rows
from erat.passes import dropout_active, label_free_search, label_free_target, shared_statistics
from erat.search import XI, vat_direction, vat_step
from erat.threat import Norm, check_radius


@register("vat")
@dataclass
class VAT:
    """VAT with an l2 (or l-inf) radius ``eps``; ``entmin`` adds the entropy term with
    weight 1."""

    eps: float = param(2.0, "training radius in pixel space")
    norm: Norm = param("l2", "threat norm")
    xi: float = param(XI, "finite-difference step of VAT's power iteration")
    power_iters: int = param(1, "power iterations of VAT's direction search")
    adv_weight: float = param(1.0, "weight of the adversarial (AT) or virtual adversarial "
                                   "(VAT) term")
    entmin: bool = param(False, "add entropy minimisation on the unlabeled predictions "
                                "(without --labels: on the labeled ones)")
    balance: float = param(1.0, "weight of the class-balance term on unlabeled predictions "
                                "(KL of their mean to the labels' class frequencies)")

    searches_after_clean = True  # (the clean pass waits across the search: erat.graphs)

    @property
    def uses_unlabeled(self) -> bool:
        """Unlabeled inputs are read only for the virtual term or EntMin (the class balance
        goes with them)."""
        return self.adv_weight > 0 or self.entmin

    def idle(self, semi: bool) -> dict[str, str]:
        """Settings without effect in this setting (``semi``: with unlabeled inputs), and why."""
        return {} if semi else {"balance": "it balances the unlabeled predictions: --labels N"}

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        fields.positive("xi", self.xi)
        fields.integer("power_iters", self.power_iters, 1)
        fields.finite_nonneg("adv_weight", self.adv_weight)
        fields.finite_nonneg("balance", self.balance)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch.x, batch.y
        xu = batch.x_unlabeled if self.uses_unlabeled else None
        z = x if xu is None else torch.cat([x, xu])
        with shared_statistics(model, stats_from=len(x) if xu is not None else 0):
            logits_z = model(z)  # clean pass: updates BN running stats (unlabeled rows')
            logits = logits_z[: len(x)]
            clean = cross_entropy(logits, y)
            target = label_free_target(model, z, logits_z)
            with label_free_search(model):
                d = vat_direction(model, z, target, xi=self.xi, power_iters=self.power_iters)
            # the perturbed pass is normalised with the clean batch's statistics: v compares
            # one function at x and x + eps d (l-inf: x + eps sign(d))
            x_adv = (z + self.eps * vat_step(d, self.norm)).clamp(0.0, 1.0)
            kl = kl_div(logits_z.detach(), model(x_adv))
        metrics = {"acc": (logits.argmax(1) == y).float().mean(), "clean_loss": clean.mean(),
                   "kl": kl.mean()}
        loss = semi_terms(clean.mean() + self.adv_weight * kl.mean(), metrics, logits,
                          logits_z[len(x):] if xu is not None else None, y, self.entmin,
                          self.balance)
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """Over labeled + unlabeled rows: the clean pass, ``power_iters`` forward-backwards,
        the perturbed pass, backward through both (plus the target's pass under dropout)."""
        z = rows(batch.x) + rows(batch.x_unlabeled)
        target = FORWARD if dropout_active(model) else 0.0
        k = self.power_iters
        return z * ((2 + k) * FORWARD + (2 + k) * BACKWARD + target)
