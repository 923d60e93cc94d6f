"""``erat reproduce SUITE``: train, evaluate and report a named suite of experiments.

A suite is a YAML file (``src/erat/configs/<suite>.yaml``, also reachable as ``configs/``
at the repository root; experiments live in ``experiments/``) with ``defaults`` (training
settings shared by every run), a list of ``runs`` (each a name plus the settings it changes;
``seeds`` and ``grid`` expand into several, :func:`erat.suites.expand_runs`), the ``eval``
and ``energy`` settings, and optionally ``autoattack`` (AutoAttack on a subset for the runs
it names or for the best run of each group on validation: :func:`autoattack_stage`) and
``report`` (the frontier).

Finished steps are skipped, so an interrupted suite continues where it stopped: training
resumes from its checkpoint, a finished evaluation is read back from its JSON when it was
computed on the same weights with the same settings. A run folder that holds another
configuration is refused, never reused. ``only`` (``--only``) trains and evaluates the named
runs and reports every finished run of the suite, so that disjoint ``--only`` lists can run
side by side into one folder; AutoAttack of a group waits until the group is finished, and
what a named run's worker could not attack is attacked by a later pass without ``--only``.
``report_only`` (``--report-only``) writes the report
of what is finished and computes nothing: the runs not trained or evaluated yet are listed
as left out, and with nothing finished it writes nothing (``UserError``). Each run prints
one line, ``[k/N name]`` with its figures, the time elapsed and about how long the rest
takes. A failed sanity check in any run is named by :func:`failed_checks` at the end, and
the command line then exits 3, as ``erat eval`` does.

The report folder holds ``results.csv`` (one row per run: ``method``, ``dataset``,
``clean_acc``, one column per robust-accuracy key, cost, ...), ``results.md`` (the short
table under human column names that is also printed, every column that holds a value, the
commands and the versions), ``runs/<name>/`` and the plots (the loss landscape: one run per
method).
"""

from __future__ import annotations

import difflib
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from erat import __version__, plots, tables
from erat.attacks import resolve
from erat.config import TrainConfig, resume_conflicts
from erat.datasets import check_test_set, is_embedded, load_dataset
from erat.distributed import resolve_device
from erat.errors import UserError
from erat.evaluate import EvalConfig
from erat.fields import flag, off_flag
from erat.files import atomic_write_text, check_writable_dir
from erat.fit.guard import overfitting_epoch
from erat.inputs import first_n
from erat.methods import method_params
from erat.rundir import RunDir
from erat.stages import STATE_VERSION
from erat.suites import (
    autoattack_eval,
    check_suite,
    eval_at_radii,
    evaluated_ball,
    identity,
    landscape_eps,
    load_suite,
    run_config,
)
from erat.threat import ball_name, norm_name
from erat.train import check_epoch_length, train

ENERGY_COLUMNS = ("at_term_mean", "vat_term_mean", "certified_frac")  # (beside the energy's)


class NotReady(Exception):
    """A step of a run (training, an evaluation) that a report-only pass does not compute."""


def reproduce(
    suite_name: str,
    out: Path,
    *,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    report_only: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or continue) a suite; returns the result rows also written to ``out``. With
    ``report_only`` nothing is trained or evaluated: unfinished runs are left out."""
    suite = load_suite(suite_name)
    out = Path(out)
    check_writable_dir(out, "--out")
    names = [r["name"] for r in suite["runs"]]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        near = [n for n in names if any(n.startswith(u) for u in unknown)] or \
            difflib.get_close_matches(unknown[0], names, n=4)
        shown = near or names[:8] + (["..."] if len(names) > 8 else [])
        raise UserError(f"--only: suite {suite['suite']!r} has no run(s) {', '.join(unknown)}"
                        f" ({'did you mean' if near else 'its runs'}: {', '.join(shown)})")
    mine = set(only or names)  # the runs this call reports on the console
    work = set() if report_only else mine  # the runs it may train and evaluate
    runs = suite["runs"]
    cfgs = [run_config(suite, r, overrides or {}) for r in runs]
    check_suite(suite, cfgs)
    if (overrides or {}).get("data_dir") and all(is_embedded(c.dataset) for c in cfgs):
        log(f"note: --data-dir has no effect here ({', '.join(sorted({c.dataset for c in cfgs}))}"
            " is embedded, it reads no files)")
    to_train = {r["name"]: c for r, c in zip(runs, cfgs, strict=True) if r["name"] in work
                and not RunDir(out / "runs" / r["name"]).finished()}
    for device in {c.device for c in to_train.values()}:
        resolve_device(device)  # (a device that is not there: before the first run trains)
    _check_owner(out, suite["suite"], write=not report_only)
    rows, results, commands, test, left_out, pending = [], {}, [], None, [], []
    clock = SuiteClock(len(mine), timed=not report_only, to_train=set(to_train),
                       then=" before AutoAttack" if suite.get("autoattack") else "")
    said: list[str] = []  # run_one logs only when it trains or evaluates

    def noted(line: str) -> None:
        said.append(line)
        log(line)

    for run, cfg in zip(runs, cfgs, strict=True):
        name = run["name"]
        folder = RunDir(out / "runs" / name)
        commands.append(command(cfg, folder.path))
        said.clear()
        if name in mine:
            clock.start()
        try:
            row, result, data = run_one(suite, run, cfg, folder, noted, name not in work)
        except NotReady as why:
            left_out.append(f"{name} ({why})")
            pending.append(identity(run, cfg))
            continue
        test = data or test
        rows.append(row)
        if result is not None:
            results[name] = result
        if name in mine:
            log(clock.line(name, bool(said), summary(row)))
    if not rows:
        raise UserError(f"no run of suite {suite['suite']!r} is finished in {out} yet "
                        f"({_few(left_out)}); no report written")
    if suite.get("autoattack"):
        done = {r["name"] for r in rows}
        autoattack_stage(suite, out, [r for r in runs if r["name"] in done],
                         [c for r, c in zip(runs, cfgs, strict=True) if r["name"] in done],
                         rows, log, work, pending)
    if left_out:
        log(f"left out of the report, not finished: {_few(left_out)}")
    write_report(suite, out, rows, results, commands, test, evaluated_ball(suite, cfgs), log,
                 left_out)
    return rows


SUITE_FILE = "suite.txt"  # the name of the suite whose runs and report a folder holds


def _check_owner(out: Path, name: str, write: bool) -> None:
    """Refuse an ``--out`` that holds another suite's runs and report (its ``suite.txt``, or
    before that file the title of its ``results.md``); mark it as ``name``'s."""
    name = str(name).strip()
    marker, report = out / SUITE_FILE, out / "results.md"
    if marker.is_file() and ((out / "runs").is_dir() or report.is_file()):
        owner = marker.read_text().strip()  # (a folder holding no run yet is no one's)
    elif report.is_file() and (title := report.read_text().split("\n", 1)[0]).startswith(
            "# Suite `") and title.endswith("`"):
        owner = title.removeprefix("# Suite `")[:-1].strip()
    else:
        owner = name
    if owner != name:
        raise UserError(f"{out} holds the runs and report of suite {owner!r}, not "
                        f"{name!r}: choose another --out")
    if write and (not marker.is_file() or marker.read_text().strip() != name):
        atomic_write_text(name + "\n", marker)


def failed_checks(rows: list[dict[str, Any]], only: list[str] | None = None) -> str | None:
    """The one line that ends a suite whose runs (those of ``only``, else every run; read
    back from an earlier pass or evaluated now) failed a sanity check of their evaluation or
    of AutoAttack's, as ``erat eval`` does with exit code 3 (evidence that a robust accuracy
    is too high); None when every check passed."""
    failed = [r["name"] for r in rows if (only is None or r["name"] in only)
              and (r.get("checks_failed") or r.get("aa_checks_failed"))]
    if not failed:
        return None
    return (f"sanity checks failed in {len(failed)} run(s): {', '.join(failed)} (the "
            "'failed checks' columns of results.md; their robust accuracies may be too high)")


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(row: dict[str, Any]) -> str:
    """A run's figures in one line: the columns of the short table after its name."""
    keys, names = tables.readable_columns([row])
    return ", ".join(f"{n} {_fmt(row[k])}" for k, n in zip(keys, names, strict=True)
                     if k != "name")


class SuiteClock:
    """The line of each run of a suite: ``[k/N name]``, its figures, the time it took, the
    time elapsed and about how long the rest will take: the runs of ``to_train`` left, at
    the mean time of those trained so far (of those that evaluated, before any trained; a
    finished run counts nothing; ``then``: what follows the runs and is not counted,
    AutoAttack). Without ``to_train`` every run left counts."""

    def __init__(self, total: int, timed: bool = True, then: str = "",
                 to_train: set[str] | None = None) -> None:
        self.total, self.k, self.timed, self.then = total, 0, timed, then
        self.to_train, self.trained, self.worked = to_train, [], []
        self.t0 = self.began = time.perf_counter()

    def start(self) -> None:
        """The next run begins (a run left out counts too)."""
        self.k, self.began = self.k + 1, time.perf_counter()

    def line(self, name: str, worked: bool, text: str) -> str:
        now = time.perf_counter()
        if worked:
            self.worked.append(now - self.began)
        if self.to_train is not None and name in self.to_train:
            self.to_train.discard(name)
            self.trained.append(now - self.began)
        left = self.total - self.k if self.to_train is None else len(self.to_train)
        if not self.timed:
            return f"[{self.k}/{self.total} {name}] {text}"
        times = self.trained or self.worked
        eta = (f", about {_duration(left * sum(times) / len(times))} left"
               f"{self.then}" if times and left else "")
        return (f"[{self.k}/{self.total} {name}] {text} ({_duration(now - self.began)}; "
                f"{_duration(now - self.t0)} elapsed{eta})")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _check_belongs(folder: RunDir, cfg: TrainConfig) -> None:
    """A run folder is reused only when it holds this very configuration."""
    if not (folder / RunDir.CONFIG).exists():
        if folder.holds_run():
            raise UserError(f"{folder.path} holds files of an unknown run; remove it or "
                            "choose another --out")
        return
    conflicts = resume_conflicts(folder.read_config(), cfg.to_dict())
    if conflicts:
        raise UserError(f"{folder.path} holds another run (the suite's setting, then the "
                        f"folder's: {'; '.join(conflicts[:3])}); remove that folder to train "
                        "the run as the suite says now, or choose another --out")


def run_one(suite: dict[str, Any], run: dict[str, Any], cfg: TrainConfig, folder: RunDir,
            log: Callable[[str], None], report_only: bool = False
            ) -> tuple[dict[str, Any], dict, tuple]:
    """Train (or resume, or skip), evaluate and measure the energy of one run of a suite
    (``report_only``: read them back, or raise ``NotReady``).

    A run's own ``eval`` mapping overrides the suite's; its ``energy`` replaces the suite's
    (``energy: null`` skips the measurement for that run).
    """
    from erat.measure import energy_report

    name = run["name"]
    _check_belongs(folder, cfg)
    if folder.finished():
        try:
            check_epoch_length(folder, cfg)
        except UserError:
            if report_only:  # (left out, as a run not trained)
                raise NotReady("trained by an older erat, with shorter epochs") from None
            raise
    else:
        if report_only:
            raise NotReady("not trained")
        log(f"[{name}] training {cfg.method} on {cfg.dataset}")
        resume = (folder / RunDir.CONFIG).exists()
        train(cfg, folder.path, resume=resume, log=log)
    meta = folder.read_meta()
    if run.get("eval", True) is False:  # chosen on validation: no test figures
        return {"name": name, "method": cfg.method, "dataset": cfg.dataset,
                "cost_erm_epochs": meta.get("cost_erm_epochs"),
                "train_seconds": meta.get("train_seconds"), **_validation(folder, meta, cfg)
                }, None, None
    x, y = _test_set(cfg, folder, meta)
    ev = eval_at_radii({**(suite.get("eval") or {}), **(run.get("eval") or {})}, cfg)
    n = ev.pop("n", None)
    with nullcontext() if report_only else folder.lock():  # reading needs no lock
        result = _cached_eval(folder, RunDir.EVAL, x, y, ev, n, log, report_only,
                              device=cfg.device)  # (measured where the run trains)
        en = run["energy"] if "energy" in run else suite.get("energy")
        energy = None
        if en:
            en = dict(en)
            ne, note = _at_most(en.pop("n", None), len(x), f"[{run['name']}] energy")

            def measure() -> dict:
                if note:
                    log(note)
                return energy_report(folder.load_model(resolve_device(cfg.device)), x[:ne], y[:ne],
                                     **en)

            energy = folder.cached(RunDir.ENERGY, {**en, "n": ne},
                                   _not_ready(folder, RunDir.ENERGY) if report_only
                                   else measure, log)
        if run.get("eval_last") and ((folder / RunDir.MODEL_LAST).exists() or (
                folder.weights_dropped() and (folder / RunDir.EVAL_LAST).exists())):
            res_last = _cached_eval(folder, RunDir.EVAL_LAST, x, y, ev, n, log, report_only,
                                    model_file=RunDir.MODEL_LAST, device=cfg.device)
            result = {**result, "last": {"clean_acc": res_last["clean_acc"],
                                         **res_last["robust_acc"]}}
    row = {
        **identity(run, cfg), "method": cfg.method, "dataset": cfg.dataset,
        **({"labels": cfg.labels} if cfg.labels is not None else {}),
        **tables.result_row(result), "clean_err": 1 - result["clean_acc"],
        "train_s_per_epoch": _seconds_per_epoch(folder),
        "cost_erm_epochs": meta.get("cost_erm_epochs"),
        "train_seconds": meta.get("train_seconds"),
        **_validation(folder, meta, cfg),
    }
    if "last" in result:
        row |= {f"last_{k}": v for k, v in result["last"].items()}
        row["last_epoch"] = meta.get("last_epoch")
    if energy:
        row.update({**tables.energy_column(energy),
                    **{k: energy[k] for k in ENERGY_COLUMNS if k in energy}})
    return row, result, (x, y)


def _test_set(cfg: TrainConfig, folder: RunDir, meta: dict[str, Any]) -> tuple[Any, Any]:
    """The run's test images and labels, read as the suite names them (your own data's path
    relative to ``--data-dir``, as at training), refused when they are not the ones it was
    trained beside, as ``erat eval`` refuses them (:func:`erat.datasets.check_test_set`)."""
    x, y = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.data_options).tensors
    check_test_set(meta, x, y, model=folder.path, data_dir=cfg.data_dir, name=cfg.dataset)
    return x, y


def _at_most(n: int | None, total: int, what: str) -> tuple[int, str | None]:
    """A suite's ``n`` test images (None: all) and, when it asks for more than the test set
    holds, the note to log when they are measured (``erat eval --n`` refuses that; a suite
    says it and goes on)."""
    note = f"{what}: n {n} is more than the {total} test images: all {total}" \
        if n is not None and n > total else None
    return min(n or total, total), note


def _not_ready(folder: RunDir, file: str) -> Callable[[], dict]:
    def missing() -> dict:
        raise NotReady(f"{file} holds other settings, weights or rules" if (folder / file).exists()
                       else f"{file} not computed")
    return missing


def _cached_eval(folder: RunDir, file: str, x: Any, y: Any, ev: dict[str, Any],
                 n: int | None, log: Callable[[str], None] = print, report_only: bool = False,
                 model_file: str | None = None, device: str = "cpu") -> dict:
    """The evaluation ``ev`` of the run's model (``model_file``: another of its model files)
    on the first ``n`` test examples (None: all), on ``device`` (``--device``'s name),
    cached in ``file`` of the run folder (recomputed for other weights or settings),
    resumable; ``report_only``: the cached one or ``NotReady``. The model is read only to
    compute (a run whose weights were dropped still reports its cached results)."""
    from erat.evaluate import evaluate

    n, note = _at_most(n, len(x), f"[{folder.path.name}] eval")

    def compute() -> dict:
        if note:
            log(note)
        log(f"[{folder.path.name}] evaluating ({ev.get('attack', 'pgd')} at eps "
            f"{ev.get('eps')}, {n} test images) -> {file}")
        return evaluate(folder.load_model(resolve_device(device), file=model_file),
                        *first_n(x, y, n),
                        config=EvalConfig.build(**ev), n_total=len(x),  # (shared options: silent)
                        state_path=folder.state_path(file.removesuffix(".json")),
                        extra_info={"checkpoint_sha256": folder.weights_sha256(),
                                    "run": folder.path.name, "file": file})

    settings = {**ev, "n": n, "rules": STATE_VERSION}  # (an older erat's figures: recomputed)
    if report_only or folder.weights_dropped():  # (nothing can be computed: said, and kept)
        earlier = folder.saved_but(file, settings, "rules")
        if earlier is not None:
            log(f"[{folder.path.name}] {file}: figures by an earlier erat's evaluation rules "
                f"(before rules {STATE_VERSION}: PGD's step 2.5 eps/steps, radii each on their "
                "own), kept: " + ("its weights were dropped" if folder.weights_dropped()
                                  else "--report-only computes nothing"))
            return earlier
    return folder.cached(file, settings, _not_ready(folder, file) if report_only
                         else compute, log)


def _validation(folder: RunDir, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Validation accuracies of the epoch that became ``model.pt``, and the ball of the
    robust one (``val_ball``: ``l2 0.5``)."""
    metrics = folder.metrics()
    rows = [r for r in metrics if r.get("epoch") == meta.get("selected_epoch")]
    if not rows or "val_clean_acc" not in rows[0]:
        return {}
    out = {"selected_epoch": meta.get("selected_epoch"), "val_clean_acc": rows[0]["val_clean_acc"]}
    if "val_robust_acc" in rows[0]:
        method = meta.get("method") or {}
        eps = cfg.fit.val_eps or method.get("eps")
        out |= {"val_robust_acc": rows[0]["val_robust_acc"],
                "val_ball": ball_name(cfg.fit.val_norm or method.get("norm", "l2"), eps)
                if eps else None}
    collapsed = overfitting_epoch(metrics)
    if collapsed is not None:
        out["catastrophic_overfitting_epoch"] = collapsed
    return out


def autoattack_stage(suite: dict[str, Any], out: Path, runs: list[dict[str, Any]],
                     cfgs: list[TrainConfig], rows: list[dict[str, Any]],
                     log: Callable[[str], None], work: set[str],
                     pending: list[dict[str, Any]]) -> None:
    """AutoAttack (the suite's ``autoattack.eval``) on the first ``n`` test images for the
    best run on validation of each group (``group`` keys of the rows, e.g. family and
    budget), and for the runs named in ``also``; adds its accuracies to their rows. Only the
    runs in ``work`` are attacked, the others read back; a group's best is
    attacked once no run of the group is ``pending`` (unfinished), so that it is final."""
    spec = dict(suite["autoattack"])
    ev, n = autoattack_eval(spec), int(spec.get("n", 500))
    names = resolve(ev["attack"])[0]
    what = "AutoAttack" if "autoattack" in names else "+".join(names).upper()
    chosen = autoattack_choice(spec, rows)
    keys = spec.get("group", [])
    waiting = {tuple(p.get(k) for k in keys): p["name"] for p in pending}
    for i, run in enumerate(runs):
        if run["name"] not in chosen:
            continue
        compute = run["name"] in work
        wait = waiting.get(tuple(rows[i].get(k) for k in keys))
        if compute and wait and run["name"] not in (spec.get("also") or []):
            log(f"[{run['name']}] AutoAttack waits for {wait} of its group to finish")
            compute = False
        folder, cfg = RunDir(out / "runs" / run["name"]), cfgs[i]
        x, y = _test_set(cfg, folder, folder.read_meta())
        attacked = min(n, len(x))  # (_cached_eval says when n asks for more)
        if compute:
            log(f"[{run['name']}] {what} on the first {attacked} test images "
                "(the autoattack stage)")
        try:
            with folder.lock() if compute else nullcontext():
                res = _cached_eval(folder, RunDir.EVAL_AUTOATTACK, x, y, eval_at_radii(ev, cfg), n,
                                   log, not compute, device=cfg.device)
        except NotReady:  # (a run of another --only list is that list's to attack)
            if not wait and (not work or run["name"] in work):
                log(f"[{run['name']}] AutoAttack not computed yet: left out")
            continue
        rows[i] |= tables.result_row(res, prefix="aa_")


def autoattack_choice(spec: dict[str, Any], rows: list[dict[str, Any]]) -> set[str]:
    """The runs AutoAttack evaluates: the best validation robust accuracy of each group
    (rows sharing the ``group`` keys; the earliest on ties), and those named in ``also``."""
    chosen = set(spec.get("also") or [])
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in spec.get("group", []))
        if None not in key and row.get("val_robust_acc") is not None:
            groups.setdefault(key, []).append(row)
    for members in groups.values():
        chosen.add(max(members, key=lambda r: r["val_robust_acc"])["name"])
    return chosen


def _seconds_per_epoch(folder: RunDir) -> float | None:
    """Training seconds per full epoch: the epochs' seconds without compiling (the first two
    compiled updates of each session, ``compile_seconds``), over the updates made, times a
    full epoch's updates (a budget's last epoch may be partial)."""
    rows, done, per_epoch, seconds = folder.metrics(), 0, 0, 0.0
    if not all("updates" in r for r in rows):  # (a run from an erat that did not count them)
        return round(sum(r["seconds"] for r in rows) / max(len(rows), 1), 3)
    for row in rows:  # (epoch_updates: recorded since 2026-12-02; before, the longest epoch)
        per_epoch = row.get("epoch_updates") or max(per_epoch, row["updates"] - done)
        done, seconds = row["updates"], seconds + row["seconds"] - row.get("compile_seconds", 0)
    return round(seconds / done * per_epoch, 3) if done else None


NAMED = {"dataset", "model", "method", "epochs", "seed"}


def command(cfg: TrainConfig, folder: Path) -> str:
    """The ``erat train`` command line of a configuration (settings that differ from the
    defaults, plus the ones that name the run)."""
    default = TrainConfig().to_dict()
    parts = ["erat train"]
    for name, value in cfg.to_dict().items():
        if name == "progress" or (value == default[name] and name not in NAMED):
            continue
        if name == "epochs" and value is None:
            continue
        if name == "method_params":  # a switch off by the method's default is left out
            on = {k for k, f in method_params(cfg.method).items() if f.default is True}
            parts += [_flag(k, v) if v is not False else off_flag(k)
                      for k, v in value.items() if v is not None and (v is not False or k in on)]
        elif name == "model_kwargs":
            import json

            parts.append(f"--model-kwargs '{json.dumps(value)}'")
        elif value is False and default[name] is True:  # on by default: offered as --no-NAME
            parts.append(off_flag(name))
        else:
            parts.append(_flag(name, value))
    return " ".join([*parts, f"--out {folder}"])


def _flag(name: str, value: Any) -> str:
    return flag(name) if value is True else f"{flag(name)} {value}"


def _few(names: list[str], shown: int = 6) -> str:
    """The first ``shown`` of ``names`` and how many more: one line of a suite of 45 runs."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", and {more} more" if more > 0 else "")


def write_report(suite: dict[str, Any], out: Path, rows: list[dict[str, Any]],
                 results: dict[str, dict], commands: list[str], test: tuple | None,
                 ball: tuple[str, list], log: Callable[[str], None] = print,
                 left_out: list[str] | None = None) -> None:
    """``results.csv`` (every column), ``results.md`` (the short table with human column
    names, then every column that holds a value), the plots in the suite's evaluated
    ``ball`` (its norm and radii: :func:`erat.suites.evaluated_ball`); the short table is
    printed."""
    columns = tables.table_columns(rows)
    tables.write_csv(rows, out / "results.csv", columns)
    norm, radii = ball
    figures = []  # (the plots drawn this time: results.md links these only)
    if results:  # (the attack most runs were evaluated with: a run's own eval stays in)
        attack, drawn = plots.plotted(results)
        plots.accuracy_vs_radius(results, out / "accuracy_vs_radius", attack=attack, norm=drawn)
        figures.append(("accuracy vs radius", "accuracy_vs_radius"))
    plot_settings = suite.get("plots", {}) or {}
    if plot_settings.get("landscape", True) and test is not None and results and _landscape(
            out, rows, results, test, {**plot_settings, "norm": norm,
                                       "landscape_eps": landscape_eps(suite, norm, radii)}, log):
        figures.append(("loss landscape", "landscape"))
    for name, spec in ((suite.get("report") or {}).get("frontiers") or {}).items():
        try:
            plots.frontier(rows, out / name, **spec)
            figures.append((spec.get("title", name), name))
        except ValueError as err:  # e.g. a partial run (--only) without those columns yet
            log(f"{name} not drawn: {err}")
    versions = {"erat": __version__, "torch": str(torch.__version__),
                "python": sys.version.split()[0], "platform": platform.platform(),
                "threads": torch.get_num_threads()}
    keys, names = tables.readable_columns(rows)
    short = tables.results_table(rows, keys, headers=names, float_fmt="{:.3f}")
    seeds = tables.seed_table(rows, keys, names)
    text = [f"# Suite `{suite['suite']}`", "", (suite.get("description") or "").strip(), "",
            short, "",
            *(["## Over seeds (mean ± sd)", "", seeds, ""] if seeds else []),
            *([f"Left out, not finished: {', '.join(left_out)}.", ""] if left_out else []),
            *_evaluation(out, rows, results),
            *[f"![{title}]({file}.png)\n" for title, file in figures],
            *tables.every_column(rows, columns),
            "## Commands", "", "```", *commands, "```", "", "## Versions", "", "```",
            yaml.safe_dump(versions).strip(), "```", ""]
    atomic_write_text("\n".join(text), out / "results.md")
    log(short)


def _evaluation(out: Path, rows: list[dict[str, Any]], results: dict[str, dict]) -> list[str]:
    """The lines of ``results.md`` that say how the test figures were computed: each
    distinct setting of the runs' evaluations and of their AutoAttack (from the ``threat``
    of their JSON files) and of their energy, with the runs it applies to, and each sanity
    check they did not pass."""
    import json

    threats = [(name, "", result.get("threat") or {}) for name, result in results.items()]
    checked = list(results.items())
    for row in rows:
        if row.get("aa_n"):
            file = out / "runs" / row["name"] / RunDir.EVAL_AUTOATTACK
            aa = json.loads(file.read_text())
            threat = aa.get("threat") or {}
            what = "AutoAttack" if "autoattack" in threat.get("attacks", []) else "aa_"
            threats.append((row["name"], f"{what} columns: ", threat))
            checked.append((f"{row['name']} ({what} columns)", aa))
    energies: dict[str, list[str]] = {}
    for row in rows:  # the energy column's ball and estimate
        file = out / "runs" / row["name"] / RunDir.ENERGY
        if any(map(tables.energy_ball_of, row)) and file.is_file():
            e = json.loads(file.read_text()).get("settings") or {}
            energies.setdefault(f"energy: {norm_name(e.get('norm', 'l2'))} at {e.get('eps')}, "
                                f"T {e.get('T')}, M {e.get('M')}, S {e.get('S')}, on the first "
                                f"{e.get('n')} test images", []).append(row["name"])
    return tables.evaluation_section(threats, energies | tables.check_lines(checked))


def _landscape(out: Path, rows: list[dict[str, Any]], results: dict[str, dict], test: tuple,
               plot_settings: dict[str, Any], log: Callable[[str], None]) -> bool:
    """The loss landscape of one test image in the evaluation's norm
    (``plot_settings["norm"]``), one column per method (its first evaluated run whose
    weights are there); the runs left out are named. Whether it was drawn."""
    first: dict[str, str] = {}
    dropped = [n for n in results if RunDir(out / "runs" / n).weights_dropped()]
    if dropped:
        log(f"landscape: left out {', '.join(dropped)} (weights dropped)")
    for row in rows:
        if row["name"] in results and row["name"] not in dropped:
            first.setdefault(row["method"], row["name"])
    drawn = list(first.values())
    if not drawn:
        return False
    others = [n for n in results if n not in drawn and n not in dropped]
    if others:
        log(f"landscape: one run per method; left out {', '.join(others)} (a run of the same "
            "method is drawn)")
    index = int(plot_settings.get("landscape_index", 0))
    x, y = test
    if index >= len(x):
        log(f"landscape not drawn: plots.landscape_index {index} is past the {len(x)} test "
            "images")
        return False
    plots.landscape({n: RunDir(out / "runs" / n).load_model() for n in drawn},
                     x[index : index + 1], y[index : index + 1],
                     eps=float(plot_settings["landscape_eps"]), out=out / "landscape",
                     norm=plot_settings.get("norm", "l2"))
    return True
