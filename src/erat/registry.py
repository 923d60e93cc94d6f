"""Registries by name (methods, attacks, models, datasets): one dict each, filled by the
modules of a package that register their entries by being there (:func:`import_package`).

Example::

    MODELS = Registry("model")

    @MODELS.decorator()
    def cnn(...): ...
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

from erat.errors import UserError


class Registry(dict):
    """``name -> entry``; ``kind`` names the entries in errors ("unknown method 'x'")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: Any) -> Any:
        """Register ``entry`` (a second, different entry under one name is an error)."""
        old = self.get(name)
        if old is not None and getattr(old, "__qualname__", old) != getattr(
                entry, "__qualname__", entry):
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def decorator(self, name: str, named: bool = False) -> Callable[[Any], Any]:
        """A decorator adding the decorated entry under ``name`` (``named``: and setting
        its ``name`` attribute)."""

        def add(entry: Any) -> Any:
            if named:
                entry.name = name
            return self.add(name, entry)

        return add

    def lookup(self, name: str, choices: Iterable[str] | None = None) -> Any:
        if name not in self:
            shown = ", ".join(choices if choices is not None else sorted(self))
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {shown}")
        return self[name]


def import_package(package: str, path: Iterable[str], helpers: Iterable[str] = ()) -> None:
    """Import every module of a package but its ``helpers`` and ``_private`` ones, so that
    each registers what it defines."""
    for info in pkgutil.iter_modules(path):
        if info.name not in set(helpers) and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
