"""Classifiers by name, each opening with :class:`Normalize` (see :mod:`erat.models.registry`)."""

from erat.models import cnn, conv_large, mlp, preact_resnet, wrn  # noqa: F401  (registers)
from erat.models.registry import (
    MODELS,
    Normalize,
    build_model,
    model_names,
    model_params,
    register_model,
)

__all__ = ["MODELS", "Normalize", "build_model", "model_names", "model_params", "register_model"]
