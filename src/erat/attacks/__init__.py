"""Evaluation attacks, one file each, behind one interface (:mod:`erat.attacks.base`); a
module in this package registers its attack by being here."""

from erat.attacks.base import (
    ATTACKS,
    Attack,
    attack_choices,
    attack_defaults,
    attack_flags,
    attack_names,
    attack_options,
    attack_with,
    build_attack,
    correct,
    option,
    presets,
    read_key,
    register_attack,
    resolve,
    robust_key,
    title,
    upper_bound,
)
from erat.registry import import_package

import_package(__name__, __path__, helpers={"base"})

__all__ = [
    "ATTACKS",
    "Attack",
    "attack_choices",
    "attack_defaults",
    "attack_flags",
    "attack_names",
    "attack_options",
    "attack_with",
    "build_attack",
    "correct",
    "option",
    "presets",
    "read_key",
    "register_attack",
    "resolve",
    "robust_key",
    "title",
    "upper_bound",
]
