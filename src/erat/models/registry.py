"""The model registry and the normalisation layer that opens every model.

Inputs are pixels in ``[0, 1]``; :class:`Normalize` is the first layer of every model built
here, so every eps is measured in pixel space (docs/METHOD.md section 1). A registered factory takes
``in_shape`` ``(C, H, W)``, ``num_classes`` and its own keyword arguments, and returns the
body; :func:`build_model` puts ``Normalize`` in front. The model maps ``[B, C, H, W]`` to
logits ``[B, num_classes]``. A name ``MODULE:FACTORY`` is a model of your own
(:mod:`erat.models.factory`), built the same way.

Example::

    model = build_model("cnn", in_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))
    logits = model(x)   # x in [0, 1]
"""

from __future__ import annotations

import inspect
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from erat.errors import UserError, first_line
from erat.models.factory import build_factory, is_factory
from erat.registry import Registry

Factory = Callable[..., nn.Module]
MODELS = Registry("model")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean`` and ``std`` saved as buffers (one
    number each: the same for every channel)."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        self.per_channel = not all(isinstance(v, numbers.Real) or (
            isinstance(v, Tensor) and v.dim() == 0) for v in (mean, std))
        mean, std = ([float(v)] if not self.per_channel else [float(e) for e in v]
                     for v in (mean, std))
        if len(mean) != len(std) or min(std) <= 0:
            raise UserError(f"Normalize needs one mean and one positive std per channel (or "
                            f"one of each for all), got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # (TorchScript: the check is Python's)
            self._check(x)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @torch.jit.unused
    def _check(self, x: Tensor) -> None:
        """Refuse images of another channel count than the means given per channel (they
        broadcast: one channel became three)."""
        channels = self.mean.shape[1]
        if self.per_channel and (x.dim() != 4 or x.shape[1] != channels):
            raise UserError(f"Normalize holds {channels} channel(s)' mean and std, but the "
                            f"images are shaped {tuple(x.shape[1:])}")

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a model factory to the registry under ``name``."""

    return MODELS.decorator(name)


def model_names() -> list[str]:
    return sorted(MODELS)


def model_params(name: str) -> dict[str, Any]:
    """A registered model's keyword arguments and their defaults."""
    params = inspect.signature(_lookup(name)).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("in_shape", "num_classes")}


DATA_ARGS = ("in_shape", "num_classes", "mean", "std")  # what build_model takes from the data


def check_kwargs(kwargs: dict[str, Any], data_args: Sequence[str] = DATA_ARGS) -> None:
    """Refuse a model keyword argument that the data sets (``data_args``: those of
    :func:`build_model`, or of a factory called directly): a second value would be a
    ``TypeError`` deep in the call."""
    fixed = [k for k in data_args if k in kwargs]
    if fixed:
        raise UserError(f"model_kwargs must not set {fixed[0]}: the data sets it")


def build_model(
    name: str,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> nn.Module:
    """``nn.Sequential(normalize=Normalize(mean, std), net=<the registered model>)``; the
    net of ``MODULE:FACTORY`` is what that factory returns."""
    if len(in_shape) != 3 or len(mean) != in_shape[0]:
        raise ValueError(f"need in_shape (C, H, W) and C means, got {in_shape} and {mean}")
    if is_factory(name):
        net = build_factory(name, in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
        return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))
    factory = _lookup(name)
    unknown = set(kwargs) - set(model_params(name))
    if unknown:
        raise UserError(f"model {name!r} takes no parameter(s) {', '.join(sorted(unknown))}; "
                        f"it takes: {', '.join(model_params(name)) or 'nothing'}")
    try:
        net = factory(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. hidden=[-5], width="x"
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
        raise UserError(f"cannot build model {name!r} with {shown}: {first_line(err)}"
                        ) from err
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def _lookup(name: str) -> Factory:
    try:
        return MODELS.lookup(name)
    except UserError as err:
        if Path(name).expanduser().is_file() and not name.endswith(".py"):
            raise UserError(f"--model {name}: a file; erat trains a network it builds, named "
                            "MODULE:FACTORY (a TorchScript or torch.export file is for erat "
                            "eval --model)") from None
        raise UserError(f"{err}, or a model of your own as MODULE:FACTORY (e.g. "
                        f"{name if name.endswith('.py') else 'mynet.py'}:build)") from None
