"""Energy-regularised training, this paper (Zhang, Huang, Xu, arXiv 1911.06479):
``mean l(x) + lam * mean E_hat(x)`` on labeled inputs ``+ lam_u * mean E_hat_v`` with the
virtual loss ``v(z) = KL(p(.|x) || p(.|z))`` over labeled and unlabeled inputs (label-free,
like VAT's term), optionally ``+ mean H(p(.|x_u))`` (EntMin); METHOD.md sections 3-4, the
estimator in :mod:`erat.energy`, the searches in :mod:`erat.search`.

``E_hat`` uses ``M`` directions (``u_1`` adversarial: FGM for ``S=0``, else ``S`` PGD steps
from a random start; for the virtual loss VAT's power iteration with ``xi``,
``power_iters``, refined by ``S`` PGD steps; ``u_2..u_M`` random) and ``T`` segments per
ray. With ``T=1, M=1, S=0, lam=1``, ``l(x) + E_hat(x) = l(x + eps u_fgm)`` wherever the loss
rises along the ray (AT's objective), and the virtual form gives VAT's term: AT and VAT are
the coarsest members. Defaults ``T=1, M=1`` and, supervised, ``S=1`` come from the ablations
(docs/results/er-variants.md): the searched direction decides, ``T`` and ``M`` added cost only.
Semi-supervised, ``S`` defaults to 0 (VAT's direction): the refined search drifted below
VAT on the BatchNorm MLP (METHOD.md 3c). ``warmup_updates``: the first updates search with
``S=0`` (in the virtual form, VAT's direction), then ``S`` steps.

Beyond the end point (METHOD.md section 3b): ``estimator="gradient"`` trains on ``G_T``, the
gradient-norm integral along each ray (an upper bound of its variation; double backward);
``lam_kl`` adds the virtual energy of the labeled inputs, ``l(x) + lam E_ce + lam_kl E_kl``
(TRADES' regulariser is the ``T=1`` member of ``E_kl``); ``ramp`` grows the radius from 0 to
``eps`` over that fraction of training.

``norm="linf"`` takes every ray, search and random direction in the l-inf ball (METHOD.md
section 3d): ``u_1`` is FGSM's ``sign(g)`` for ``S=0``, else from ``S`` l-inf PGD steps
(sign steps, random start), normalised to ``||u_1||_inf = 1``; the virtual search starts at
VAT's l-inf point ``x + eps sign(d)``; the random directions are random sign vectors; the
gradient estimator integrates the l1 norm of the gradient (the dual norm). With ``T=1,
M=1, S=0, lam=1`` the objective is l-inf AT's (FGSM) where the loss rises along the ray, and
the virtual form gives l-inf VAT's term.

Passes (:mod:`erat.passes`): one clean train-mode pass over labeled + unlabeled inputs
inside :func:`~erat.passes.shared_statistics` (the only pass that updates BatchNorm running
stats); the supervised direction search as a supervised search; the virtual search as a
label-free search (target: the clean logits, or with active dropout the ray pass's value
at ``x``); all ``M*T`` ray points of a form in one ray pass (the clean pass's function
without dropout, so every point of a ray, ``x`` included, is mapped by one function). The
clean pass's ``l(x)`` is reused as ``t_0`` unless dropout is active in it; ``v(x) = 0``
always (``v`` measures from the search's target). ``lam_u = 0`` without EntMin skips the
unlabeled inputs (``uses_unlabeled``).

Example::

    out = ER(eps=2.0)(model, Batch(x, y)); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from erat import fields
from erat.energy import ESTIMATORS, REDUCES, EnergyEstimate, Estimator, Reduce, energy
from erat.fields import param
from erat.losses import (
    LossFn,
    cross_entropy,
    semi_terms,
    supervised_loss,
    virtual_loss,
)
from erat.methods.base import BACKWARD, FORWARD, Batch, StepOutput, register, rows
from erat.passes import (
    dropout_active,
    label_free_search,
    label_free_target,
    ray_pass,
    shared_statistics,
    supervised_search,
)
from erat.search import XI, search_direction, vat_direction, vat_step
from erat.threat import Norm, check_radius


@register("er")
@dataclass
class ER:
    """The energy regulariser; ``entmin`` adds the entropy term with weight 1."""

    eps: float = param(2.0, "training radius in pixel space")
    norm: Norm = param("l2", "threat norm")
    T: int = param(1, "ER: segments per ray")
    M: int = param(1, "ER: directions (1 searched + M-1 random)")
    S: int | None = param(None, "ER: PGD steps refining the searched direction (0: FGM / "
                                "VAT's; default: 1 supervised, 0 semi-supervised)")
    reduce: Reduce = param("max", "ER: reduction over the directions")
    estimator: Estimator = param("variation", "ER: the ray's estimate: the variation V_T (a "
                                              "lower bound) or the gradient-norm integral "
                                              "G_T (an upper bound; double backward)")
    lam: float | None = param(None, "ER: weight of the energy of the labeled loss (default: "
                                    "1 supervised, 0 semi-supervised)")
    lam_u: float = param(1.0, "ER: weight of the energy of the virtual loss (labeled + "
                              "unlabeled)")
    lam_kl: float = param(0.0, "ER: weight of the virtual energy of the labeled inputs when "
                               "there is no unlabeled batch (TRADES' term is its T=1 member)")
    entmin: bool = param(False, "add entropy minimisation on the unlabeled predictions "
                                "(without --labels: on the labeled ones)")
    balance: float = param(1.0, "weight of the class-balance term on unlabeled predictions "
                                "(KL of their mean to the labels' class frequencies)")
    xi: float = param(XI, "finite-difference step of VAT's power iteration")
    power_iters: int = param(1, "power iterations of VAT's direction search")
    step_size: float | None = param(None, "step size of the inner search "
                                    "(unset: 2.5*eps/S)")
    warmup_updates: int | None = param(None, "ER: the first updates search with S=0 "
                                             "(default: 0 supervised, the first 20% of "
                                             "training semi-supervised with --S 1 or more)")
    ramp: float = param(0.0, "ER: fraction of training over which the radius grows "
                             "linearly from 0 to eps")

    searches_after_clean = True  # (the clean pass waits across the search: erat.graphs)

    def idle(self, semi: bool) -> dict[str, str]:
        """Settings without effect in this setting (``semi``: with unlabeled inputs), and why."""
        unlabeled = semi and self.uses_unlabeled
        out = {"lam_kl": "it acts only without unlabeled inputs"} if unlabeled else {}
        if not semi:
            out |= {"lam_u": "ER's virtual term is over unlabeled inputs: --labels N",
                    "balance": "it balances the unlabeled predictions: --labels N"}
        if not (self.lam_u if unlabeled else self.lam_kl):  # (no virtual term, no VAT search)
            why = "VAT's power iteration starts the virtual term's search: " + (
                "--lam-u above 0" if unlabeled else "--lam-kl above 0" if semi
                else "--labels N or --lam-kl above 0")
            out |= {"xi": why, "power_iters": why}
        if self.steps(unlabeled) == 0:  # (semi-supervised only when it reads unlabeled data)
            out["step_size"] = "the search takes no PGD steps at S 0"
            out["warmup_updates"] = "the warm-up searches with S 0, as every update does at S 0"
        return out

    def training_note(self, semi: bool) -> str | None:
        """What to know of these settings before training (:func:`erat.train.train` logs
        it): at the semi-supervised defaults ER's loss is VAT's on a model without dropout
        (METHOD.md 3c; VAT's perturbed pass keeps its dropout noise, ER's rays do not)."""
        if semi and self.T == 1 and self.M == 1 and self.steps(True) == 0 \
                and not self.lam and self.estimator == "variation" and self.ramp == 0:
            return ("note: semi-supervised at T 1, M 1, S 0 and lam 0 (the defaults), ER's "
                    "loss is VAT's on a model without dropout (METHOD.md 3c); --S 1, --T 2 "
                    "or --M 2 make it differ")
        return None

    @property
    def uses_unlabeled(self) -> bool:
        """Unlabeled inputs are read only for the virtual form (``lam_u > 0``) or EntMin."""
        return self.lam_u > 0 or self.entmin

    @property
    def double_backward(self) -> bool:
        """The gradient estimator trains on input-gradient norms (a double backward)."""
        return self.estimator == "gradient"

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        fields.integer("T", self.T, 1)
        fields.integer("M", self.M, 1)
        if self.S is not None:
            fields.integer("S", self.S, 0)
        fields.choice("reduce", self.reduce, REDUCES)
        fields.choice("estimator", self.estimator, ESTIMATORS)
        if self.lam is not None:
            fields.finite_nonneg("lam", self.lam)
        fields.finite_nonneg("lam_u", self.lam_u)
        fields.finite_nonneg("lam_kl", self.lam_kl)
        fields.finite_nonneg("balance", self.balance)
        fields.positive("xi", self.xi)
        fields.integer("power_iters", self.power_iters, 1)
        fields.positive("step_size", self.step_size, optional=True)
        if self.warmup_updates is not None:
            fields.integer("warmup_updates", self.warmup_updates, 0)
        fields.fraction("ramp", self.ramp)

    def _rays(self, model: nn.Module, loss_fn: LossFn, x: Tensor, u1: Tensor,
              loss_at_x: Tensor | None, eps: float) -> EnergyEstimate:
        with ray_pass(model):
            return energy(loss_fn, x, eps, T=self.T, M=self.M, reduce=self.reduce,
                          loss_at_x=loss_at_x, first_direction=u1, estimator=self.estimator,
                          norm=self.norm)

    def semi(self, batch: Batch) -> bool:
        """Whether this batch trains semi-supervised (unlabeled inputs that ER reads)."""
        return batch.x_unlabeled is not None and self.uses_unlabeled

    def defaults(self, semi: bool, total_updates: int) -> dict[str, Any]:
        """The values its unset mode-dependent settings (``S``, ``lam``,
        ``warmup_updates``) take in a training of ``total_updates`` updates, with (``semi``)
        or without an unlabeled batch that ER reads: what the run's record keeps."""
        semi = semi and self.uses_unlabeled
        warmup = int(0.2 * total_updates) if semi else 0  # (as search_steps)
        used = {"S": self.steps(semi), "lam": 0.0 if semi else 1.0, "warmup_updates": warmup}
        return {k: v for k, v in used.items() if getattr(self, k) is None}

    def weight(self, batch: Batch) -> float:
        """``lam``, by default 1 supervised and 0 semi-supervised: with ``lam = 1`` and a
        loss that rises along the ray, ``l(x) + lam V`` telescopes to ``l(x + eps u)`` and
        the clean labels drop out; beside the virtual energy on unlabeled data that made the
        predictions collapse into one class (docs/results/semi-supervised-defaults.md)."""
        if self.lam is not None:
            return self.lam
        return 0.0 if self.semi(batch) else 1.0

    def steps(self, semi: bool = False) -> int:
        """``S``, by default 1 supervised and 0 semi-supervised."""
        if self.S is not None:
            return self.S
        return 0 if semi else 1

    def search_steps(self, batch: Batch) -> int:
        """``S``, or 0 during the warm-up: the first ``warmup_updates`` updates, by default
        none supervised and the first 20% of training semi-supervised (outside a trainer,
        ``updates=None``: ``S``)."""
        semi, warmup = self.semi(batch), self.warmup_updates
        if warmup is None:
            warmup = int(0.2 * batch.total_updates) if semi and batch.total_updates else 0
        in_warmup = batch.updates is not None and batch.updates < warmup
        return 0 if in_warmup else self.steps(semi)

    def radius(self, batch: Batch) -> float:
        """``eps``, or during the first ``ramp`` of training ``eps * (updates + 1) / (ramp *
        total_updates)`` (outside a trainer: ``eps``)."""
        if not self.ramp or batch.updates is None or not batch.total_updates:
            return self.eps
        return self.eps * min(1.0, (batch.updates + 1) / (self.ramp * batch.total_updates))

    def supervised(self, model: nn.Module, x: Tensor, y: Tensor, clean: Tensor | None,
                   S: int | None = None, eps: float | None = None) -> EnergyEstimate:
        """``E_hat(x)`` of the CE; ``clean`` = per-sample ``l(x)`` to reuse, or None;
        ``S``, ``eps``: the search steps and radius (default ``self.steps()``, ``self.eps``)."""
        eps = self.eps if eps is None else eps
        loss_fn = supervised_loss(model, y)
        with supervised_search(model):
            u1 = search_direction(loss_fn, x, eps, S=self.steps() if S is None else S,
                                  step_size=self.step_size, norm=self.norm)
        return self._rays(model, loss_fn, x, u1, clean, eps)

    def virtual(self, model: nn.Module, x: Tensor, clean_logits: Tensor,
                S: int | None = None, eps: float | None = None) -> EnergyEstimate:
        """``E_hat_v(x)`` of ``v(z) = KL(p(x) || p(z))``, ``p`` the rays' function (no active
        dropout; ``clean_logits`` when the clean pass had none), so ``v(x) = 0`` at ``t_0``
        (METHOD.md 5: no dropout noise between the clean and the perturbed pass); ``S``,
        ``eps`` as in :meth:`supervised`. The search probes the same function, aimed at the
        same target (an eval-mode search aimed at the train-mode logits chased the gap
        between the two functions; docs/results/findings.md)."""
        eps = self.eps if eps is None else eps
        target = label_free_target(model, x, clean_logits)  # (detached)
        with label_free_search(model):
            d = vat_direction(model, x, target, xi=self.xi, power_iters=self.power_iters)
            u1 = search_direction(virtual_loss(model, target), x, eps,
                                  S=self.steps(True) if S is None else S,
                                  start_direction=vat_step(d, self.norm),
                                  step_size=self.step_size, norm=self.norm)
        zero = torch.zeros(len(x), device=x.device)  # (v at x of its own target)
        return self._rays(model, virtual_loss(model, target), x, u1, zero, eps)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y, xu = batch.x, batch.y, batch.x_unlabeled
        reuse = not dropout_active(model)
        xu = xu if self.uses_unlabeled else None
        lam, S, eps = self.weight(batch), self.search_steps(batch), self.radius(batch)
        with shared_statistics(model, stats_from=len(x) if xu is not None else 0):
            logits_all = model(x if xu is None else torch.cat([x, xu]))  # updates BN stats
            logits, logits_u = logits_all[: len(x)], logits_all[len(x):]
            clean = cross_entropy(logits, y)
            loss = clean.mean()
            metrics = {"acc": (logits.argmax(1) == y).float().mean(), "clean_loss": clean.mean()}
            terms = [("energy", lam, lambda: self.supervised(
                model, x, y, clean if reuse else None, S, eps))]
            if xu is not None:  # label-free: over labeled + unlabeled
                terms.append(("energy_u", self.lam_u, lambda: self.virtual(
                    model, torch.cat([x, xu]), logits_all, S, eps)))
            else:
                terms.append(("energy_kl", self.lam_kl, lambda: self.virtual(
                    model, x, logits, S, eps)))
            for name, weight, estimate in terms:
                if weight > 0:  # (a zero weight skips the search and the rays)
                    value = estimate().value.mean()
                    loss = loss + weight * value
                    metrics[name] = value
        loss = semi_terms(loss, metrics, logits, logits_u if xu is not None else None, y,
                          self.entmin, self.balance)
        return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """The clean pass and its backward; per form, the search (FGM: one forward-backward,
        VAT's: ``power_iters``, then ``S`` PGD steps) and the ``M*T`` ray points with their
        backward (when dropout is active: ``x`` again for the supervised form, the search
        target for the virtual one). The gradient estimator's points cost a forward, an input
        gradient kept as a graph, and a backward through both (a double backward counted as
        one more backward)."""
        n, nu = rows(batch.x), rows(batch.x_unlabeled) if self.uses_unlabeled else 0
        s, dropout = self.search_steps(batch), dropout_active(model)

        def ray(x_again: bool) -> float:
            if self.estimator == "gradient":
                return (self.M * self.T + 1) * (FORWARD + 3 * BACKWARD)
            return (self.M * self.T + x_again) * (FORWARD + BACKWARD)

        total = (n + nu) * (FORWARD + BACKWARD)
        if self.weight(batch) > 0:
            total += n * (max(s, 1) * (FORWARD + BACKWARD) + ray(dropout))
        virtual = n + nu if nu else (n if self.lam_kl > 0 else 0)
        if virtual and (self.lam_u if nu else self.lam_kl) > 0:
            search = (self.power_iters + s) * (FORWARD + BACKWARD) + dropout * FORWARD
            total += virtual * (search + ray(False))
        return total
