"""Evaluation attacks, one file each, behind one interface (:mod:`erat.attacks.base`); a
module in this package registers its attack by being here."""

import importlib
import pkgutil

from erat.attacks.base import (
    ATTACKS,
    PRESETS,
    Attack,
    attack_flags,
    attack_names,
    attack_options,
    build_attack,
    correct,
    option,
    register_attack,
    resolve,
    robust_key,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "ATTACKS",
    "PRESETS",
    "Attack",
    "attack_flags",
    "attack_names",
    "attack_options",
    "build_attack",
    "correct",
    "option",
    "register_attack",
    "resolve",
    "robust_key",
]
