"""Validation of method hyper-parameters: each check raises a one-line ``UserError``. A
radius and its norm are checked by :func:`erat.threat.check_radius`, the one home of that
rule."""

from __future__ import annotations

import math
from collections.abc import Iterable

from erat.errors import UserError


def finite_nonneg(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")


def fraction(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}")


def positive(name: str, value: float | None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value!r}")


def integer(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def choice(name: str, value: str, options: Iterable[str]) -> None:
    options = tuple(options)
    if value not in options:
        raise UserError(f"{name} must be one of {', '.join(options)}, got {value!r}")

