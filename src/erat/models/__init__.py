"""Classifiers by name, each opening with :class:`Normalize` (see :mod:`erat.models.registry`);
a module in this package registers its models by being here."""

import importlib
import pkgutil

from erat.models.registry import (
    MODELS,
    Normalize,
    build_model,
    model_names,
    model_params,
    register_model,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["MODELS", "Normalize", "build_model", "model_names", "model_params", "register_model"]
