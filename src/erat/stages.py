"""The bookkeeping of a robustness evaluation on tensors: :class:`EvalConfig` (its typed
settings, every attack built once) and :class:`Stages`, which runs clean accuracy and then
each attack, batch by batch, on the examples still robust, worst case per example.

An example counts as robust at ``eps`` only if it is classified correctly on the clean pass
AND at the end point of every attack run against it (Croce & Hein 2020, arXiv 2003.01690;
RobustBench, arXiv 2010.09670), at ``eps`` and at every smaller radius evaluated. Every
(stage, batch) is seeded from the evaluation's seed, and the per-example flags can be saved
after every batch (:class:`Progress`) and reused when the settings, the data and the weights
match, so a resumed evaluation gives the same numbers as an uninterrupted one.

Example::

    cfg = EvalConfig.build("pgd", eps=[0.5], steps=20)
    flags = Stages(model, x, y, cfg, Progress(None, {})).run_attacks()
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from erat import fields
from erat.attacks import Attack, attack_options, build_attack, correct, resolve, robust_key
from erat.attacks.base import ATTACKS
from erat.errors import UserError
from erat.fields import flag
from erat.files import atomic_save, tensor_sha256
from erat.threat import Norm, Threat, check_radius

STATE_VERSION = 3  # the evaluation's rules: saved progress and cached results of another
# are recomputed (3: PGD's default step max(2.5 eps/steps, eps/4), radii carried upward)
L2_RADII = (0.5, 1.0)  # an l2 evaluation's radii where none are given


def _radius(e: object) -> object:
    """One radius of a list as :func:`check_radius` takes it: ``"8/255"`` read as the command
    line reads it, a one-element tensor as its number; anything else as given."""
    if isinstance(e, str):
        try:
            return fields.number(e)
        except fields.BadValue as err:
            raise UserError(f"eps: {err}") from None
    return e.item() if isinstance(e, Tensor) and e.numel() == 1 else e


@dataclass(frozen=True)
class EvalConfig:
    """The settings of an evaluation. ``attacks`` are run in order (:func:`erat.attacks.
    resolve` gives their stage ``labels``); ``options`` holds the attacks' own settings by
    name (e.g. ``steps``, ``restarts``, ``square_queries``); ``sanity_n = 0`` skips the
    checks that cost attack work. ``built`` holds each attack, built once from ``options``."""

    attacks: tuple[str, ...] = ("pgd",)
    labels: tuple[str, ...] = ("pgd",)
    norm: Norm = "l2"
    eps: tuple[float, ...] | None = None  # (None: L2_RADII in l2; l-inf names its own)
    batch_size: int = 500
    seed: int = 0
    sanity_n: int = 100
    masking_check: bool = True
    masking_queries: int = 500
    options: dict[str, Any] = field(default_factory=dict)
    built: tuple[Attack, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        eps = self.eps
        if eps is None and self.norm == "linf":
            raise UserError("an l-inf evaluation needs its radii, e.g. eps=8/255 (the l2 "
                            f"defaults {', '.join(map(str, L2_RADII))} are no l-inf radii)")
        if isinstance(eps, str):  # (as the command line takes them: "8/255,16/255")
            try:
                eps = fields.radii(eps)
            except fields.BadValue as err:
                raise UserError(f"eps: {err}") from None
        one = isinstance(eps, numbers.Real) or isinstance(eps, Tensor) and eps.dim() == 0
        eps = L2_RADII if eps is None else (eps,) if one else tuple(eps)
        if not eps:
            raise UserError("eps must be a non-empty list of radii")
        object.__setattr__(self, "eps", tuple(check_radius(_radius(e), self.norm) for e in eps))
        fields.integer("batch_size", self.batch_size, 1)
        fields.integer("sanity_n", self.sanity_n, 0)
        fields.integer("masking_queries", self.masking_queries, 1)
        # options of the wrong type or range fail here, once
        object.__setattr__(self, "built", tuple(build_attack(a, self.options)
                                                for a in self.attacks))

    @classmethod
    def build(cls, attacks: str | Sequence[str] = "pgd", *, checks: bool = True,
              strict: bool = False, warn_unused: bool = False, **settings: Any
              ) -> EvalConfig:
        """From names as a user gives them: ``attacks`` (a name, a preset such as ``all``, a
        comma-separated list or a sequence), this class's fields, and attack options;
        ``checks=False`` sets ``sanity_n = 0``. Unknown names raise ``UserError``; with
        ``strict`` (``erat eval``'s flags) so does an option that no attack run takes (a
        suite's shared settings may hold options of another run's attack), and a refused
        setting is named as its flag; ``warn_unused`` (:func:`erat.evaluate.evaluate`) warns
        of such an option instead."""
        if "attack" in settings:  # the flag's and the suites' name for it
            attacks = settings.pop("attack")
        names, labels = resolve(attacks)
        own = {f.name for f in dataclasses.fields(cls) if f.init} - {"attacks", "labels",
                                                                        "options"}
        known_options = {o for a in ATTACKS for o in attack_options(a)}
        unknown = set(settings) - own - known_options
        if unknown:
            raise UserError(f"unknown evaluation setting(s): {', '.join(sorted(unknown))}")
        base = {k: v for k, v in settings.items() if k in own}
        options = {k: v for k, v in settings.items() if k in known_options}
        if not checks:
            base["sanity_n"] = 0
        checked = {"steps"} if base.get("sanity_n", 1) else set()  # (the checks' PGD: its own step)
        takes = {o for a in names for o in attack_options(a)} | checked  # (the checks' PGD)
        unused = sorted(set(options) - takes)
        if strict and unused:
            owners = [a for a in ATTACKS if unused[0] in attack_options(a)]
            raise UserError(f"{flag(unused[0])} is an option of {', '.join(owners)}, which "
                            f"--attack {','.join(names)} does not run")
        if warn_unused and unused:  # (the library's evaluate: said, not refused)
            warnings.warn(f"{', '.join(unused)}: no attack of {','.join(names)} takes it; "
                          "ignored", UserWarning, stacklevel=3)
        try:
            return cls(attacks=names, labels=labels, options=options, **base)
        except UserError as err:  # (named as the flag that gave the setting)
            raise fields.flagged(err) if strict else err from None

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON-ready data (without the built attacks)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def stages(self) -> list[tuple[str, Attack]]:
        """``(label, attack)`` of each stage, in order."""
        return list(zip(self.labels, self.built, strict=True))


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state (parameters and buffers)."""
    return tensor_sha256(list(model.state_dict().values()))


def progress_key(cfg: EvalConfig, model: nn.Module, x: Tensor, y: Tensor, sample: Tensor
                 ) -> dict:
    """What saved progress must match to be reused: the config, the data, the weights, and
    the model's outputs ``sample`` on the first inputs, rounded (the network's code may have
    changed around the same weights; a rounding that flips only recomputes)."""
    raw = {"version": STATE_VERSION, **cfg.settings(), "n": len(y),
           "data": tensor_sha256([x, y]), "weights": weights_fingerprint(model),
           "outputs": tensor_sha256([sample.detach().float().cpu().round(decimals=3)])}
    return json.loads(json.dumps(raw))  # tuples -> lists, as they come back from disk


class Progress:
    """Per-example robust flags and batches done, per stage key; saved atomically at
    ``path`` after every batch (``None``: kept in memory only) and reused when ``key``
    matches the saved one. A saved state of other settings is replaced, with a warning only
    when that evaluation was left unfinished (:meth:`finish` marks a finished one)."""

    def __init__(self, path: Path | None, key: dict):
        self.path, self.key, self.resumed = path, key, False
        self.flags: dict[str, Tensor] = {}
        self.done: dict[str, int] = {}
        if path is None or not Path(path).exists():
            return
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as err:  # unreadable (truncated, foreign): start afresh
            warnings.warn(f"ignoring unreadable evaluation state {path}: {err}", stacklevel=3)
            return
        if isinstance(saved, dict) and saved.get("settings") == key:
            self.flags, self.done, self.resumed = saved["flags"], saved["done"], True
        elif not (isinstance(saved, dict) and saved.get("finished")):
            warnings.warn(f"evaluation state {path} has other settings (an unfinished "
                          "evaluation); starting afresh", stacklevel=3)

    def get(self, key: str, start: Tensor) -> tuple[Tensor, int]:
        if key in self.flags:
            return self.flags[key].clone(), self.done[key]
        return start.clone(), 0

    def put(self, key: str, flags: Tensor, done: int) -> None:
        self.flags[key], self.done[key] = flags.clone(), done
        self._save(finished=False)

    def finish(self) -> None:
        """Mark the saved state as a finished evaluation (replaced silently by another)."""
        self._save(finished=True)

    def _save(self, finished: bool) -> None:
        if self.path is not None:
            atomic_save({"settings": self.key, "flags": self.flags, "done": self.done,
                         "finished": finished}, Path(self.path))


class Stages:
    """Runs stages (clean, attacks, check attacks) batch by batch on still-robust examples
    of ``x`` ``[N, ...]`` (on the model's device) with labels ``y`` ``[N]``."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig,
                 progress: Progress, show: bool = False):
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.progress, self.show = progress, show
        self.alone: dict[str, Tensor] = {}  # flags of each radius attacked on its own

    def run(self, key: str, start: Tensor, attack: Attack | None,
            threat: Threat | None = None) -> Tensor:
        """Flags ``[len(start)]`` after ``attack`` (None: clean accuracy) on the examples
        flagged in ``start`` (indices ``0..len(start)-1``), one batch at a time, seeded per
        batch, saving after each batch."""
        flags, done = self.progress.get(key, start)
        bs = self.cfg.batch_size
        n_batches = math.ceil(len(flags) / bs)
        batches = range(done, n_batches)
        if self.show:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=key, initial=done, total=n_batches, leave=False,
                           disable=None)  # (a bar on a terminal, none in a log file)
        for b in batches:
            idx = torch.arange(b * bs, min((b + 1) * bs, len(flags)))
            live = idx[flags[idx]]
            if len(live) and (threat is None or threat.eps > 0):  # eps 0: robust = clean
                seed = zlib.crc32(f"{self.cfg.seed}/{key}/{b}".encode())
                torch.manual_seed(seed)
                xb, yb = self.x[live.to(self.x.device)], self.y[live.to(self.x.device)]
                flags[live] = (correct(self.model, xb, yb, clean=True) if attack is None
                               else attack(self.model, xb, yb, threat, seed).cpu())
            self.progress.put(key, flags, b + 1)
        return flags

    def run_attacks(self) -> dict[str, Tensor]:
        """Per-example flags: ``"clean"`` and one entry per stage and radius. Each radius is
        attacked from the clean flags (kept in :attr:`alone`); an example broken at a smaller
        radius then counts as broken at every larger one, whose ball holds its point."""
        clean = self.run("clean", torch.ones(len(self.y), dtype=torch.bool), None)
        for eps in self.cfg.eps:
            src = clean
            for label, attack in self.cfg.stages():
                src = self.run(f"{label}@{eps!r}", src, attack, Threat(self.cfg.norm, eps))
                self.alone[robust_key(label, self.cfg.norm, eps)] = src
        carried = {}
        for label in self.cfg.labels:
            smaller = clean
            for eps in sorted(set(self.cfg.eps)):
                key = robust_key(label, self.cfg.norm, eps)
                carried[key] = smaller = self.alone[key] & smaller
        return {"clean": clean, **{k: carried[k] for k in self.alone}}  # (in alone's order)
