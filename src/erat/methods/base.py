"""The shared interface of every training objective, and the registry of methods by name.

A method maps ``(model, batch)`` to a scalar loss and a dict of detached metrics; only the
trainer calls ``backward`` and steps the optimiser (docs/ARCHITECTURE.md). Hyper-parameters
are dataclass fields declared with :func:`erat.fields.param`, whose help text becomes the method's
command-line flag (``--name``) with no other edit; a method file in this package registers
itself (:func:`register`) by being there.

``cost(batch, model)`` counts the passes one training update makes through the model, in
forward-pass equivalents per example: a forward of one example counts 1, a backward through
it 2 (its input gradient in a search, or the parameter gradient of the loss). ERM's step
costs 3 per example; the trainer sums the costs into the run's training cost.

Example (inside a user's own loop; the model in train mode, as the method's clean pass
trains BatchNorm and dropout as the model's mode says)::

    method = build_method("er", eps=2.0)
    loss = method(model.train(), Batch(x, y)).loss
    loss.backward()
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from erat.errors import UserError
from erat.fields import (
    FlagSpec,
    check_types,
    document_settings,
    flag,
    flag_specs,
    init_fields,
    param,  # noqa: F401  (a re-export: methods declare fields with it)
    read_numbers,
)
from erat.inputs import images, labels
from erat.registry import Registry
from erat.search import STEP_RULE

FORWARD, BACKWARD = 1.0, 2.0  # the cost convention: a backward counts as two forwards
# the help of a method's step_size under the search's default rule (a method with its own
# rule says it in its own words: the CLI shows each method's help beside its name)
STEP_SIZE_HELP = f"step size of the inner search (unset: {STEP_RULE})"


@dataclass
class Batch:
    """Labeled inputs ``x`` ``[B, C, H, W]`` in [0, 1] with labels ``y`` ``[B]``, and
    optionally unlabeled inputs ``x_unlabeled`` ``[B_u, C, H, W]`` (semi-supervised).
    ``updates`` is the number of optimiser updates made before this batch (0-based,
    resume-safe) and ``total_updates`` the run's, for methods with a warm-up; None outside a
    training loop (no warm-up). ``checked``: the caller has checked ``x`` and ``y``
    (:func:`erat.fit.fit` checks its data once, not every batch)."""

    x: Tensor
    y: Tensor
    x_unlabeled: Tensor | None = None
    updates: int | None = None
    total_updates: int | None = None
    checked: bool = dataclasses.field(default=False, repr=False)  # (fit: its data, once)

    def __post_init__(self) -> None:
        """Checked as :mod:`erat.inputs` says (values only on the CPU: a GPU batch read back
        would cost a synchronisation per step; not under compilation, nor when ``checked``:
        the caller checked the data); integer labels become int64."""
        if self.checked or torch.compiler.is_compiling():
            return
        read = self.x.device.type == "cpu" if isinstance(self.x, Tensor) else True
        images(self.x, "Batch.x", values=read)
        self.y = labels(self.y, len(self.x), "Batch.y", values=read)
        if self.x_unlabeled is not None:
            images(self.x_unlabeled, "Batch.x_unlabeled", values=read, like=self.x,
                   like_name="Batch.x")


class StepOutput(NamedTuple):
    loss: Tensor
    metrics: dict[str, Tensor]


@runtime_checkable
class Method(Protocol):
    """A training objective. ``uses_unlabeled`` says whether ``batch.x_unlabeled`` is read;
    an optional ``double_backward`` (default False) that the step differentiates through an
    input gradient, which a compiled graph cannot (the model then runs eager); an optional
    ``searches_after_clean`` (default False) that the clean pass waits for its backward
    while an inner search runs, which the fast path serves eager (:func:`erat.graphs.compiled`;
    ``tests/test_fast.py`` finds a method that does so without saying it). Its training
    ball is the optional attributes ``eps`` (the radius in pixel space; absent or None for a
    method without one, as ERM) and ``norm`` (``"l2"``, the default, or ``"linf"``):
    validation, the overfitting guard and ``erat energy`` read them through :func:`ball`.
    Optional too: ``idle(semi)``, its settings that have no effect with (``semi``) or
    without unlabeled inputs, each with why (``erat train`` says so when one is given), and
    ``training_note(semi)``, a line to know before training (or None), and
    ``defaults(semi, total_updates)``, the values its unset settings whose default depends
    on the setting took (the run's record keeps them: ``ran.method_defaults``)."""

    name: str
    uses_unlabeled: bool

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput: ...

    def cost(self, batch: Batch, model: nn.Module) -> float: ...


METHODS = Registry("method")


RESERVED: dict[str, str] = {}  # setting name -> its owner, which a method field may not shadow


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a method dataclass to the registry under ``name``; a field
    named like a reserved setting (:func:`reserve`), or like another method's field but of
    another type, is refused."""

    def add(cls: type) -> type:
        _refuse_reserved(name, cls)
        flag_specs({**dict(METHODS.items()), name: cls})  # a shared field of another type
        if not getattr(cls.__call__, "checks_call", False):
            cls.__call__ = _checked(cls.__call__)
        document_settings(cls, f"build_method({name!r}, key=value); erat train's flags")
        return METHODS.decorator(name, named=True)(cls)

    return add


_SAID_EVAL = []  # (the eval-mode warning is given once per process)


def _checked(call: Callable) -> Callable:
    """A method's ``__call__`` that first checks its arguments: a :class:`Batch`, and a model
    in train mode where gradients are on (in eval mode the clean pass keeps BatchNorm's
    running statistics and turns dropout off, which trains another model: said once)."""

    @functools.wraps(call)
    def checked(self: Any, model: nn.Module, batch: Batch) -> StepOutput:
        if not isinstance(batch, Batch):
            raise TypeError(f"a method takes (model, Batch(x, y)), got {type(batch).__name__}")
        if not model.training and torch.is_grad_enabled() and not _SAID_EVAL:
            _SAID_EVAL.append(True)
            warnings.warn(f"{self.name}: the model is in eval mode, so this training step keeps "
                          "BatchNorm's running statistics and turns dropout off; call "
                          "model.train() first (said once)", UserWarning, stacklevel=2)
        return call(self, model, batch)

    checked.checks_call = True  # type: ignore[attr-defined]
    return checked


def reserve(names: Iterable[str], owner: str) -> None:
    """Reserve setting names for ``owner`` (the training configuration): a method field of
    that name would be read as the owner's setting, so registering one is an error."""
    RESERVED.update(dict.fromkeys(names, owner))
    for name, cls in METHODS.items():
        _refuse_reserved(name, cls)


def _refuse_reserved(name: str, cls: type) -> None:
    clash = sorted(set(init_fields(cls)) & set(RESERVED))
    if clash:
        raise TypeError(f"method {name!r}: field(s) {', '.join(clash)} share a name with "
                        f"settings of {RESERVED[clash[0]]}; rename them")


def method_names() -> list[str]:
    return sorted(METHODS)


def method_params(name: str) -> dict[str, dataclasses.Field]:
    """The hyper-parameters of a registered method, by field name."""
    return init_fields(METHODS.lookup(name))


def method_flags() -> dict[str, FlagSpec]:
    """Every hyper-parameter of every registered method as a flag specification."""
    return flag_specs(METHODS, defaults=True)


def build_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method; unknown names or parameters raise ``UserError``."""
    cls = METHODS.lookup(name)
    takes = init_fields(cls)
    if unknown := sorted(set(params) - set(takes)):  # (named as keys and, where it differs,
        # as flags: a suite, bench and Python give keys, the command line flags)
        def both(k: str) -> str:
            return k if flag(k) == f"--{k}" else f"{k} ({flag(k)})"

        said = ", ".join(map(both, sorted(takes)))
        raise UserError(f"method {name!r} takes no {', '.join(map(both, unknown))}; "
                        + (f"it takes: {said}" if said else "it has no parameters"))
    if params.get("norm") == "linf" and "eps" in takes and "eps" not in params \
            and takes["norm"].default != "linf":
        raise UserError(f"--norm linf needs --eps (an l-inf radius, e.g. --eps 8/255): "
                        f"{name}'s default {takes['eps'].default} is an l2 radius")
    params = read_numbers(cls, params)  # (eps: 8/255 in a YAML file)
    check_types(cls, params)  # (a YAML 'no' in quotes is a truthy string)
    return cls(**params)


def method_config(method: Method) -> dict[str, Any]:
    """The method's name and hyper-parameters, as saved with every run."""
    return {"name": method.name, **dataclasses.asdict(method)}


def ball(method: Method | None) -> tuple[str, float | None]:
    """``(norm, eps)`` of a method's training ball (:class:`Method`): ``eps`` None for a
    method without a radius (or no method: ``("l2", None)``)."""
    eps = getattr(method, "eps", None)
    return getattr(method, "norm", "l2"), None if eps is None else float(eps)


def trained_method(config: dict[str, Any]) -> Method | None:
    """The method a run's ``config.yaml`` (``config``) trained with; None for a config that
    names none this erat can build."""
    try:
        return build_method(config["method"], **(config.get("method_params") or {}))
    except (KeyError, TypeError, UserError):
        return None


def trained_ball(config: dict[str, Any]) -> tuple[str, float] | None:
    """``(norm, eps)`` of the method a run's ``config.yaml`` trained with (:func:`ball`);
    None for a method without a radius (ERM) or one it cannot build."""
    norm, eps = ball(trained_method(config))
    return None if eps is None else (norm, eps)


def rows(t: Tensor | None) -> int:
    """Examples in a batch tensor (0 for None)."""
    return 0 if t is None else int(t.shape[0])
