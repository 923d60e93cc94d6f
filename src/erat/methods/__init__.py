"""Training objectives, one file each; a module in this package registers its method by
being here (:func:`erat.methods.base.register`); ``base`` holds the interface."""

from erat.methods.base import (
    METHODS,
    Batch,
    Method,
    StepOutput,
    ball,
    build_method,
    method_config,
    method_flags,
    method_names,
    method_params,
    param,
    register,
    reserve,
    trained_ball,
    trained_method,
)
from erat.registry import import_package

import_package(__name__, __path__, helpers={"base"})

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "StepOutput",
    "ball",
    "build_method",
    "method_config",
    "method_flags",
    "method_names",
    "method_params",
    "param",
    "register",
    "reserve",
    "trained_ball",
    "trained_method",
]
