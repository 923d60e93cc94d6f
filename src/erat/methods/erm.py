"""Standard training (empirical risk minimisation): ``mean l(x)``, METHOD.md section 4."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from erat.losses import cross_entropy
from erat.methods.base import Batch, StepOutput, register


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
