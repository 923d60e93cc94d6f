"""The interface of every evaluation attack, the registry of attacks by name, and presets.

An attack is a dataclass whose fields are its options (declared with
:func:`erat.fields.param`, here named ``option``, whose help becomes an ``erat eval`` flag)
and whose call maps ``(model, x, y, threat, seed)`` to a robust flag per example: True
where the model still classifies the example correctly at every point the attack tried.
It runs only on examples that are still robust; the caller has put the model in eval mode.
A module in this package registers its attack by being here (:func:`register_attack`).

Stages: an evaluation runs attacks in order, each on the survivors of the ones before, so
the flags after stage ``i`` are the worst case over attacks ``0..i``. Their result key is
``robust_key(label, norm, eps)`` with the stage's label: the attack's name for the first,
``a+b`` for ``b`` after ``a``; a preset (``all`` = ``pgd`` then ``autoattack``) gives its
last stage its own name (``all-l2-eps1.5``).

An attack says where it belongs in its own file: ``presets = {"all": 1}`` puts it second in
the preset ``all``; ``roles = {"black-box"}`` makes it the gradient-masking check's attack (its
``queries_option`` names the option that sets its query budget),
``roles = {"reference"}`` the strong attack that PGD is compared with (:mod:`erat.sanity`)
and whose figures are not upper bounds alone (:func:`upper_bound`) (one attack per role and
per preset rank: Square holds black-box, AutoAttack reference); ``title`` its name in
tables (:func:`title`);
``requires`` names the packages it needs (package -> pip requirement); ``describe()`` its
words in a result's ``threat`` (``describe(classes)`` where they depend on the model's number
of classes);
``refuses(h, w, norm)`` says why it cannot attack ``h x w`` images (None when it can; Square
and AutoAttack: :func:`erat.attacks.autoattack.square_refusal`).

Example::

    @register_attack("toy")
    @dataclass
    class Toy:
        def __call__(self, model, x, y, threat, seed):
            return correct(model, threat.project(x, x + threat.eps / 10), y)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from erat.errors import UserError
from erat.fields import FlagSpec, document_settings, flag_specs, init_fields
from erat.fields import param as option  # noqa: F401  (an attack's settings)
from erat.inputs import broken, logits
from erat.registry import Registry
from erat.threat import Threat

ATTACKS = Registry("attack")
# the flags of erat eval besides the attacks' options (tests/test_cli.py keeps this equal to
# the parser's): an option of one of these names would clash with one on the command line
EVAL_FLAGS = frozenset({
    "attack", "batch_size", "checks", "data_dir", "dataset", "debug", "device", "eps", "fast",
    "fresh", "help", "input_range", "json", "model", "model_kwargs", "n", "norm", "normalize",
    "resize", "run_dir", "seed", "test_split", "weights"})


class Attack(Protocol):
    name: str

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: Threat,
                 seed: int) -> Tensor: ...


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator adding an attack dataclass to the registry under ``name``; an option
    named like a flag of ``erat eval`` (:data:`EVAL_FLAGS`), or like another attack's option
    but of another type, is refused (option names are shared by all attacks), and so are a
    role another attack holds, a black-box attack without its ``queries_option`` and a
    preset rank another attack holds (each would silently change what the checks run)."""

    def add(cls: type) -> type:
        if name in presets() or name in getattr(cls, "presets", {}):
            raise ValueError(f"attack {name!r} is the name of a preset")
        clash = sorted(k for k, f in init_fields(cls).items()
                       if k in EVAL_FLAGS and f.metadata.get("flag") is not False)
        if clash:
            raise TypeError(f"attack {name!r}: option(s) {', '.join(clash)} share a name with "
                            "flags of erat eval; rename them")
        _check_roles(name, cls)
        flag_specs({**dict(ATTACKS.items()), name: cls})  # a shared option of another type
        document_settings(cls, "evaluate(..., key=value); erat eval's flags")
        return ATTACKS.decorator(name, named=True)(cls)

    return add


def _check_roles(name: str, cls: type) -> None:
    """One attack per role and per preset rank; a black-box attack names its query option."""
    for role in getattr(cls, "roles", ()):
        held = attack_with(role)
        if held not in (None, name):  # (named both ways: the package registers by file name)
            raise TypeError(f"attacks {name!r} ({cls.__module__}) and {held!r} "
                            f"({ATTACKS[held].__module__}) both claim role {role!r}: one attack "
                            "per role (the checks run that one); take it from one of them")
    if "black-box" in getattr(cls, "roles", ()) and \
            getattr(cls, "queries_option", None) not in init_fields(cls):
        raise TypeError(f"attack {name!r}: a black-box attack names its query-budget option "
                        "in queries_option")
    for preset, rank in getattr(cls, "presets", {}).items():
        taken = [n for n, c in ATTACKS.items()
                 if n != name and getattr(c, "presets", {}).get(preset) == rank]
        if taken:
            raise TypeError(f"attacks {name!r} ({cls.__module__}) and {taken[0]!r} "
                            f"({ATTACKS[taken[0]].__module__}) both take rank {rank} of preset "
                            f"{preset!r}: give each its own rank")


def presets() -> dict[str, tuple[str, ...]]:
    """Preset name -> its attacks in order, from the attacks' own ``presets`` ranks."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for name, cls in ATTACKS.items():
        for preset, rank in getattr(cls, "presets", {}).items():
            ranked.setdefault(preset, []).append((rank, name))
    return {p: tuple(n for _, n in sorted(members)) for p, members in sorted(ranked.items())}


def attack_with(role: str) -> str | None:
    """The registered attack that declares ``role`` in its ``roles`` (None if none does)."""
    return next((n for n in sorted(ATTACKS) if role in getattr(ATTACKS[n], "roles", ())), None)


def title(label: str) -> str:
    """The name tables give a stage label: each attack's ``title`` (its name in capitals
    when it declares none), ``pgd+square`` -> ``PGD+Square``, a preset its attacks'
    (``all`` -> ``PGD+AutoAttack``)."""
    names = presets().get(label) or label.split("+")
    return "+".join(getattr(ATTACKS[n], "title", n.upper()) if n in ATTACKS else n
                    for n in names)


def upper_bound(labels: Sequence[str]) -> bool:
    """Whether the figures of these attacks (names, ``a+b`` labels or presets) are upper
    bounds alone: none of them is the reference attack (``roles = {"reference"}``)."""
    chosen = {a for label in labels for a in (presets().get(label) or label.split("+"))}
    return attack_with("reference") not in chosen


def attack_names() -> list[str]:
    """Registered attacks, then presets."""
    return [*sorted(ATTACKS), *presets()]


def attack_choices() -> str:
    """The attacks and presets in words, for help texts: ``fgsm, pgd; all = pgd, then
    autoattack``."""
    return ", ".join(sorted(ATTACKS)) + "".join(
        f"; {p} = {', then '.join(names)}" for p, names in presets().items())


def attack_options(name: str) -> dict[str, dataclasses.Field]:
    return init_fields(ATTACKS[name])


def attack_flags() -> dict[str, FlagSpec]:
    """Every option of every registered attack as a flag specification."""
    return flag_specs(ATTACKS)


def attack_defaults() -> dict[str, Any]:
    """Every attack option's default (the first attack that declares it), for help texts."""
    out: dict[str, Any] = {}
    for name in sorted(ATTACKS):
        for key, field in attack_options(name).items():
            out.setdefault(key, field.default)
    return out


def build_attack(name: str, options: dict[str, Any]) -> Any:
    """The attack ``name`` with the entries of ``options`` that are its own fields."""
    cls = ATTACKS.lookup(name, attack_names())
    own = {k: v for k, v in options.items() if k in attack_options(name)}
    return cls(**own)


def resolve(spec: str | Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Attack names and stage labels of ``spec``: a name, a preset, a comma-separated list
    or a sequence of names (see the module docstring for the labels)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if len(items) == 1 and items[0] in presets():
        names = presets()[items[0]]
        labels = tuple("+".join(names[: i + 1]) for i in range(len(names)))
        return names, (*labels[:-1], items[0])
    unknown = [s for s in items if s not in ATTACKS]
    bundled = [s for s in unknown if s in presets()]
    if bundled:
        raise UserError(f"attack {bundled[0]!r} is a preset ({', '.join(presets()[bundled[0]])})"
                        " and stands alone; list attacks by name to chain others")
    if not items or unknown:
        shown = ", ".join(repr(u) for u in unknown) or "nothing"
        raise UserError(f"unknown attack {shown}; choose from {', '.join(attack_names())} "
                        "(or a comma-separated list)")
    if len(set(items)) != len(items):
        raise UserError(f"attack list {','.join(items)} names an attack twice")
    names = tuple(items)
    return names, tuple("+".join(names[: i + 1]) for i in range(len(names)))


def robust_key(label: str, norm: str, eps: float) -> str:
    """Key of a robust accuracy in a result, e.g. ``robust_key("pgd", "l2", 1.5)`` ->
    ``"pgd-l2-eps1.5"``; :func:`read_key` reads it back."""
    return f"{label}-{norm}-eps{eps:g}"


_KEY = re.compile(  # (a label may hold hyphens and pluses: rs-fgsm, pgd+autoattack)
    r"^([a-z0-9+]+(?:-[a-z0-9+]+)*?)-(l2|linf)-eps([0-9.e+-]+)$")


def read_key(key: str) -> tuple[str, str, str] | None:
    """``(label, norm, eps as written)`` of a :func:`robust_key` (``"pgd-l2-eps1.5"`` ->
    ``("pgd", "l2", "1.5")``), None for any other key."""
    m = _KEY.match(key)
    return (m[1], m[2], m[3]) if m else None


def correct(model: nn.Module, x: Tensor, y: Tensor, clean: bool = False) -> Tensor:
    """Per-example correctness ``[B]`` (on the CPU) of ``model`` at ``x``, without a graph.
    Outputs that are not finite count as wrong (an attack that drives the model to NaN has
    broken it); on ``clean`` inputs they are refused (:func:`erat.inputs.logits`)."""
    with torch.no_grad():
        out = model(x)
    if clean:
        logits(out, len(x), "test images")
    return ((out.argmax(dim=1) == y) & ~broken(out)).cpu()
