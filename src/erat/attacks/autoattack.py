"""AutoAttack, standard version (Croce & Hein 2020, arXiv 2003.01690): APGD-CE, APGD-T,
FAB-T and Square, worst case per example, through the pyautoattack package. Its points are
re-classified after projection into the declared ball, so only points of the threat model
count."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from erat.attacks.base import correct, register_attack
from erat.errors import EnvironmentProblem
from erat.threat import Threat

_NORM = {"l2": "L2", "linf": "Linf"}
REQUIRES = {"pyautoattack": "pyautoattack>=0.2,<0.3"}  # package -> pip requirement


def run_pyautoattack(model: nn.Module, x: Tensor, y: Tensor, threat: Threat, seed: int,
                     attacks: list[str] | None = None, queries: int = 0) -> Tensor:
    """Robust flags under pyautoattack's standard version (``attacks=None``) or the listed
    attacks alone (``queries`` for Square)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        msg = f"AutoAttack and Square need pyautoattack: pip install '{REQUIRES['pyautoattack']}'"
        raise EnvironmentProblem(msg) from err
    aa = AutoAttack(model, attacks=attacks, device=x.device, eps=threat.eps,
                    norm=_NORM[threat.norm], seed=seed,
                    version="standard" if attacks is None else "custom")
    aa.verbose = False
    if attacks is not None:
        aa.square.n_queries = queries
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    return correct(model, threat.project(x, x_adv.to(x.device)), y)


@register_attack("autoattack")
@dataclass
class AutoAttackStandard:
    requires = REQUIRES
    presets = {"all": 1}
    roles = {"reference"}  # the strong attack a PGD figure is compared with (erat.checks)

    def describe(self) -> str:
        return "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"

    def threat_info(self, eps: tuple[float, ...]) -> dict:
        return {"autoattack_version": "standard"}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor:
        return run_pyautoattack(model, x, y, threat, seed)
