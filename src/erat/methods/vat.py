"""Virtual adversarial training (Miyato et al. 2018, arXiv 1704.03976):
``mean l(x) + alpha * mean v(x + eps d)``, ``v(z) = KL(p(.|x) || p(.|z))`` with ``p(.|x)``
held constant, ``d`` from ``power_iters`` power iterations with finite-difference step
``xi``; METHOD.md section 4. Optional entropy minimisation (VAT+EntMin).

The virtual term runs over the labeled and the unlabeled inputs when ``batch.x_unlabeled``
is given, over the labeled inputs otherwise; EntMin runs over the unlabeled inputs (the
labeled ones without an unlabeled batch). VAT's term is the end-to-end change of ``v``
along one ray; :mod:`erat.methods.er` with ``T=1, M=1`` reproduces it.

Passes: one clean train-mode pass over labeled + unlabeled inputs (the only one that
updates BatchNorm running stats); the power iteration and the perturbed pass on the clean
pass's function (:func:`~erat.perturb.shared_batch_stats`: BatchNorm normalised with the
clean batch's statistics, so each input is mapped alone and ``v`` is exactly 0 at ``x``).
The power iteration runs with dropout off (:func:`~erat.perturb.clean_function`, target:
the clean logits); the perturbed pass draws its own dropout mask, as in the reference
implementation, which also searches in train mode. Searching the eval-mode function
instead (running statistics) made VAT drift on the MNIST subset (100 labels, BatchNorm
MLP): 0.84 to 0.61 test accuracy over 1,500 steps, against 0.85 (docs/results.md).

On ``xi`` in float32 (measured on a small CNN trained on digits, 784-pixel inputs): with
``xi = 1e-6`` the logit change ``xi * J d`` is at the level of float32 rounding (and
``x + xi d`` rounds away on bright pixels), so the direction has cosine ~0.15 with the
exact power-iteration direction ``H d / ||H d||`` (computing the KL in float64 does not
help); it is still strongly adversarial (``v(x + 2 d)`` 0.53 vs 0.71 exact, 0.003 for a
random ``d``). ``xi`` in ``[1e-3, 1e-1]`` gives cosine ~0.9, so erat's default is
``xi = 1e-2`` (pass ``--xi 1e-6`` for the paper's value).

Example::

    out = VAT(eps=2.0)(model, Batch(x, y, x_unlabeled)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from erat.losses import cross_entropy, entropy, kl_div
from erat.methods import _checks
from erat.methods.base import Batch, StepOutput, register
from erat.perturb import (
    clean_function,
    clean_function_target,
    shared_batch_stats,
    vat_direction,
)


@register("vat")
@dataclass
class VAT:
    """VAT with an l2 radius ``eps``; ``entmin`` adds the entropy term with weight 1."""

    eps: float = 2.0
    xi: float = 1e-2
    power_iters: int = 1
    alpha: float = 1.0
    entmin: bool = False

    uses_unlabeled = True

    def __post_init__(self) -> None:
        _checks.finite_nonneg("eps", self.eps)
        _checks.positive("xi", self.xi)
        _checks.integer("power_iters", self.power_iters, 0)
        _checks.finite_nonneg("alpha", self.alpha)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y, xu = batch.x, batch.y, batch.x_unlabeled
        z = x if xu is None else torch.cat([x, xu])
        with shared_batch_stats(model):
            logits_z = model(z)  # clean pass: updates BN running stats
            logits = logits_z[: len(x)]
            clean = cross_entropy(logits, y)
            target = clean_function_target(model, z, logits_z)
            with clean_function(model):
                d = vat_direction(model, z, target, xi=self.xi, power_iters=self.power_iters)
            # the perturbed pass is normalised with the clean batch's statistics: v compares
            # one function at x and x + eps d (see the module docstring)
            kl = kl_div(logits_z.detach(), model((z + self.eps * d).clamp(0.0, 1.0)))
        loss = clean.mean() + self.alpha * kl.mean()
        metrics = {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(),
                   "clean_loss": clean.mean(), "kl": kl.mean()}
        if self.entmin:
            ent = entropy(logits_z[len(x):] if xu is not None else logits).mean()
            loss = loss + ent
            metrics |= {"loss": loss, "entropy": ent}
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})
