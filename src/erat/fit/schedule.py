"""How long a run trains and what it costs: the number of updates (``epochs`` or a
``budget`` in ERM epochs), the cost of every update, and the learning-rate schedule.

Cost: every update adds ``method.cost(batch, model)`` forward-pass equivalents (a backward
counts two forwards); a run's cost is reported in ERM epochs, the cost of one ERM pass over
the training images (labeled and unlabeled) at this batch size (3 per example), so that
methods compare at equal cost. Costs are counted lazily, update by update, so a long run
plans in constant time and memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from erat.errors import UserError
from erat.fit.options import FitOptions
from erat.fit.sampler import EpochSampler
from erat.methods import Batch, Method, build_method


def build_optimizer(options: FitOptions, model: nn.Module, total_updates: int,
                    **kwargs: Any):
    """The optimiser (``kwargs``: e.g. ``fused=True``) and its per-update learning-rate
    factor: cosine to 0 over the run, ``step`` (x0.1 at 50% and x0.01 at 75% of the
    updates), or constant."""
    params = model.parameters()
    if options.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                              weight_decay=options.weight_decay, **kwargs)
    else:
        opt = torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay,
                               **kwargs)

    def factor(update: int) -> float:
        progress = min(update / max(total_updates, 1), 1.0)
        if options.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if options.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Schedule:
    """How long a run trains: ``updates`` in all, ``per_epoch`` per epoch (the last epoch
    may be shorter), the ERM-epoch ``unit`` in forward-pass equivalents, and the cost of
    each update (``cost_of(update)``; None when the method counts no cost)."""

    def __init__(self, updates: int, per_epoch: int, unit: float,
                 cost_of: Callable[[int], float] | None) -> None:
        self.updates, self.per_epoch, self.unit, self.cost_of = updates, per_epoch, unit, cost_of
        self._spent = [0.0]  # forward-pass equivalents of the first k updates, k = 0, 1, ...

    @property
    def epochs(self) -> int:
        return math.ceil(self.updates / self.per_epoch)

    @property
    def counted(self) -> bool:
        return self.cost_of is not None

    def cost(self, updates: int) -> float | None:
        """ERM epochs spent by the first ``updates`` updates."""
        if self.cost_of is None:
            return None
        while len(self._spent) <= updates:  # sequential sums: the same floats every time
            self._spent.append(self._spent[-1] + self.cost_of(len(self._spent) - 1))
        return self._spent[updates] / self.unit


def plan(method: Method, model: nn.Module, options: FitOptions, sampler: EpochSampler
         ) -> Schedule:
    """The number of updates of a run: ``epochs`` whole epochs, or as many updates as
    ``budget`` ERM epochs pay for (at least one, else ``UserError``)."""
    # the unit: one ERM pass over every training image, labeled or not (a semi-supervised
    # run's 100 labels would otherwise make one epoch cost thousands of units)
    erm_updates = max((sampler.n_labeled + sampler.n_unlabeled) // sampler.labeled_batch, 1)
    mode = model.training
    model.train()  # what the cost sees: train-mode BatchNorm and dropout
    try:
        unit = build_method("erm").cost(_shape_batch(sampler.labeled_batch, 0), model) \
            * erm_updates
        counts = callable(getattr(method, "cost", None))
        if not counts and options.budget is not None:
            raise UserError(f"--budget needs a method that counts its cost; "
                            f"{method!r} has no cost()")
        if options.budget is None:
            total = options.epochs * sampler.updates
            return Schedule(total, sampler.updates, unit,
                            _counter(method, model, sampler, total) if counts else None)
        total = _affordable(method, model, sampler, options.budget * unit, unit)
        total = _with_its_length(method, model, sampler, options.budget * unit, total)
        per_epoch = sampler.updates if options.budget_epochs is None else \
            math.ceil(total / options.budget_epochs)
        return Schedule(total, per_epoch, unit, _counter(method, model, sampler, total))
    finally:
        model.train(mode)


def _affordable(method: Method, model: nn.Module, sampler: EpochSampler, budget: float,
                unit: float) -> int:
    """How many updates ``budget`` forward-pass equivalents pay for (at least one)."""
    limit, spent, updates = budget * (1 + 1e-9), 0.0, 0
    while True:
        c = _update_cost(method, model, sampler, updates)
        if c <= 0:
            raise ValueError(f"{method!r} reports a cost of {c} per update")
        if spent + c > limit:
            break
        spent += c
        updates += 1
    if not updates:
        raise UserError(f"--budget {budget / unit:g} ERM epochs pays for no update of "
                        f"{getattr(method, 'name', 'this method')} (one costs "
                        f"{c / unit:.3g} ERM epochs)")
    return updates


def _with_its_length(method: Method, model: nn.Module, sampler: EpochSampler,
                     budget: float, total: int) -> int:
    """The most updates ``budget`` pays for when an update's cost depends on the run's
    length (a warm-up over its first fifth: ER semi-supervised), from ``total``, what it
    pays for priced without the length; ``total`` itself when the costs do not depend on
    it. A run of ``T`` updates costs more than one of ``T - 1``, so a bisection finds it."""
    probes = (0, total // 2, total - 1)
    if all(_update_cost(method, model, sampler, k) == _update_cost(method, model, sampler, k,
                                                                    total) for k in probes):
        return total
    limit = budget * (1 + 1e-9)

    def cost(n: int) -> float:
        return math.fsum(_update_cost(method, model, sampler, k, n) for k in range(n))

    lo, hi = (total, 2 * total) if cost(total) <= limit else (0, total)
    while cost(hi) <= limit:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= limit else (lo, mid)
    return max(lo, 1)


def _counter(method: Method, model: nn.Module, sampler: EpochSampler, total: int
             ) -> Callable[[int], float]:
    def cost_of(update: int) -> float:
        mode = model.training
        model.train()  # what the cost sees: train-mode BatchNorm and dropout
        try:
            return _update_cost(method, model, sampler, update, total)
        finally:
            model.train(mode)

    return cost_of


def _shape_batch(n: int, nu: int, updates: int | None = None, total: int | None = None
                 ) -> Batch:
    """A batch of the right sizes for counting a method's cost (no data)."""
    return Batch(torch.empty(n, 0), torch.zeros(n, dtype=torch.long),
                 torch.empty(nu, 0) if nu else None, updates, total)


def _update_cost(method: Method, model: nn.Module, sampler: EpochSampler, update: int,
                 total: int | None = None) -> float:
    nu = sampler.unlabeled_batch if sampler.uses_unlabeled else 0
    return float(method.cost(_shape_batch(sampler.labeled_batch, nu, update, total), model))
