"""Hyper-parameters as dataclass fields that become command-line flags by themselves, and
the one-line checks of their values.

A method (:mod:`erat.methods`) or an attack (:mod:`erat.attacks`) declares each setting
with :func:`param`; :func:`flag_specs` turns the fields of every registered class into one
flag specification per name (type from the annotation, help from the field), so adding a
hyper-parameter is one line in one file.

Example::

    @dataclass
    class Toy:
        radius: float = param(1.0, "radius of the toy")
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from erat.errors import UserError


class FlagSpec(NamedTuple):
    """What the command line needs to offer one setting as ``--name``."""

    kind: type  # float, int, str, bool (a switch) or dict (JSON)
    choices: tuple[str, ...] | None
    help: str


def param(default: Any, help: str) -> Any:
    """A setting: a dataclass field whose ``help`` is its flag's help."""
    return dataclasses.field(default=default, metadata={"help": help})


def document_settings(cls: type, how: str) -> None:
    """Append each setting of ``cls`` (its default and help) to its docstring, so that
    ``help(cls)`` in Python says what ``--help`` says on the command line; ``how`` names
    where the settings are given."""
    lines = [f"- ``{k}`` (default {f.default!r}): {f.metadata['help']}"
             for k, f in init_fields(cls).items() if "help" in f.metadata]
    if lines and "\nSettings (" not in (cls.__doc__ or ""):
        cls.__doc__ = (cls.__doc__ or "").rstrip() + f"\n\nSettings ({how}):\n\n" + \
            "\n".join(lines) + "\n"


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The settings of a dataclass (its ``__init__`` fields), by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def flag_specs(classes: Mapping[str, type], defaults: bool = False, owners: bool = True
               ) -> dict[str, FlagSpec]:
    """One flag specification per setting name over ``classes`` (name -> dataclass). The
    help names the classes that take the setting (not without ``owners``); classes that
    describe a shared setting differently each keep their own words (``help A [pgd,
    trades]; help B [er]``); with ``defaults``, each owner's default too (``[at, pgd: 2.0;
    fast-at: 0.3]``). Two classes may share a setting name only with the same type."""
    specs: dict[str, FlagSpec] = {}
    helps: dict[str, dict[str, list[tuple[str, str]]]] = {}  # name -> help -> (owner, default)
    for owner in sorted(classes):
        hints = typing.get_type_hints(classes[owner])
        for field in init_fields(classes[owner]).values():
            if field.metadata.get("flag") is False:
                continue
            kind, choices = _flag_type(hints[field.name])
            spec = FlagSpec(kind, choices, field.metadata.get("help", field.name))
            if field.name in specs and specs[field.name][:2] != spec[:2]:
                raise TypeError(f"setting {field.name!r} has two types among {sorted(classes)}")
            specs.setdefault(field.name, spec)
            shown = str(field.default) if defaults and field.default not in (
                None, dataclasses.MISSING) else ""
            helps.setdefault(field.name, {}).setdefault(spec.help, []).append((owner, shown))
    return {k: s._replace(help=_merged(helps[k]) if owners else "; ".join(helps[k]))
            for k, s in specs.items()}


def _merged(helps: dict[str, list[tuple[str, str]]]) -> str:
    """Each help text with its owners; texts that differ only in a closing parenthesis
    share their words once: ``step size (unset: a [er]; b [pgd])``."""
    texts = list(helps)
    common = os.path.commonprefix(texts)
    cut = common.rfind("(")
    if len(texts) == 1 or cut < 0 or ")" in common[cut:] \
            or not all(t.endswith(")") for t in texts):
        return "; ".join(f"{text} [{_owners(owners)}]" for text, owners in helps.items())
    inner = common[cut + 1:][: common[cut + 1:].rfind(" ") + 1]  # (whole words only)
    parts = (f"{text[cut + 1 + len(inner):-1]} [{_owners(owners)}]"
             for text, owners in helps.items())
    return f"{common[:cut]}({inner}{'; '.join(parts)})"


def _owners(owners: list[tuple[str, str]]) -> str:
    """``(a, 1), (b, 1), (c, 2)`` as ``a, b: 1; c: 2`` (owners that share a default together;
    an empty default is not shown)."""
    groups: dict[str, list[str]] = {}
    for owner, default in owners:
        groups.setdefault(default, []).append(owner)
    return "; ".join(", ".join(o) + (f": {d}" if d else "") for d, o in groups.items())


def _flag_type(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    if typing.get_origin(hint) is Literal:
        return str, tuple(typing.get_args(hint))
    if hint is dict or typing.get_origin(hint) is dict:
        return dict, None  # given as JSON
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        return _flag_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    if hint in (bool, int, float, str):
        return hint, None
    raise TypeError(f"settings must be bool, int, float, str or Literal, got {hint}")


# --- argument types for values that are not one number or word ---------------------------


class BadValue(argparse.ArgumentTypeError):
    """A value these parsers refuse: a flag's (argparse shows the message as it is) or a
    file's (the caller names the setting)."""


def path(text: str) -> Path:
    """A path flag's value; an empty one (``--out ""``, which ``Path`` reads as the current
    folder) is refused."""
    if not text.strip():
        raise BadValue("a path, not an empty string")
    return Path(text)


def number(text: str) -> float:
    """A number flag's value: a decimal or a fraction ``a/b`` (``8/255``, CIFAR-10's l-inf
    radius, exactly)."""
    num, slash, den = text.partition("/")
    try:
        return float(num) / float(den) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise BadValue(f"want a number or a fraction a/b, got {text!r}") from None


def radii(text: str) -> list[float]:
    try:
        radii = [number(v) for v in text.split(",")]
    except BadValue as e:
        raise BadValue(f"radii must be numbers or fractions a/b separated by commas: "
                       f"{text!r}") from e
    return radii  # (each one's value is checked where it is used: threat.check_radius)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadValue(f"not JSON: {text!r}") from e
    if not isinstance(value, dict):
        raise BadValue(f"want a JSON object, got {text!r}")
    return value


# --- flags on an argparse parser -----------------------------------------------------


class Parser(argparse.ArgumentParser):
    """A parser whose errors are one line on stderr, exit code 2 (``erat train: error:
    argument --epochs: ... (see erat train --help)``), not the usage text. An argument it
    does not know is an error of this parser, in ``parse_known_args`` too: after a
    subcommand, the subcommand's parser names it (argparse would leave it to the top
    one). Subparsers are of this class as well."""

    def error(self, message: str) -> typing.NoReturn:
        given = re.match(r"argument (--[\w-]+).*: expected one argument$", message)
        if given:  # (argparse reads a value such as -1,1 as a flag)
            message += f" (if the value starts with '-', write {given[1]}=VALUE)"
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's true default once: the parser's own, or the one its help names."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or action.required or isinstance(
                action, argparse._StoreTrueAction | argparse._StoreFalseAction) \
                or default in (None, argparse.SUPPRESS, {}):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


def flag(name: str) -> str:
    """The command-line flag of a setting: ``val_eps`` -> ``--val-eps``."""
    return "--" + name.replace("_", "-")


def off_flag(name: str) -> str:
    """The flag that turns off a setting that is on: ``augment`` -> ``--no-augment``."""
    return "--no-" + name.replace("_", "-")


def differs(name: str, value: Any, saved: Any, note: str = "") -> str:
    """``name value (run: saved)``: a setting asked of a resumed run that it was trained
    with otherwise (``note`` after the saved value, e.g. ``, its default``)."""
    return f"{name} {value!r} (run: {saved!r}{note})"


def flagged(err: UserError) -> UserError:
    """``err`` naming its setting as the flag: ``val_eps must ...`` -> ``--val-eps must ...``
    (any other message unchanged)."""
    name, _, rest = str(err).partition(" ")
    return UserError(f"{flag(name)} {rest}") if rest.startswith("must ") else err


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_nonneg(name: str, value: float) -> None:
    """A setting that must be a finite number >= 0 (one-line ``UserError`` otherwise)."""
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")


def fraction(name: str, value: float) -> None:
    """A setting that must be a number in [0, 1]."""
    if not _number(value) or not 0 <= value <= 1:
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}")


def positive(name: str, value: float | None, *, optional: bool = False) -> None:
    """A setting that must be a finite number > 0 (or None when ``optional``)."""
    if optional and value is None:
        return
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value!r}")


def integer(name: str, value: int, minimum: int) -> None:
    """A setting that must be an integer >= ``minimum`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def choice(name: str, value: str, options: Iterable[str]) -> None:
    """A setting that must be one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise UserError(f"{name} must be one of {', '.join(options)}, got {value!r}")


def read_numbers(cls: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each text given to a number field of the dataclass ``cls`` read as
    :func:`number` reads a flag (``eps: 8/255`` in a YAML file, as ``--eps 8/255``), and
    each number of another type (NumPy's) as Python's; other texts are left for
    :func:`check_types` to refuse."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        hint = hints.get(name)
        out[name] = python_number(value)
        if isinstance(value, str) and hint is not None and _is(1.5, hint) \
                and not _is("text", hint):
            with contextlib.suppress(BadValue):
                out[name] = number(value.strip())
    return out


def python_number(value: Any) -> Any:
    """``value`` as Python's ``int`` or ``float`` when it is a number of another type
    (NumPy's), so that ``config.yaml`` and a checkpoint can hold it; anything else as it is."""
    if isinstance(value, numbers.Real) and type(value) not in (bool, int, float):
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    return value


def python_numbers(instance: Any) -> None:
    """Each number of another type (NumPy's) among a dataclass instance's settings replaced
    by Python's (:func:`python_number`)."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if python_number(value) is not value:
            setattr(instance, f.name, python_number(value))


def check_types(cls: Any, values: Mapping[str, Any] | None = None) -> None:
    """One line naming the setting when a value has the wrong type (``epochs must be an
    integer, got 'ten'``); checks ``values`` against the fields of the dataclass ``cls``, or
    an instance's own values. Nested dataclasses are left to their own check."""
    if values is None:
        cls, values = type(cls), {f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        want = hints[name]
        if isinstance(want, type) and dataclasses.is_dataclass(want):
            continue
        if not _is(value, want):
            raise UserError(f"{name} must be {_kind(want)}, got {value!r}")


def _is(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if args and origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return _number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          dict: "a mapping of names to values"}


def _kind(hint: Any) -> str:
    """A type in words: ``int | None`` -> ``an integer`` (None means "not set", not a
    choice), ``Literal['a', 'b']`` -> ``one of a, b``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if args and origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in args if a is not type(None))
    return _KINDS.get(origin or hint, getattr(hint, "__name__", str(hint)))


def add_flags(group, specs: dict, defaults: dict | None = None, both: bool = False) -> None:
    """Flags from :class:`erat.fields.FlagSpec` entries (switches for booleans; a boolean
    that is on by default is offered as ``--no-NAME``; with ``both``, where owners' defaults
    differ, as ``--NAME`` and ``--no-NAME``), their defaults in the help."""
    for name, spec in specs.items():
        text = spec.help.replace("%", "%%")  # argparse formats help
        default = (defaults or {}).get(name)
        shown = text if default in (None, {}) or spec.kind is bool or "(default" in text \
            else f"{text} (default: {default})"
        if spec.kind is bool and both:
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               help=text)
        elif spec.kind is bool and default is True:
            group.add_argument(off_flag(name), dest=name,
                               action="store_false", help=f"turn off (on by default): {text}")
        elif spec.kind is bool:
            group.add_argument(flag(name), dest=name, action="store_true", help=text)
        else:
            group.add_argument(flag(name), dest=name, type=json_object if spec.kind is dict
                               else number if spec.kind is float else spec.kind,
                               choices=spec.choices, help=shown)


def add_options(group, cls: type) -> None:
    """The settings of the dataclass ``cls`` as flags of ``group`` (an options class such as
    :class:`erat.external.ExternalOptions`), their defaults in the help."""
    add_flags(group, flag_specs({cls.__name__: cls}, owners=False), dataclasses.asdict(cls()))
