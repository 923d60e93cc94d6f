"""Square (Andriushchenko et al. 2020, arXiv 1912.00049), black-box and score-based, through
pyautoattack; the check for gradient masking uses it too."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from erat import fields
from erat.attacks.autoattack import REQUIRES, run_pyautoattack, square_refusal
from erat.attacks.base import option, register_attack
from erat.threat import Threat


@register_attack("square")
@dataclass
class Square:
    title = "Square"  # (its name in tables)
    square_queries: int = option(5000, "queries of the Square attack")

    requires = REQUIRES
    roles = {"black-box"}  # the gradient-masking check's attack (erat.sanity) ...
    queries_option = "square_queries"  # ... with its query budget set here
    refuses = staticmethod(square_refusal)  # the image sizes pyautoattack's Square cannot

    def __post_init__(self) -> None:
        fields.integer("square_queries", self.square_queries, 1)

    def describe(self) -> str:
        return f"Square ({self.square_queries} queries, black-box)"

    def threat_info(self, eps: tuple[float, ...]) -> dict:
        return {"square_queries": self.square_queries}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor:
        return run_pyautoattack(model, x, y, threat, seed, ["square"], self.square_queries)
