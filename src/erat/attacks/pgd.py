"""PGD on the cross-entropy (Madry et al. 2018, arXiv 1706.06083), the package's one PGD
(:func:`erat.search.pgd`), run ``restarts`` times, each restart on the survivors of the
previous ones; every iterate lies in the ball, so an example misclassified at any checked
iterate is done. Its default step is ``STEP_RULE``, ``max(2.5 eps / steps, eps / 4)``: the
training searches' ``2.5 eps / steps`` crawls at many steps (``eps / 20`` at 50) and finds
less (docs/results/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erat import fields, search
from erat.attacks.base import correct, option, register_attack
from erat.losses import supervised_loss
from erat.threat import Threat

CHECK_EVERY = 10  # steps between checks for misclassified (then finished) examples
STEP_RULE = "max(2.5*eps/steps, eps/4)"  # the attack's default step (not the searches')


@register_attack("pgd")
@dataclass
class PGDAttack:
    title = "PGD"  # (its name in tables)
    presets = {"all": 0}  # first in `all`, AutoAttack then runs on its survivors

    steps: int = option(50, "PGD steps (the sanity checks' PGD too)")
    step_size: float | None = option(None, f"PGD step size (default: {STEP_RULE})")
    restarts: int = option(1, "PGD restarts, each on the survivors of the previous")

    def __post_init__(self) -> None:
        fields.integer("steps", self.steps, 1)
        fields.integer("restarts", self.restarts, 1)
        fields.positive("step_size", self.step_size, optional=True)

    def step(self, eps: float) -> float:
        """``step_size``, or ``STEP_RULE`` at radius ``eps``."""
        if self.step_size is not None:
            return self.step_size
        return max(search.pgd_step_size(eps, self.steps), eps / 4)

    def describe(self) -> str:
        runs = "1 restart" if self.restarts == 1 else f"{self.restarts} restarts"
        return f"PGD on cross-entropy ({runs}, each on the survivors)"

    def threat_info(self, eps: tuple[float, ...]) -> dict:
        return {"steps": self.steps, "step_size": {f"{e:g}": self.step(e) for e in eps},
                "step_size_rule": STEP_RULE if self.step_size is None else "fixed",
                "restarts": self.restarts}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor:
        robust = torch.ones(len(y), dtype=torch.bool)
        for _ in range(self.restarts):
            pos = robust.nonzero().squeeze(1)
            if len(pos) == 0:
                break
            sel = pos.to(x.device)
            robust[pos] = self.restart(model, x[sel], y[sel], threat)
        return robust

    def restart(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat) -> Tensor:
        """One PGD run (random start), checked every ``CHECK_EVERY`` steps: the examples
        already misclassified leave the batch; the others follow the plain PGD path."""
        robust = torch.ones(len(y), dtype=torch.bool)
        live = torch.arange(len(y))
        x_adv, done, step = x, 0, self.step(threat.eps)
        while done < self.steps and len(live):
            n = min(CHECK_EVERY, self.steps - done)
            xb, yb = x[live.to(x.device)], y[live.to(x.device)]
            x_adv = search.pgd(supervised_loss(model, yb), xb, threat, steps=n,
                               step_size=step, random_start=done == 0,
                               start=None if done == 0 else x_adv)
            ok = correct(model, x_adv, yb)
            robust[live[~ok]] = False
            x_adv, live, done = x_adv[ok.to(x_adv.device)], live[ok], done + n
        return robust
