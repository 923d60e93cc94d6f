"""Training objectives, one file each, registered by name (see :mod:`erat.methods.base`)."""

from erat.methods import at, er, erm, pgd, trades, vat  # noqa: F401  (registers)
from erat.methods.base import (
    METHODS,
    Batch,
    Method,
    StepOutput,
    build_method,
    method_config,
    method_names,
    method_params,
    register,
)

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "StepOutput",
    "build_method",
    "method_config",
    "method_names",
    "method_params",
    "register",
]
