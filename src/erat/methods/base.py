"""The shared interface of every training objective, and the registry of methods by name.

A method maps ``(model, batch)`` to a scalar loss and a dict of detached metrics; only the
trainer calls ``backward`` and steps the optimiser (DESIGN.md habit 2). Hyper-parameters
are dataclass fields, so the CLI and YAML configs can set them by name.

Example (inside a user's own loop)::

    method = build_method("er", eps=2.0)
    loss = method(model, Batch(x, y)).loss
    loss.backward()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class Batch:
    """Labeled inputs ``x`` ``[B, C, H, W]`` in [0, 1] with labels ``y`` ``[B]``, and
    optionally unlabeled inputs ``x_unlabeled`` ``[B_u, C, H, W]`` (semi-supervised).
    ``step`` is the trainer's update count before this batch (0-based, resume-safe), for
    methods with a warm-up; None outside a training loop (no warm-up)."""

    x: Tensor
    y: Tensor
    x_unlabeled: Tensor | None = None
    step: int | None = None


class StepOutput(NamedTuple):
    loss: Tensor
    metrics: dict[str, Tensor]


@runtime_checkable
class Method(Protocol):
    """A training objective. ``uses_unlabeled`` says whether ``batch.x_unlabeled`` is read."""

    name: str
    uses_unlabeled: bool

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput: ...


METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a method dataclass to the registry under ``name``."""

    def add(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def method_names() -> list[str]:
    return sorted(METHODS)


def method_params(name: str) -> dict[str, dataclasses.Field]:
    """The hyper-parameters of a registered method, by field name."""
    return {f.name: f for f in dataclasses.fields(_lookup(name)) if f.init}


def build_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method; unknown names or parameters raise ``ValueError``."""
    cls = _lookup(name)
    unknown = set(params) - set(method_params(name))
    if unknown:
        raise ValueError(f"method {name!r} takes no parameter(s) {', '.join(sorted(unknown))}")
    return cls(**params)


def method_config(method: Method) -> dict[str, Any]:
    """The method's name and hyper-parameters, as saved with every run."""
    return {"name": method.name, **dataclasses.asdict(method)}


def _lookup(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return METHODS[name]
