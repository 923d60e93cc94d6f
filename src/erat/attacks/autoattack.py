"""AutoAttack, standard version (Croce & Hein 2020, arXiv 2003.01690): APGD-CE, APGD-T,
FAB-T and Square, worst case per example, through the pyautoattack package. Its points are
re-classified after projection into the declared ball, so only points of the threat model
count. The targeted attacks aim at the 9 most likely other classes, all of them when there
are fewer (your own data); with fewer than 4 classes APGD-T, whose targeted DLR loss needs
4 logits, is left out, with a warning."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erat.attacks.base import correct, register_attack
from erat.errors import EnvironmentProblem
from erat.passes import supervised_search
from erat.threat import Threat

_NORM = {"l2": "L2", "linf": "Linf"}
REQUIRES = {"pyautoattack": "pyautoattack>=0.2,<0.3"}  # package -> pip requirement


def square_refusal(h: int, w: int, norm: str) -> str | None:
    """Why pyautoattack's Square cannot attack ``h x w`` images in ``norm`` (None when it
    can): it draws square windows of an H = W image, and in l2 its start tiles the image with
    blocks of side H // 5 from (H - 5 (H // 5)) // 2 on, which run past the edge of some sizes
    (12, 14, 18; sizes under 5); checked against pyautoattack 0.2 for H = 3 to 40."""
    if h != w:
        return f"it draws square windows and these images are {h}x{w}"
    if norm == "l2" and h < 5:
        return f"its l2 start tiles an image with 5x5 blocks; these are {h}x{h}"
    if norm == "l2" and not _l2_tiles(h):
        near = sorted([s for s in range(5, 2 * h + 8) if _l2_tiles(s)],
                      key=lambda s: (abs(s - h), s))[:4]
        return (f"its l2 start tiles {h}x{h} images with blocks of side {h // 5} that run "
                f"past the edge (sizes that fit nearby: {', '.join(map(str, sorted(near)))})")
    return None


def _l2_tiles(h: int) -> bool:
    """Whether Square's l2 start fits ``h x h`` images (blocks of side ``h // 5``)."""
    side = h // 5
    return side == 1 or (side > 1 and (h - 5 * side) // 2 + (h // side) * side <= h)


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
    else:
        _fit_targets(aa, model, x)
    with supervised_search(model):  # (its backward would fill the parameters' .grad)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    return correct(model, threat.project(x, x_adv.to(x.device)), y)


def _fit_targets(aa, model: nn.Module, x: Tensor) -> None:
    """The standard version's targeted attacks, fitted to the number of classes."""
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, classes - 1)
    if classes < 4:
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a != "apgd-t"]
        warnings.warn(f"AutoAttack on {classes} classes: APGD-T (its targeted DLR loss needs "
                      "at least 4) is left out; APGD-CE, FAB-T and Square run", stacklevel=3)


@register_attack("autoattack")
@dataclass
class AutoAttackStandard:
    title = "AutoAttack"  # (its name in tables)
    requires = REQUIRES
    presets = {"all": 1}
    roles = {"reference"}  # the strong attack a PGD figure is compared with (erat.sanity)
    refuses = staticmethod(square_refusal)  # its last attack is Square

    def describe(self, classes: int | None = None) -> str:
        targeted = "APGD-T, " if classes is None or classes >= 4 else ""  # (_fit_targets)
        return f"AutoAttack standard (APGD-CE, {targeted}FAB-T, Square)"

    def threat_info(self, eps: tuple[float, ...]) -> dict:
        return {"autoattack_version": "standard"}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor:
        return run_pyautoattack(model, x, y, threat, seed)
