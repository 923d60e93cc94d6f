"""Configuration: :class:`TrainConfig`, the merge rule of its layers, YAML in and out, and
suites (loading and expanding seeds and grids). The only module that reads YAML settings.

Precedence, lowest first: the defaults of :class:`TrainConfig` < the saved ``config.yaml``
of a run being resumed < ``--config FILE.yaml`` (or a suite's ``defaults`` and the run's own
entry) < flags given on the command line. Keys that are not fields of :class:`TrainConfig`
are the method's hyper-parameters (:func:`erat.methods.method_flags`) and go to
``method_params``; changing the method drops the previous method's parameters.

Example::

    cfg = TrainConfig.from_dict(merge(merge({}, read_settings("c.yaml")), {"lr": 0.01}))
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from erat.errors import UserError
from erat.fields import param
from erat.files import read_yaml
from erat.fit import FitOptions
from erat.methods import method_flags

RENAMED = {"epoch_steps": "epoch_updates", "warmup_steps": "warmup_updates",
           "alpha": "adv_weight"}
# settings a resumed run may change: where things are and how they are shown
RESUME_MAY_CHANGE = {"data_dir", "download", "device", "progress", "keep_checkpoint"}


FIRST = ("dataset", "data_dir", "download", "model", "model_kwargs", "method", "method_params",
         "epochs", "budget", "budget_epochs", "batch_size", "labels", "val")


@dataclass
class TrainConfig(FitOptions):
    """Everything a run depends on; saved as ``config.yaml`` in the run folder."""

    dataset: str = param("digits", "digits, mnist, fashion-mnist, cifar10, svhn")
    data_dir: str | None = param(None, "folder holding the official dataset files")
    download: bool = param(False, "download the dataset through torchvision")
    model: str = param("mlp", "mlp, cnn, conv-large, preact-resnet18, wrn-28-10")
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": 'model options as JSON, e.g. \'{"width": 16}\''})
    method: str = param("erm", "erm, at, vat, pgd, trades, er")
    method_params: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})
    labels: int | None = param(None, "semi-supervised: keep N balanced labels")
    val: int | None = param(None, "hold out N training images for validation")
    val_seed: int = param(0, "seed of the validation hold-out (not --seed: every run holds "
                             "out the same images)")
    device: str = param("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    sync_bn: bool = param(False, "multi-GPU: SyncBatchNorm instead of per-rank statistics")
    keep_checkpoint: bool = param(False, "keep checkpoint.pt after the run finishes")

    def __post_init__(self) -> None:
        _check_types(self)
        super().__post_init__()
        if self.labels is not None and self.labels < 1:
            raise UserError(f"labels must be an integer >= 1, got {self.labels}")
        if self.val is not None and self.val < 1:
            raise UserError(f"val must be an integer >= 1, got {self.val}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The settings, what is trained first (the order of ``config.yaml``)."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in [*FIRST, *(k for k in d if k not in FIRST)]}

    def fit_options(self) -> FitOptions:
        names = {f.name for f in dataclasses.fields(FitOptions)}
        return FitOptions(**{k: v for k, v in self.to_dict().items() if k in names})


def _check_types(cfg: Any) -> None:
    """One line naming the key when a value has the wrong type (``epochs: ten``)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, want = getattr(cfg, f.name), hints[f.name]
        if not _is(value, want):
            shown = getattr(want, "__name__", None) or str(want).replace("typing.", "")
            raise UserError(f"{f.name} must be {shown}, got {value!r}")


def _is(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if args and origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def merge(base: dict[str, Any], new: dict[str, Any], source: str = "settings"
          ) -> dict[str, Any]:
    """Overlay ``new`` on ``base``; keys that are not config fields are method parameters.
    ``source`` names where ``new`` came from, for the error of an unknown key."""
    out = copy.deepcopy(base)
    params = dict(out.get("method_params") or {})
    new = _renamed(new, source)
    if "method" in new and new["method"] != out.get("method"):
        params = {}  # another method: the old one's parameters do not carry over
    fields, flags = config_fields(), method_flags()
    for key, value in new.items():
        if key == "method_params":
            if not isinstance(value or {}, dict):
                raise UserError(f"{source}: method_params must be a mapping")
            params.update(_renamed(value or {}, source))
        elif key in fields:
            out[key] = value
        elif key in flags:
            params[key] = value
        else:
            raise UserError(f"{source}: unknown setting {key!r}")
    out["method_params"] = params
    return out


def _renamed(d: dict[str, Any], source: str) -> dict[str, Any]:
    old = [k for k in d if k in RENAMED]
    for k in old:
        print(f"erat: note: {source}: {k!r} is now called {RENAMED[k]!r}", file=sys.stderr)
    return {RENAMED.get(k, k): v for k, v in d.items()}


def read_settings(path: Path) -> dict[str, Any]:
    """A YAML file of settings (``--config``): a mapping, checked for YAML errors."""
    data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def resume_conflicts(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The settings in ``asked`` that contradict a resumed run's ``saved`` configuration."""
    out = []
    for key, value in asked.items():
        if key in RESUME_MAY_CHANGE or key not in saved:
            continue
        if key == "method_params":
            differ = {k for k in set(value) | set(saved[key])
                      if value.get(k) != saved[key].get(k)}
            out += [f"{k} {value.get(k)!r} (run: {saved[key].get(k)!r})" for k in sorted(differ)]
        elif value != saved[key]:
            out.append(f"{key} {value!r} (run: {saved[key]!r})")
    return out


# --- suites ----------------------------------------------------------------------------

SUITE_KEYS = {"suite", "description", "defaults", "runs", "eval", "energy", "plots", "report",
              "autoattack"}
RUN_ONLY_KEYS = {"name", "eval", "energy", "seeds", "grid", "family", "eval_last"}


def suite_dir() -> Path:
    return Path(str(resources.files("erat") / "configs"))


def suite_names() -> list[str]:
    return sorted(p.stem for p in suite_dir().glob("*.yaml") if _is_suite(p))


def _is_suite(path: Path) -> bool:
    try:
        data = read_yaml(path)
    except UserError:
        return False
    return isinstance(data, dict) and "runs" in data


def load_suite(name_or_path: str) -> dict[str, Any]:
    """A suite by name (``src/erat/configs/<name>.yaml``) or path, its runs expanded."""
    path = Path(name_or_path)
    if not path.is_file():
        path = suite_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown suite {name_or_path!r}; choose one of "
                        f"{', '.join(suite_names())} or give a YAML file")
    suite = read_yaml(path, "suite")
    if not isinstance(suite, dict):
        raise UserError(f"{path}: a suite is a mapping with a 'runs' list")
    unknown = set(suite) - SUITE_KEYS
    if unknown or not isinstance(suite.get("runs"), list):
        raise UserError(f"{path}: a suite needs a 'runs' list (unknown keys: {sorted(unknown)})")
    suite.setdefault("suite", path.stem)
    suite["path"] = str(path)
    suite["runs"] = expand_runs(suite["runs"], str(path))
    return suite


def expand_runs(runs: list[Any], source: str) -> list[dict[str, Any]]:
    """Each run entry, with ``seeds: [..]`` and ``grid: {key: [..]}`` expanded into one run
    per combination, named ``<name>-<key><value>...-s<seed>``."""
    out = []
    for run in runs:
        if not isinstance(run, dict) or not isinstance(run.get("name"), str):
            raise UserError(f"{source}: every run needs a name, got {run!r}")
        grid = run.get("grid") or {}
        seeds = run.get("seeds")
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            for seed in seeds if seeds is not None else [None]:
                entry = {k: v for k, v in run.items() if k not in ("grid", "seeds")}
                entry.update(zip(keys, values, strict=True))
                suffix = "".join(f"-{k.replace('_', '')}{_short(v)}"
                                 for k, v in zip(keys, values, strict=True))
                if seed is not None:
                    entry["seed"] = seed
                    suffix += f"-s{seed}"
                entry["name"] = run["name"] + suffix
                out.append(entry)
    names = [r["name"] for r in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{source}: duplicate run names {dupes}")
    return out


def _short(v: Any) -> str:
    if v is None:
        return "default"
    return f"{v:g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def run_config(suite: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]
               ) -> TrainConfig:
    """Suite defaults < the run's own settings < command-line overrides (e.g. data_dir)."""
    where = f"{suite.get('path', suite['suite'])} run {run['name']}"
    merged = merge({}, suite.get("defaults", {}) or {}, where)
    merged = merge(merged, {k: v for k, v in run.items() if k not in RUN_ONLY_KEYS}, where)
    merged = merge(merged, overrides, where)
    return TrainConfig.from_dict(merged)
