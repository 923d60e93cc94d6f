"""Training objectives, one file each; a module in this package registers its method by
being here (:func:`erat.methods.base.register`). Files starting with ``_`` are helpers."""

import importlib
import pkgutil

from erat.methods.base import (
    METHODS,
    Batch,
    Method,
    StepOutput,
    build_method,
    method_config,
    method_flags,
    method_names,
    method_params,
    param,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "StepOutput",
    "build_method",
    "method_config",
    "method_flags",
    "method_names",
    "method_params",
    "param",
    "register",
]
