"""Suites: a YAML file of runs (``src/erat/configs/<suite>.yaml``, or a path) found, read and
expanded (``seeds`` and ``grid`` into one run each), each run's
:class:`~erat.config.TrainConfig` resolved (:func:`run_config`), and the suite's ``eval``,
``energy``, ``autoattack`` and ``plots`` settings checked for every run before anything
trains (:func:`check_suite`). :mod:`erat.reproduce` runs them.

Example::

    suite = load_suite("digits")
    cfgs = [run_config(suite, run, {}) for run in suite["runs"]]
    check_suite(suite, cfgs)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from importlib import resources
from pathlib import Path
from typing import Any

from erat.config import TrainConfig, resolve
from erat.datasets import dataset_info, own_scheme
from erat.errors import UserError
from erat.evaluate import EvalConfig
from erat.files import read_yaml
from erat.fit.validate import val_radius
from erat.methods import ball

SUITE_KEYS = {"suite", "description", "defaults", "runs", "eval", "energy", "plots", "report",
              "autoattack"}
RUN_ONLY_KEYS = {"name", "eval", "energy", "seeds", "grid", "family", "radius", "eval_last"}


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
    if path.suffix in (".yaml", ".yml") and not path.is_file():
        raise UserError(f"no such suite file: {path}")
    if not path.is_file():
        path = suite_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown suite {name_or_path!r}; choose one of "
                        f"{', '.join(suite_names())} or give a YAML file")
    suite = read_yaml(path, "suite")
    if not isinstance(suite, dict):
        raise UserError(f"{path}: a suite is a mapping with a 'runs' list")
    unknown = sorted(set(suite) - SUITE_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a suite holds "
                        f"{', '.join(sorted(SUITE_KEYS))}")
    if not isinstance(suite.get("runs"), list):
        raise UserError(f"{path}: a suite needs a 'runs' list")
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
        grid, seeds = _grid_and_seeds(run, source)
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
                _check_run_name(entry["name"], source)
                out.append(entry)
    names = [r["name"] for r in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{source}: duplicate run names {dupes}")
    return out


def _grid_and_seeds(run: dict[str, Any], source: str) -> tuple[dict[str, list], list | None]:
    """A run's ``grid`` (a mapping of setting -> non-empty list) and ``seeds`` (a non-empty
    list of integers, or None), refused in one line naming the run when malformed."""
    where = f"{source} run {run['name']}"
    grid, seeds = run.get("grid") or {}, run.get("seeds")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{where}: grid must map each setting to a non-empty list of values "
                        f"(grid: {{eps: [0.5, 1.0]}}), got {grid!r}")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{where}: seeds must be a non-empty list of integers (seeds: [0, 1, "
                        f"2]), got {seeds!r}")
    if seeds is not None and len(set(seeds)) < len(seeds):
        raise UserError(f"{where}: seeds {seeds} name a seed twice")
    both = sorted(({"seed"} if seeds is not None else set()) & set(run)
                  | set(grid) & (set(run) - {"grid"}))
    if both:  # (the list replaced the single value without a word)
        raise UserError(f"{where}: {both[0]} is given both as a value and in "
                        f"{'seeds' if both[0] == 'seed' else 'grid'}; give one")
    return grid, seeds


def _check_run_name(name: str, source: str) -> None:
    """A run's name is its folder under ``<out>/runs/``: one plain path component, so that
    no run is written outside ``--out`` (``../x``, ``/tmp/x``) or hidden (``.x``)."""
    if not name.strip() or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UserError(f"{source}: run name {name!r} must be a plain folder name (not "
                        "empty, no '/' or '\\', no leading '.')")


def _short(v: Any) -> str:
    if v is None:
        return "default"
    return f"{v:g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def run_config(suite: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]
               ) -> TrainConfig:
    """Suite defaults < the run's own settings < command-line overrides (e.g. data_dir),
    through :func:`resolve`."""
    where = suite.get("path", suite["suite"])
    return resolve([(suite.get("defaults", {}) or {}, f"{where} defaults"),
                    ({k: v for k, v in run.items() if k not in RUN_ONLY_KEYS},
                     f"{where} run {run['name']}"),
                    (overrides, "the command line")])


def check_suite(suite: dict[str, Any], cfgs: list[TrainConfig]) -> None:
    """Every setting of the suite beside its runs' own (``eval``, ``energy``,
    ``autoattack``, ``plots``), for every run (``cfgs``, in the order of its runs), before
    any training: a run refused at its turn cost the runs before it."""
    _check_runs(suite, cfgs)
    _check_eval_settings(suite, cfgs)
    _check_autoattack(suite, cfgs)
    _check_norms(suite, cfgs)
    _check_plots(suite, *evaluated_ball(suite, cfgs))


def _check_runs(suite: dict[str, Any], cfgs: list[TrainConfig]) -> None:
    """What ``erat train`` checks of each run before it reads data: the dataset's name (a
    registered one; your own data is read at its turn) and the validation's ball and
    checkpoint selection (:func:`erat.fit.validate.val_radius`), blamed on the run."""
    where = suite.get("path", suite["suite"])
    for run, cfg in zip(suite["runs"], cfgs, strict=True):
        try:
            if own_scheme(cfg.dataset) is None:
                dataset_info(cfg.dataset, cfg.data_dir, **cfg.data_options)
            val_radius(cfg.build_method(), cfg.fit, held_out=cfg.val is not None)
        except UserError as err:
            raise UserError(f"{where} run {run['name']}: {err}") from None


def _check_norms(suite: dict[str, Any], cfgs: list[TrainConfig]) -> None:
    """A block that measures a run trained in l-inf (its ``eval``, the suite's
    ``autoattack.eval``, its ``energy``) must name its ``norm`` (or measure at ``eps:
    train``, the training ball): without one it is l2, and the run's figures would be l2
    ones (labelled so, but not asked for)."""
    where = suite.get("path", suite["suite"])
    spec = suite.get("autoattack") or {}
    for run, cfg in zip(suite["runs"], cfgs, strict=True):
        if ball(cfg.build_method())[0] != "linf" or run.get("eval", True) is False:
            continue  # (a run without test figures: no evaluation, energy or AutoAttack)
        attacked = spec and (run["name"] in (spec.get("also") or [])
                             or _grouped(spec.get("group") or [], identity(run, cfg)))
        blocks = {"eval": {**(suite.get("eval") or {}), **(run.get("eval") or {})},
                  "autoattack.eval": autoattack_eval(spec) if attacked else None,
                  "energy": run["energy"] if "energy" in run else suite.get("energy")}
        for name, block in blocks.items():
            if isinstance(block, dict) and "norm" not in block and block.get("eps") != "train":
                raise UserError(f"{where}: {name} gives no norm, so it measures in l2, and "
                                f"run {run['name']} trained in l-inf: give norm: linf (or "
                                "norm: l2 to measure in l2)")


def _check_eval_settings(suite: dict[str, Any], cfgs: list[TrainConfig]) -> None:
    """Every evaluation and energy setting of the suite resolves, for every run (before any
    training: a run refused at its turn cost the runs before it; the runs' own settings were
    checked by :func:`run_config`)."""
    spec = autoattack_eval(suite["autoattack"]) if suite.get("autoattack") else None
    where = suite.get("path", suite["suite"])
    for run, cfg in zip(suite["runs"], cfgs, strict=True):
        _check_energy(suite, run)
        if run.get("eval", True) is not False:
            ev = {**(suite.get("eval") or {}), **(run.get("eval") or {})}
            _check_count((suite.get("eval") or {}).get("n"), f"{where}: eval.n")
            _check_count((run.get("eval") or {}).get("n"), f"{where} run {run['name']}: eval.n")
            try:
                _check_eval(ev, cfg)
            except UserError as err:  # blamed on the suite's block when it fails alone
                own = f" run {run['name']}" if _check_eval(suite.get("eval") or {}, cfg,
                                                           quiet=True) else ""
                raise UserError(f"{where}{own}: eval: {err}") from None
        try:
            if spec:
                _check_eval(spec, cfg)
        except UserError as err:
            raise UserError(f"{where}: autoattack.eval: {err}") from None


def _check_count(n: object, name: str) -> None:
    """A number of test images: None (all) or an integer >= 1 (-1 measured all but one)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise UserError(f"{name} must be a number of test images (1 or more; leave it out "
                        f"for all), got {n!r}")


def _check_eval(ev: dict[str, Any], cfg: TrainConfig, quiet: bool = False) -> bool:
    """Whether the evaluation settings ``ev`` (a suite's ``eval``, ``n`` aside) resolve for
    the run ``cfg``; ``UserError`` unless ``quiet``."""
    try:
        EvalConfig.build(**eval_at_radii({k: v for k, v in ev.items() if k != "n"}, cfg))
    except UserError:
        if not quiet:
            raise
        return False
    return True


AUTOATTACK_KEYS = ("n", "eval", "group", "also")


def autoattack_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings of a suite's ``autoattack`` section: its ``eval``, the attack
    ``all`` (PGD, then AutoAttack) unless it names another."""
    return {"attack": "all", **(spec.get("eval") or {})}


GROUP_KEYS = ("family", "radius", "budget")


def _check_autoattack(suite: dict[str, Any], cfgs: list[TrainConfig]) -> None:
    """The suite's ``autoattack`` mapping, before any training: its keys, ``n`` a count,
    ``group`` keys of :func:`identity`, ``also`` runs of the suite; and a validation robust
    accuracy for every evaluated run that falls in a group, the figure its best is chosen by
    (without it the run was never attacked, and nothing said so)."""
    spec, where = suite.get("autoattack"), f"{suite.get('path', suite['suite'])}: autoattack"
    if not spec:
        return
    if not isinstance(spec, dict) or set(spec) - set(AUTOATTACK_KEYS):
        raise UserError(f"{where} must be a mapping of {', '.join(AUTOATTACK_KEYS)}, got {spec!r}")
    n, group, also = spec.get("n", 500), spec.get("group", []), spec.get("also") or []
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"{where}.n must be a number of test images (1 or more), got {n!r}")
    if not isinstance(group, list) or not all(k in GROUP_KEYS for k in group):
        raise UserError(f"{where}.group must be a list of {', '.join(GROUP_KEYS)}, got {group!r}")
    if not isinstance(also, list) or not all(isinstance(a, str) for a in also):
        raise UserError(f"{where}.also must be a list of run names, got {also!r}")
    if not group and not also:
        raise UserError(f"{where} attacks no run: give group (each group's best on "
                        "validation, e.g. [family, budget]) or also (runs by name)")
    runs = suite["runs"]
    unknown = sorted(set(also) - {r["name"] for r in runs})
    if unknown:
        raise UserError(f"{where}.also must list runs of the suite; no run {unknown!r}")
    for run, cfg in zip(runs, cfgs, strict=True):
        if not _grouped(group, identity(run, cfg)) or run.get("eval", True) is False \
                or run["name"] in also:
            continue
        eps = ball(cfg.build_method())[1]
        if cfg.val is None or not (cfg.fit.val_eps or eps):  # (validation's radius)
            raise UserError(
                f"{where}.group chooses each group's best run by validation robust accuracy, "
                f"which run {run['name']} lacks (it needs val and a val_eps or a method eps); "
                "give it those, or name it in autoattack.also")


def _grouped(group: list[str], row: dict[str, Any]) -> bool:
    """Whether a run (its :func:`identity` row) falls in a group of ``autoattack.group``:
    there is a group, and the row holds each of its keys."""
    return bool(group) and all(k in row for k in group)


def _check_energy(suite: dict[str, Any], run: dict[str, Any]) -> None:
    """A run's energy settings (its own ``energy``, else the suite's): known names of
    :func:`erat.measure.energy_report`, a radius, and values :func:`erat.energy.
    check_settings` accepts."""
    import inspect

    from erat.energy import check_settings
    from erat.measure import STRONG, energy_report

    en = run["energy"] if "energy" in run else suite.get("energy")
    if not en:
        return
    where = suite.get("path", suite["suite"]) + (f" run {run['name']}" if "energy" in run
                                                  else "") + ": energy"
    takes = set(inspect.signature(energy_report).parameters) - {"model", "x", "y"} | {"n"}
    if not isinstance(en, dict) or set(en) - takes or "eps" not in en:
        wrong = f" (not {', '.join(map(str, sorted(set(en) - takes)))})" \
            if isinstance(en, dict) and set(en) - takes else ""
        if isinstance(en, dict) and not wrong:
            raise UserError(f"{where} needs eps, the radius of the energy's ball, got {en!r}")
        raise UserError(f"{where} must be a mapping with eps and any of "
                        f"{', '.join(sorted(takes - {'eps'}))}{wrong}, got {en!r}")
    try:
        _check_count(en.get("n"), "n")  # (named as the block: where)
        check_settings(en["eps"], *(en.get(k, STRONG[k]) for k in ("T", "M", "S")), "max",
                       en.get("norm", "l2"), warn=False)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def evaluated_ball(suite: dict[str, Any], cfgs: list[TrainConfig]) -> tuple[str, list]:
    """The norm a suite evaluates in and its radii: ``eval.norm`` (l2 by default) and
    ``eval.eps``; with ``eps: train`` and no ``eval.norm``, its runs' training balls, of one
    norm (runs of both norms are refused: the table and plots have one)."""
    from erat.fields import BadValue, radii

    ev = suite.get("eval") or {}
    eps = ev.get("eps")
    if eps != "train":
        with contextlib.suppress(BadValue):  # (else refused as it is, by EvalConfig)
            eps = radii(eps) if isinstance(eps, str) else eps
        return ev.get("norm", "l2"), [e for e in (eps if isinstance(eps, list) else [eps])
                                      if isinstance(e, int | float) and 0 <= e < math.inf]
    balls = {ball(c.build_method()) for c in cfgs}
    balls = {(n, e) for n, e in balls if e is not None}
    norms = {n for n, _ in balls}
    if "norm" not in ev and len(norms) > 1:
        raise UserError(f"{suite.get('path', suite['suite'])}: eval eps: train on runs trained "
                        f"in {' and '.join(sorted(norms))}: give eval.norm, or one suite a norm")
    norm = ev.get("norm") or (norms.pop() if norms else "l2")
    return norm, sorted(e for n, e in balls if n == norm)


def landscape_eps(suite: dict[str, Any], norm: str, radii: list) -> object:
    """The landscape's radius: ``plots.landscape_eps`` (a number, or a fraction as 8/255),
    else 1.0 in l2 and in l-inf the largest of the suite's radii (``radii``; 1.0 is the
    whole box there; 8/255 without one)."""
    from erat.fields import BadValue, number

    given = (suite.get("plots") or {}).get("landscape_eps")
    with contextlib.suppress(BadValue):  # (else refused as it is)
        given = number(given) if isinstance(given, str) else given
    if given is not None or norm == "l2":
        return 1.0 if given is None else given
    return max(radii, default=8 / 255)


def _check_plots(suite: dict[str, Any], norm: str, radii: list) -> None:
    """The suite's landscape settings (``plots``), before any training: they were read only
    after the suite had run and its tables were written."""
    from erat.threat import check_radius

    plots, where = suite.get("plots") or {}, f"{suite.get('path', suite['suite'])}: plots"
    known = ("landscape", "landscape_eps", "landscape_index")
    if not isinstance(plots, dict) or set(plots) - set(known):
        raise UserError(f"{where} must be a mapping of {', '.join(known)}, got {plots!r}")
    if check_radius(landscape_eps(suite, norm, radii), norm, f"{where}.landscape_eps",
                    warn="landscape_eps" in plots) == 0 and plots.get("landscape", True):
        raise UserError(f"{where}.landscape_eps must be > 0: the landscape of a radius-0 ball "
                        "is one point")
    index = plots.get("landscape_index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"{where}.landscape_index must be a test image's position (0 or "
                        f"more), got {index!r}")


def eval_at_radii(ev: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``ev`` with ``eps: train`` replaced by the run's training ball (its method's radius,
    default or set, and its norm: :func:`erat.methods.ball`)."""
    if ev.get("eps") != "train":
        return ev
    norm, eps = ball(cfg.build_method())
    if eps is None:
        raise UserError(f"eval eps: train needs a method with a radius; {cfg.method!r} has none")
    if ev.get("norm", norm) != norm:
        raise UserError(f"eval eps: train is method {cfg.method}'s {norm} radius; the eval's norm "
                        f"{ev['norm']} needs its own eps")
    return {**ev, "eps": [eps], "norm": norm}


def identity(run: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The columns that name a run and place it in a group: name, family, radius, budget."""
    return {"name": run["name"], **{k: run[k] for k in ("family", "radius") if k in run},
            **({"budget": cfg.fit.budget} if cfg.fit.budget is not None else {})}
