"""Energy-regularised training, this paper (Zhang, Huang, Xu, arXiv 1911.06479):
``mean l(x) + lam * mean E_hat(x)`` on labeled inputs ``+ lam_u * mean E_hat_v`` with the
virtual loss ``v(z) = KL(p(.|x) || p(.|z))`` over labeled and unlabeled inputs (label-free,
like VAT's term), optionally
``+ mean H(p(.|x_u))`` (EntMin); METHOD.md sections 3-4, estimator in :mod:`erat.energy`.

``E_hat`` uses ``M`` directions (``u_1`` adversarial: FGM for ``S=0``, else ``S`` PGD steps
from a random start; for the virtual loss VAT's power iteration with ``xi``,
``power_iters``, refined by ``S`` PGD steps; ``u_2..u_M`` random) and ``T`` segments per
ray. Defaults ``T=1, M=1, S=1``, from the ablations (docs/results.md): the searched
direction decided robustness, random directions added cost only, and along the searched ray
the loss rose monotonically on every training example, so ``V_T`` telescoped and ``T=2``
and ``T=4`` trained the very same model as ``T=1`` (MNIST subset, to 1e-9) at 1.7-2.5x the
time. Raise ``T`` where the loss rises and falls along rays. With ``T=1, M=1, S=0, lam=1``,
``l(x) + E_hat(x) = l(x + eps u_fgm)`` wherever the loss rises along the ray (AT's
objective), and the virtual form gives VAT's term: AT and VAT are the coarsest members.

Why the refinement matters in the virtual form: VAT's direction ``d`` spends about a fifth
of the radius on pixels that clipping to [0, 1] removes (on MNIST, x + eps d moved the
digits by 0.79 eps on average), the PGD step's direction keeps the whole radius inside the
box (0.995 eps) and doubles ``v`` at the end point. That stronger regulariser, applied from
the first update, stalled one semi-supervised seed of five at 0.78 (100 labels, MNIST
subset); ``warmup_steps`` searches with ``S=0`` (VAT's direction) for the first updates.
With 300 of 1,500 (``S=1, T=2``) ER kept VAT's accuracy (0.896 vs 0.897, 5 seeds) and was
more robust under PGD-l2 at 1.5 (0.686 vs 0.662); VAT at a 1.25x radius, reaching as far,
was as robust (0.687; docs/results.md).

Passes: one clean train-mode pass over labeled + unlabeled inputs (the only one that
updates BatchNorm running stats); the supervised direction search in
:func:`~erat.perturb.search_mode` (eval mode, no graph for the weights, ``u`` then held
constant); the virtual search, like VAT's, on the clean pass's function
(:func:`~erat.perturb.clean_function`: train-mode BatchNorm with the clean batch's
statistics, dropout off, target the clean logits); all ``M*T`` ray points of a form in one
pass, with dropout off and BatchNorm normalised by the clean pass's batch statistics
(:func:`~erat.perturb.shared_batch_stats`: every point of a ray, ``x`` included, is
mapped by the clean pass's function). Then the clean pass's ``l(x)`` (and ``v(x) = 0``)
is reused as ``t_0``; only when dropout is active in the clean pass is ``t_0 = x``
evaluated again inside the ray pass.
``lam_u = 0`` without EntMin skips the unlabeled inputs altogether (``uses_unlabeled``).

Example::

    out = ER(eps=2.0)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erat.energy import (
    REDUCES,
    EnergyEstimate,
    Reduce,
    energy,
    search_direction,
    supervised_loss,
    virtual_loss,
)
from erat.losses import cross_entropy, entropy
from erat.methods import _checks
from erat.methods.base import Batch, StepOutput, register
from erat.perturb import (
    LossFn,
    clean_function,
    clean_function_target,
    dropout_active,
    search_mode,
    shared_batch_stats,
    vat_direction,
)


@register("er")
@dataclass
class ER:
    """The energy regulariser; ``entmin`` adds the entropy term with weight 1."""

    eps: float = 2.0
    T: int = 1  # defaults from the ablations (docs/results.md): S matters, T and M did not
    M: int = 1
    S: int = 1
    reduce: Reduce = "max"
    lam: float = 1.0
    lam_u: float = 1.0
    entmin: bool = False
    xi: float = 1e-2  # float32-safe; see erat.methods.vat
    power_iters: int = 1
    step_size: float | None = None  # of the S search steps; None: 2.5 * eps / S (PGD's)
    warmup_steps: int = 0  # first training steps searched with S=0 (see the module docstring)

    @property
    def uses_unlabeled(self) -> bool:
        """Unlabeled inputs are read only for the virtual form (``lam_u > 0``) or EntMin."""
        return self.lam_u > 0 or self.entmin

    def __post_init__(self) -> None:
        _checks.finite_nonneg("eps", self.eps)
        _checks.integer("T", self.T, 1)
        _checks.integer("M", self.M, 1)
        _checks.integer("S", self.S, 0)
        _checks.choice("reduce", self.reduce, REDUCES)
        _checks.finite_nonneg("lam", self.lam)
        _checks.finite_nonneg("lam_u", self.lam_u)
        _checks.positive("xi", self.xi)
        _checks.integer("power_iters", self.power_iters, 0)
        _checks.positive("step_size", self.step_size, optional=True)
        _checks.integer("warmup_steps", self.warmup_steps, 0)

    def _rays(self, model: nn.Module, loss_fn: LossFn, x: Tensor, u1: Tensor,
              loss_at_x: Tensor | None) -> EnergyEstimate:
        with clean_function(model):  # (frozen running stats: for calls outside __call__)
            return energy(loss_fn, x, self.eps, T=self.T, M=self.M, reduce=self.reduce,
                          loss_at_x=loss_at_x, first_direction=u1)

    def search_steps(self, step: int | None) -> int:
        """``S``, or 0 during the first ``warmup_steps`` training steps (``step`` < it;
        ``step=None``, outside a trainer: ``S``)."""
        return 0 if step is not None and step < self.warmup_steps else self.S

    def supervised(self, model: nn.Module, x: Tensor, y: Tensor,
                   clean: Tensor | None, step: int | None = None) -> EnergyEstimate:
        """``E_hat(x)`` of the CE; ``clean`` = per-sample ``l(x)`` to reuse, or None;
        ``step``: the training step (:meth:`search_steps`)."""
        loss_fn = supervised_loss(model, y)
        with search_mode(model):
            u1 = search_direction(loss_fn, x, self.eps, S=self.search_steps(step),
                                  step_size=self.step_size)
        return self._rays(model, loss_fn, x, u1, clean)

    def virtual(self, model: nn.Module, x: Tensor, clean_logits: Tensor,
                reuse: bool, step: int | None = None) -> EnergyEstimate:
        """``E_hat_v(x)`` of ``v``; ``reuse``: ``clean_logits`` come from the ray's function
        (no active dropout), so ``v(x) = 0`` at ``t_0``; ``step`` as in :meth:`supervised`.
        The search probes the same function
        as the rays (:func:`~erat.perturb.clean_function`), so its target is that function's
        value at ``x``: an eval-mode search aimed at the train-mode logits chased the gap
        between the two functions (MNIST subset, 100 labels: 0.59 test accuracy against
        0.73, docs/results.md)."""
        target = clean_function_target(model, x, clean_logits)
        with clean_function(model):
            d = vat_direction(model, x, target, xi=self.xi, power_iters=self.power_iters)
            u1 = search_direction(virtual_loss(model, target), x, self.eps,
                                  S=self.search_steps(step), start_direction=d,
                                  step_size=self.step_size)
        zero = torch.zeros(len(x), device=x.device) if reuse else None
        return self._rays(model, virtual_loss(model, clean_logits), x, u1, zero)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y, xu = batch.x, batch.y, batch.x_unlabeled
        reuse = not dropout_active(model)
        xu = xu if self.uses_unlabeled else None
        with shared_batch_stats(model):
            logits_all = model(x if xu is None else torch.cat([x, xu]))  # updates BN stats
            logits, logits_u = logits_all[: len(x)], logits_all[len(x):]
            clean = cross_entropy(logits, y)
            loss = clean.mean()
            metrics = {"acc": (logits.argmax(1) == y).float().mean(), "clean_loss": clean.mean()}
            if self.lam > 0:  # (lam = 0, the semi-supervised form alone, skips the search)
                est = self.supervised(model, x, y, clean if reuse else None, batch.step)
                loss = loss + self.lam * est.value.mean()
                metrics["energy"] = est.value.mean()
            if xu is not None and self.lam_u > 0:  # label-free: over labeled + unlabeled
                est_u = self.virtual(model, torch.cat([x, xu]), logits_all, reuse, batch.step)
                loss = loss + self.lam_u * est_u.value.mean()
                metrics["energy_u"] = est_u.value.mean()
        if self.entmin:
            metrics["entropy"] = entropy(logits_u if xu is not None else logits).mean()
            loss = loss + metrics["entropy"]
        metrics["loss"] = loss
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})
