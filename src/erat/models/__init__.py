"""Classifiers by name, each opening with :class:`Normalize` (see :mod:`erat.models.registry`);
a module in this package registers its models by being here."""

from erat.models.registry import (
    MODELS,
    Normalize,
    build_model,
    check_kwargs,
    model_names,
    model_params,
    register_model,
)
from erat.registry import import_package

import_package(__name__, __path__, helpers={"registry", "factory"})

__all__ = ["MODELS", "Normalize", "build_model", "check_kwargs", "model_names", "model_params",
           "register_model"]
