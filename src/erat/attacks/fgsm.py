"""FGSM (Goodfellow et al. 2015, arXiv 1412.6572; FGM in l2, Miyato et al. 2016): one step of
the full radius along the steepest-ascent direction of the cross-entropy, from the input,
no random start. A weak attack: robust accuracy against it far above PGD's is the sign of
catastrophic overfitting (Wong, Rice, Kolter 2020, arXiv 2001.03994) that the trainer's
guard reads (:mod:`erat.fit.guard`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from erat.attacks.base import correct, register_attack
from erat.losses import supervised_loss
from erat.search import fgm
from erat.threat import Threat


@register_attack("fgsm")
@dataclass
class FGSM:
    title = "FGSM"  # (its name in tables)
    def describe(self) -> str:
        return "FGSM (one step of the full radius from x; FGM in l2)"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor:
        return correct(model, fgm(supervised_loss(model, y), x, threat), y)
