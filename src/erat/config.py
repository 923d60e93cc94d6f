"""Configuration: :class:`TrainConfig`, the merge rule of its layers, YAML in and out (a
suite's file: :mod:`erat.suites`, which resolves each of its runs here).

Precedence, lowest first (:func:`resolve`, the one path for the CLI and suites): the
defaults of :class:`TrainConfig` < the saved ``config.yaml`` of a run being resumed <
``--config FILE.yaml`` (or a suite's ``defaults`` and the run's own entry) < flags given on
the command line. Keys that are not settings of :class:`TrainConfig` are the method's
hyper-parameters (:func:`erat.methods.method_flags`) and go to ``method_params``; changing
the method keeps the previous method's threat (``eps``, ``norm``) where the new one takes it
and drops the other parameters, with a note.

Example::

    cfg = resolve([(read_settings(Path("c.yaml")), "c.yaml"), ({"lr": 0.01}, "flags")])
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erat.datasets import dataset_names, is_embedded
from erat.datasets.own import check_options
from erat.distributed import world_size
from erat.errors import UserError
from erat.fields import (
    check_types,
    differs,
    flag,
    flagged,
    integer,
    param,
    python_numbers,
    read_numbers,
)
from erat.files import read_yaml
from erat.fit import FitOptions
from erat.fit.options import RESUME_MAY_CHANGE as FIT_MAY_CHANGE
from erat.methods import (
    METHODS,
    Method,
    build_method,
    method_flags,
    method_names,
    method_params,
    reserve,
)
from erat.models import check_kwargs, model_names, model_params

RENAMED = {"epoch_steps": "epoch_updates", "warmup_steps": "warmup_updates",
           "alpha": "adv_weight"}
# settings a resumed run may change: where things are, how they are shown, and how fast the
# same arithmetic runs (not its precision, amp and fast_bf16, nor where its batches are drawn,
# fast and fast_data: another generator); model.pt's ``ran`` says how the last session ran
RESUME_MAY_CHANGE = {"data_dir", "download", "device", "keep_checkpoint", *FIT_MAY_CHANGE}


def model_options() -> list[str]:
    """Each registered model's keyword options and their defaults (a bare name: none), for
    the help (one item: the help joins items with commas, which the options hold)."""
    def shown(k: str, v: Any) -> str:
        return k if v is inspect.Parameter.empty else f"{k}={v!r}"

    return ["; ".join(f"{m} {', '.join(shown(k, v) for k, v in model_params(m).items())}"
                      .strip() for m in model_names())]


# fields whose help lists the registered names (the registries are the one list)
REGISTERED = {"dataset": dataset_names, "model": model_names, "method": method_names,
              "model_kwargs": model_options}

FIRST = ("dataset", "data_dir", "download", "test_split", "resize", "model", "model_kwargs",
         "method", "method_params",
         "epochs", "budget", "budget_epochs", "batch_size", "labels", "val")


@dataclass
class TrainConfig:
    """Everything a run depends on: what to train (dataset, model, method, splits, device)
    and how (``fit``, :class:`~erat.fit.FitOptions`); saved flat as ``config.yaml`` in the
    run folder (:meth:`to_dict`), read back by :meth:`from_dict`."""

    dataset: str = param("digits", "dataset (your own: folder:PATH, an ImageFolder tree, or "
                                   "npz:PATH; docs/own-model-and-data.md)")
    data_dir: str | None = param(None, "folder holding the official dataset files")
    download: bool = param(False, "download the dataset through torchvision")
    test_split: float | None = param(None, "your own data without a test split: hold out this "
                                           "fraction of each class (fixed seed)")
    resize: int | None = param(None, "your own data: resize every image to N x N pixels")
    model: str = param("mlp", "model (your own: MODULE:FACTORY, any nn.Module)")
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": 'model options as JSON, e.g. \'{"width": 16}\''})
    method: str = param("erm", "training method")
    method_params: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})
    labels: int | None = param(None, "semi-supervised: keep N labels, balanced over the "
                                     "classes (drawn with --seed), the rest unlabeled")
    val: int | None = param(None, "hold out N training images for validation")
    val_seed: int = param(0, "seed of the validation hold-out (not --seed: every run holds "
                             "out the same images)")
    device: str = param("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    sync_bn: bool = param(False, "multi-GPU: SyncBatchNorm instead of per-rank statistics")
    keep_checkpoint: bool = param(False, "keep checkpoint.pt after the run finishes")
    fit: FitOptions = field(default_factory=FitOptions, metadata={"flag": False})

    def __post_init__(self) -> None:
        python_numbers(self)
        check_types(self)
        for name in ("labels", "val"):
            if getattr(self, name) is not None:
                integer(name, getattr(self, name), 1)
        check_options(self.test_split, self.resize)
        check_kwargs(self.model_kwargs)

    def build_method(self) -> Method:
        """The method this configuration trains with (:func:`erat.methods.build_method`)."""
        return build_method(self.method, **self.method_params)

    @property
    def data_options(self) -> dict[str, Any]:
        """The keywords of :func:`erat.datasets.load_dataset` for your own data."""
        return {"test_split": self.test_split, "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From flat settings (the keys of ``config.yaml``): this class's own fields and
        :class:`~erat.fit.FitOptions`' fields; anything else is refused."""
        own, fit = own_fields(), fit_fields()
        unknown = set(d) - own - fit
        if unknown:
            raise UserError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        options = read_numbers(FitOptions, {k: v for k, v in d.items() if k in fit})
        # (FitOptions checks their types; texts such as 8/255 are read as numbers, here and
        # in a method's parameters, so that config.yaml records the number)
        if isinstance(d.get("method_params"), dict) and d.get("method") in METHODS:
            d = {**d, "method_params": read_numbers(METHODS[d["method"]], d["method_params"])}
        return cls(**{k: v for k, v in d.items() if k in own}, fit=FitOptions(**options))

    def to_dict(self) -> dict[str, Any]:
        """The flat settings, what is trained first (the order of ``config.yaml``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fit"}
        d = copy.deepcopy(d) | dataclasses.asdict(self.fit)
        return {k: d[k] for k in [*FIRST, *(k for k in d if k not in FIRST)]}


def own_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)} - {"fit"}


def fit_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(FitOptions)}


def config_fields() -> set[str]:
    """Every flat key of a training configuration."""
    return own_fields() | fit_fields()


def method_keys() -> set[str]:
    """The hyper-parameter names of every registered method (they go to ``method_params``);
    the training settings' names are reserved (:func:`erat.methods.reserve`)."""
    return set(method_flags())


def merge(base: dict[str, Any], new: dict[str, Any], source: str = "settings"
          ) -> dict[str, Any]:
    """Overlay ``new`` on ``base``; keys that are not config fields are method parameters.
    ``source`` names where ``new`` came from, for the error of an unknown key."""
    out = copy.deepcopy(base)
    params = dict(out.get("method_params") or {})
    new = _renamed(new, source)
    if "method" in new and out.get("method") not in (None, new["method"]):
        params = _carried(params, out["method"], new["method"], source)
    fields, flags = config_fields(), method_keys()
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
            raise UserError(f"{source}: unknown setting {key!r}{_did_you_mean(key)}")
    out["method_params"] = params
    return out


def _did_you_mean(key: str) -> str:
    """``"; did you mean 'epochs'?"`` for a key close to a setting's name (a flag's
    spelling, ``epoch-updates``, is its setting's with underscores), else nothing."""
    import difflib

    names = sorted(config_fields() | method_keys())
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=1, cutoff=0.75) or \
        [n for n in names if sorted(n) == sorted(key) and len(n) > 2][:1]  # (esp: eps)
    return f"; did you mean {close[0]!r}?" if close else ""


CARRIED = ("eps", "norm")  # the threat: the one meaning every method gives these


def _carried(params: dict[str, Any], old: str, new: str, source: str) -> dict[str, Any]:
    """The parameters of method ``old`` that carry over to method ``new`` (given by
    ``source``): the threat (``CARRIED``) where ``new`` takes it; the others (a step size,
    a weight: each method's own meaning) are dropped, with a note naming them."""
    try:
        takes = set(method_params(new)) & set(CARRIED)
    except UserError:  # (an unknown method is refused by resolve, with its names)
        return {}
    dropped = sorted(set(params) - takes)
    if dropped:
        print(f"erat: note: the method {old} becomes {new} ({source}); its "
              f"{', '.join(dropped)} dropped", file=sys.stderr)
    return {k: v for k, v in params.items() if k in takes}


def resolve(layers: Sequence[tuple[dict[str, Any], str]], saved: dict[str, Any] | None = None
            ) -> TrainConfig:
    """The one path from settings to a :class:`TrainConfig`, for the CLI and suites alike:
    the defaults < ``saved`` (the configuration of a run being resumed) < each ``(settings,
    source)`` layer in order (a ``--config`` file, then flags; a suite's defaults, a run's
    entry, the command line's overrides). A run's length is ``epochs`` or ``budget``: a layer
    that gives both contradicts itself; a later layer's one replaces an earlier layer's
    other (flags override the ``--config`` file). A setting refused (a range, a type, a
    method's hyper-parameter) is named where it was given (:func:`_sourced`)."""
    if isinstance(layers, dict) or not all(isinstance(pair, tuple | list) and len(pair) == 2
                                           for pair in layers):
        raise TypeError("resolve takes a list of (settings, source) pairs, e.g. "
                        "resolve([({'method': 'er', 'eps': 1.0}, 'mine')])")
    merged = merge({}, migrate(saved), "the saved configuration") if saved else {}
    for settings, source in layers:
        if not isinstance(settings, dict):
            raise UserError(f"{source} must hold a mapping of settings")
        length = {k for k in ("epochs", "budget") if settings.get(k) is not None}
        if len(length) == 2:
            raise UserError(f"--budget and --epochs contradict each other ({source}); give one")
        merged = merge(merged, settings, source)
        if length == {"budget"}:
            merged["epochs"] = None  # the budget drives the run, not an earlier epoch count
        elif length == {"epochs"}:
            merged["budget"] = None
            if "budget_epochs" not in settings:  # (an earlier layer's, for its budget)
                merged.pop("budget_epochs", None)
    try:
        cfg = TrainConfig.from_dict(merged)
    except UserError as err:
        raise _sourced(err, layers) from None
    try:
        cfg.build_method()
    except UserError as err:  # (a parameter the method does not take: where it was given)
        foreign = sorted(set(cfg.method_params) - set(method_params(cfg.method))) \
            if cfg.method in METHODS else []
        raise _sourced(err, layers, foreign[0] if foreign else "method") from None
    return cfg


def _sourced(err: UserError, layers: Sequence[tuple[dict[str, Any], str]],
             fallback: str | None = None) -> UserError:
    """``err`` naming where its setting was given. ``NAME must ...``: its flag when the
    command line gave it (``--val-eps must ...``), else the file or suite entry that gave it
    last (``c.yaml: epochs must ...``); any other message: the file or entry that gave the
    setting ``fallback`` (a method's error: the parameter it does not take, else ``method``).
    Unchanged when no layer gave it."""
    key, _, rest = str(err).partition(" ")
    named = rest.startswith("must ")
    unknown = re.match(r"unknown (dataset|model|method) ", str(err))  # (a registry's error)
    key = key if named else unknown[1] if unknown and fallback is None else fallback
    for settings, source in reversed(layers):
        if key is not None and (key in settings or key in (settings.get("method_params") or {})):
            if source != "flags":
                return UserError(f"{source}: {err}")
            return flagged(err)
    return err


def migrate(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration in today's form: runs before 0.3 recorded ``epochs: 10`` beside
    the ``budget`` that drove them; ``method_params: null`` (a method without settings,
    written by hand) is no settings."""
    out = dict(saved)
    if out.get("budget") is not None:
        out["epochs"] = None
    if "method_params" in out and out["method_params"] is None:
        out["method_params"] = {}
    return out


def _renamed(d: dict[str, Any], source: str) -> dict[str, Any]:
    old = [k for k in d if k in RENAMED]
    for k in old:
        print(f"erat: note: {source}: {k!r} is now called {RENAMED[k]!r}", file=sys.stderr)
    return {RENAMED.get(k, k): v for k, v in d.items()}


def read_settings(path: Path) -> dict[str, Any]:
    """A YAML file of settings (``--config``): a mapping, checked for YAML errors."""
    data = read_yaml(path, "config file")
    if data is None:
        raise UserError(f"{path} is empty: a config file holds settings such as 'epochs: 10'")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    if "runs" in data:
        raise UserError(f"{path} is a suite (it lists runs), not one run's settings: run it "
                        f"with erat reproduce {path}")
    return data


def resume_conflicts(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The settings in ``asked`` that contradict a resumed run's ``saved`` configuration."""
    out, saved = [], migrate(saved)
    fields = {side: method_params(m) if (m := d.get("method")) in METHODS else {}
              for side, d in (("saved", saved), ("asked", {**saved, **asked}))}

    def used(params: dict[str, Any], k: str, side: str) -> Any:  # (left out: its default)
        return params[k] if k in params else getattr(fields[side].get(k), "default", None)

    for key, value in asked.items():
        if key in RESUME_MAY_CHANGE or key not in saved:
            continue
        if key == "method_params":
            differ = {k for k in set(value) | set(saved[key])
                      if used(value, k, "asked") != used(saved[key], k, "saved")}
            out += [differs(k, used(value, k, "asked"), used(saved[key], k, "saved"),
                            ", its default" if k not in saved[key] and k in fields["saved"]
                            else "") for k in sorted(differ)]
        elif value != saved[key]:
            out.append(differs(key, value, saved[key]))
    return out


def resolve_train(out: Path, *, resume: bool, config_file: Path | None,
                  flags: dict[str, Any]) -> TrainConfig:
    """``erat train``'s configuration: the saved one of a run being resumed (``out``) <
    ``config_file`` < ``flags``, through :func:`resolve`."""
    from erat.rundir import RunDir

    run = RunDir(out)
    saved = run.read_config(missing=None) if resume else None
    layers = [(read_settings(config_file), str(config_file))] if config_file else []
    cfg = resolve([*layers, (flags, "flags")], saved)
    given = {k for settings, _ in [*layers, (flags, "")] for k in [
        *settings, *(settings.get("method_params") or {})]}  # (a method's: in a file too)
    notes = idle(cfg, given)
    for kept, dropped in (("epochs", "budget"), ("budget", "epochs")):  # (the run's length)
        if kept in flags and layers and layers[0][0].get(dropped) is not None:
            notes.append(f"{flag(kept)} replaces the {dropped} of {config_file}")
    for line in notes:
        print(f"erat: note: {line}", file=sys.stderr)
    return cfg


def idle(cfg: TrainConfig, given: set[str]) -> list[str]:
    """The settings in ``given`` that ``cfg`` does not use, each with what would use it."""
    embedded = is_embedded(cfg.dataset)
    rules = {
        "data_dir": (embedded, f"{cfg.dataset} is embedded, it reads no files"),
        "download": (embedded and cfg.download, f"{cfg.dataset} is embedded, it downloads "
                                                "nothing"),
        "sync_bn": (cfg.sync_bn and world_size() == 1, "one process; it is for torchrun "
                                                      "with several"),
        "momentum": (cfg.fit.optimizer != "sgd", f"it is SGD's; --optimizer is "
                                                 f"{cfg.fit.optimizer}"),
        "val_eps": (cfg.val is None, "validation needs --val N"),
        "val_steps": (cfg.val is None, "validation needs --val N"),
        "val_n": (cfg.val is None, "validation needs --val N"),
        "unlabeled_batch_size": (cfg.labels is None, "semi-supervised training needs "
                                                      "--labels N"),
        "val_seed": (cfg.val is None, "validation needs --val N"),
        "epoch_updates": (cfg.fit.budget_epochs is not None, "--budget-epochs sets the "
                                                             "epochs' length"),
    }
    method = cfg.build_method()  # (its own: Method.idle)
    rules |= {k: (True, why) for k, why in
              getattr(method, "idle", lambda semi: {})(cfg.labels is not None).items()}
    return [f"{flag(k)} has no effect here ({why})" for k, (unused, why) in rules.items()
            if k in given and unused]


reserve(config_fields(), "the training configuration")
