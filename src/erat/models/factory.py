"""A model of your own, named ``MODULE:FACTORY`` instead of a registered name: ``MODULE`` is
imported (a dotted module name, found from the current folder or ``sys.path``, or a path to a
``.py`` file) and ``FACTORY`` (a function or an ``nn.Module`` class; dots reach inside) is
called. It is passed ``in_shape=(C, H, W)`` and ``num_classes`` when its signature names
them, ``num_classes`` also when it takes ``**kwargs`` (as torchvision's ``resnet18`` does),
and the model options (``--model-kwargs``), which override both.

Importing a module runs its code: ``MODULE:FACTORY`` is for code you trust, as
``python -c "import MODULE"`` would be. :func:`erat.models.build_model` puts ``Normalize`` in
front, as for a registered model, so a run folder's ``model.pt`` rebuilds it from the name
recorded in its metadata (the module must be importable where the run is evaluated).

Example::

    net = build_factory("torchvision.models:resnet18", in_shape=(3, 32, 32), num_classes=10)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from erat.errors import UserError, first_line


def is_factory(name: str) -> bool:
    """Whether a model name is ``MODULE:FACTORY`` (a registered name has no colon)."""
    return ":" in name


def absolute(spec: str) -> str:
    """``FILE.py:FACTORY`` with the file's absolute path (a run records it, so that
    ``erat eval RUN`` rebuilds the model from any folder); any other name as it is."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name.endswith(".py") or not attr:
        return spec
    return f"{Path(module_name).expanduser().absolute()}:{attr}"


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable that ``MODULE:FACTORY`` names (the module imported)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise UserError(f"--model {spec!r}: want MODULE:FACTORY, e.g. torchvision.models:resnet18 "
                        "or mynet.py:build")
    obj: Any = _import(module_name, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = getattr(obj, "__file__", None) or getattr(obj, "__name__", module_name)
            raise UserError(f"--model {spec}: {module_name} ({where}) has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--model {spec}: {attr} is a {type(obj).__name__}, not a function or "
                        "class")
    return obj


def _import(module_name: str, spec: str) -> ModuleType:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise UserError(f"--model {spec}: no such file {path}")
        name = f"erat_user_{path.stem}"
        found = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(found)
        sys.modules[name] = module  # (dataclasses and pickling look modules up here)
        run = lambda: found.loader.exec_module(module)  # noqa: E731
    else:
        module = None
        run = lambda: importlib.import_module(module_name)  # noqa: E731
    added = os.getcwd() not in sys.path
    if added:  # like `python -m`: modules in the current folder are found
        sys.path.insert(0, os.getcwd())
    try:
        loaded = run()
    except ModuleNotFoundError as e:
        itself = module is None and (e.name is None or f"{module_name}.".startswith(f"{e.name}."))
        top = (e.name or "").split(".")[0]
        folder = Path(module_name).expanduser().absolute().parent
        if module is not None and top and ((folder / f"{top}.py").is_file()
                                           or (folder / top).is_dir()):  # (a neighbour)
            raise UserError(f"--model {spec}: importing {module_name} failed: {e}; {top} is "
                            f"beside it: add its folder to PYTHONPATH (PYTHONPATH={folder})"
                            ) from e
        if not itself:  # (found, but what it imports is not installed)
            raise UserError(f"--model {spec}: importing {module_name} failed: {e} (a module "
                            "it imports: install it)") from e
        raise UserError(f"--model {spec}: cannot import {module_name} ({e}); run erat from the "
                        "folder that holds it, or add that folder to PYTHONPATH") from e
    except Exception as e:  # the user's module raised while it was imported
        raise UserError(f"--model {spec}: importing {module_name} failed: "
                        f"{type(e).__name__}: {first_line(e)}") from e
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    return module if module is not None else loaded


def source_sha256(spec: str) -> str | None:
    """The SHA-256 of the file holding ``MODULE:FACTORY``'s code (None where it has none, as
    a builtin): an evaluation saved for a network whose code changed since is not reused."""
    try:
        file = inspect.getsourcefile(resolve_factory(spec))
        return hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
    except (TypeError, OSError):
        return None


def build_factory(spec: str, *, in_shape: tuple[int, ...], num_classes: int,
                  **kwargs: Any) -> nn.Module:
    """The ``nn.Module`` that ``MODULE:FACTORY`` returns for this data (module docstring)."""
    factory = resolve_factory(spec)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        params = {}
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given: dict[str, Any] = {}
    if "in_shape" in params:
        given["in_shape"] = tuple(in_shape)
    if "num_classes" in params or any_keyword:
        given["num_classes"] = num_classes
    given.update(kwargs)
    try:
        net = factory(**given)
    except UserError:
        raise
    except Exception as e:  # the user's factory: any error is theirs to read, on one line
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "no arguments"
        raise UserError(f"--model {spec}: calling it with {shown} failed: "
                        f"{type(e).__name__}: {first_line(e)}") from e
    if not isinstance(net, nn.Module):
        raise UserError(f"--model {spec} returned an object of type {type(net).__name__}, not a "
                        "torch.nn.Module")
    return net
