"""Standard training (empirical risk minimisation): ``mean l(x)``, METHOD.md section 4."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from erat.losses import cross_entropy
from erat.methods.base import BACKWARD, FORWARD, Batch, StepOutput, register, rows


@register("erm")
@dataclass
class ERM:
    """Plain cross-entropy on the labeled batch; no extra forward-backward pass."""

    uses_unlabeled = False

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        logits = model(batch.x)
        loss = cross_entropy(logits, batch.y).mean()
        acc = (logits.argmax(1) == batch.y).float().mean()
        return StepOutput(loss, {"loss": loss.detach(), "acc": acc.detach()})

    def cost(self, batch: Batch, model: nn.Module) -> float:
        """One forward and one backward of the labeled batch."""
        return rows(batch.x) * (FORWARD + BACKWARD)
