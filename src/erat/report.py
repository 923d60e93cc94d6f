"""``erat report``: the tables and figures of evaluated run folders (:func:`report_runs`),
from their ``eval.json`` and ``energy.json``, each checked against the run's weights
(:func:`read_results`); the tables are :mod:`erat.tables`', the figures :mod:`erat.plots`'.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from erat.errors import UserError
from erat.files import atomic_write_text, check_writable_dir, read_json, sha256
from erat.plots import accuracy_vs_radius, landscape, plotted, radius_curve
from erat.tables import (
    attack_settings,
    check_lines,
    energy_column,
    evaluation_section,
    every_column,
    readable_columns,
    result_row,
    results_table,
    table_columns,
    write_csv,
)
from erat.threat import ball_name


def _check_weights(path: Path, recorded: str | None, run: Path, again: str) -> None:
    """Refuse a result file ``path`` of run folder ``run`` whose ``recorded`` SHA-256 of the
    model file is not its finished ``model.pt``'s (trained again since, or measured on
    ``model-last.pt``; the file's, which holds the training time beside the weights): one
    line naming the file and how to compute it ``again``."""
    from erat.rundir import RunDir

    folder = RunDir(run)
    if not recorded or not folder.finished() or recorded == folder.weights_sha256():
        return
    last = run / RunDir.MODEL_LAST
    which = f"{RunDir.MODEL_LAST}, the last epoch's" if last.is_file() and \
        sha256(last) == recorded else "another model file (trained again since?)"
    raise UserError(f"{path} was computed on {which}, not on {run}'s {RunDir.MODEL}; {again}")


def read_results(runs: Sequence[Path], eval_name: str = "eval.json") -> dict[str, dict]:
    """Each run folder's evaluation JSON by run name; a missing file, one that is not an
    evaluation result, or one computed on other weights than the run's (trained again
    since: its ``threat.checkpoint_sha256``) is one line naming it."""
    from erat.rundir import RunDir

    results, names = {}, iter(run_names(runs))
    for run in runs:
        path = Path(run) / eval_name
        if not Path(run).is_dir():
            raise UserError(f"{run} is a file, not a run folder" if Path(run).exists()
                            else f"no such run folder: {run}")
        if not path.is_file() and (Path(run) / "runs").is_dir():
            raise UserError(f"{run} is a suite's report folder, not a run: give its runs "
                            f"({Path(run) / 'runs'}/*), or write its report with `erat "
                            f"reproduce SUITE --out {run} --report-only`")
        if not path.is_file() and not RunDir(run).holds_run():
            raise UserError(f"{run} is not a run folder (no {RunDir.CONFIG}, {RunDir.MODEL} "
                            f"or {eval_name}): give the folders erat train wrote")
        if not path.is_file():
            raise UserError(f"{path} not found: run `erat eval {run} --json {path}` first")
        res = read_json(path, "evaluation result")
        if not isinstance(res, dict) or not isinstance(res.get("robust_acc"), dict) \
                or "clean_acc" not in res or "threat" not in res:
            raise UserError(f"{path} is not an erat evaluation result (no clean_acc, "
                            "robust_acc and threat)")
        _check_weights(path, res["threat"].get("checkpoint_sha256"), Path(run),
                      f"evaluate it again: erat eval {run} --json {path}")
        results[next(names)] = res
    return results


def run_names(runs: Sequence[Path]) -> list[str]:
    """Each run's name in a report: its folder's name, or as many of the folders above it as
    tell it from another run of that name (``s1/runs/er``, ``s2/runs/er``)."""
    real = [Path(run).resolve() for run in runs]
    for i, path in enumerate(real):
        if path in real[:i]:
            raise UserError(f"{runs[i]} is given twice: name each run folder once")
    paths = [Path(os.path.abspath(run)) for run in runs]  # (a link keeps its own name)
    names = []
    for path in paths:
        k = 1
        while any(p != path and p.parts[-k:] == path.parts[-k:] for p in paths):
            k += 1
        names.append(str(Path(*path.parts[-k:])))
    return names


def _training_notes(run: Path) -> dict:
    """What the training guard flagged in a run folder's ``metrics.jsonl``: the epoch of
    catastrophic overfitting, if any (:mod:`erat.fit.guard`)."""
    from erat.fit.guard import overfitting_epoch
    from erat.rundir import RunDir

    epoch = overfitting_epoch(RunDir(run).metrics()) if (run / RunDir.METRICS).is_file() \
        else None
    return {} if epoch is None else {"catastrophic_overfitting_epoch": epoch}


def _landscape_inputs(runs: Sequence[Path], index: int) -> tuple[dict, Tensor, Tensor]:
    """The models of ``runs`` by name and test image ``index`` of the first run's data
    (``x``, ``y``, one row each), read before anything is written; an index outside the
    test set is one line naming ``--index``."""
    from erat.datasets import recorded_test_set
    from erat.rundir import RunDir

    run0 = RunDir(runs[0])
    data_dir = run0.read_config(missing={}).get("data_dir")
    meta = run0.read_meta()
    x, y = recorded_test_set(meta, data_dir, model=runs[0])
    for run in runs[1:]:
        if RunDir(run).read_meta().get("test_sha256") not in (None, meta.get("test_sha256")):
            raise UserError(f"--landscape-eps draws every model on one test image: {run} was "
                            f"trained beside other test data than {runs[0]}")
    if not 0 <= index < len(x):
        raise UserError(f"--index must be in 0..{len(x) - 1} (the test images of "
                        f"{runs[0]}), got {index}")
    models = {name: RunDir(r).load_model() for name, r in zip(run_names(runs), runs, strict=True)}
    return models, x[index:index + 1], y[index:index + 1]


def report_runs(runs: Sequence[Path], out: Path, *, eval_name: str = "eval.json",
                landscape_eps: float | None = None, index: int | None = None,
                skip_unevaluated: bool = False, log=print) -> list[dict]:
    """``erat report``: the table (CSV; Markdown: the short table of :func:`readable_columns`,
    then every column) and the accuracy-radius plot of evaluated run folders, and optionally
    the loss landscape of test image ``index`` (default 0; only with ``landscape_eps``, a
    radius in the norm of the accuracy plot); the short table and the files written are
    printed. Every option, the evaluation files, and for a landscape the test image and the
    models, are checked and read before anything is written: a mistake leaves ``out`` as it
    was. ``skip_unevaluated`` leaves out, and names, run folders without ``eval_name``."""
    from erat.rundir import RunDir
    from erat.threat import check_radius

    if index is not None and landscape_eps is None:
        raise UserError("--index picks the landscape's test image: give --landscape-eps too")
    index = 0 if index is None else index
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"--index must be a test image's position (0 or more), got {index!r}")
    check_writable_dir(out, "--out")
    skipped = [r for r in runs if not (Path(r) / eval_name).is_file()  # (a run folder: others
               and RunDir(r).holds_run()] if skip_unevaluated else []  # are refused below)
    if skipped and len(skipped) == len(runs):
        raise UserError(f"no run given holds {eval_name}: evaluate them first (erat eval RUN "
                        f"--json RUN/{eval_name})")
    runs = [r for r in runs if r not in skipped]
    results = read_results(runs, eval_name)
    rows = [_run_row(Path(run), name, res)
            for run, (name, res) in zip(runs, results.items(), strict=True)]
    notes = _mixed(rows) + ([f"left out, not evaluated (no {eval_name}): "
                             f"{', '.join(map(str, skipped))}"] if skipped else [])
    for note in notes:
        log(f"note: {note}")
    attack, norm = plotted(results)
    if not any(radius_curve(r, attack=attack, norm=norm) for r in results.values()):
        raise UserError(f"no {attack}-{norm} robust accuracies in the {eval_name} of "
                        f"{', '.join(map(str, runs))}: nothing to plot")
    if landscape_eps is not None and check_radius(  # (in the norm of the accuracy plot)
            landscape_eps, norm, "--landscape-eps") == 0:
        raise UserError("--landscape-eps must be > 0: the landscape of a radius-0 ball is "
                        "one point")
    drawn = _landscape_inputs(runs, index) if landscape_eps is not None else None
    columns = table_columns(rows)
    keys, names = readable_columns(rows)
    for key in ("dataset", "n"):  # (when they differ, said above: beside the accuracies)
        if len({r.get(key) for r in rows} - {None}) > 1:
            keys.insert(keys.index("clean_acc"), key)
            names.insert(keys.index(key), key)
    if any(r["cost_erm_epochs"] is not None for r in rows):  # (cost beside every comparison)
        keys.append("cost_erm_epochs")
        names.append("cost (ERM epochs)")
    short = results_table(rows, keys, headers=names, float_fmt="{:.3f}")
    out = Path(out)
    write_csv(rows, out / "results.csv", columns)
    section = evaluation_section([(name, "", r["threat"]) for name, r in results.items()],
                                 {f"Note: {note}.": [] for note in notes}
                                 | check_lines(list(results.items())))
    atomic_write_text("\n".join([short, "", *section, *every_column(rows, columns), ""]),
                      out / "results.md")
    accuracy_vs_radius(results, out / "accuracy_vs_radius", attack=attack, norm=norm)
    if drawn is not None:
        models, x, y = drawn
        landscape(models, x, y, eps=landscape_eps, out=out / "landscape", norm=norm)
    log(short)
    log(f"wrote {out}/: results.md, results.csv, accuracy_vs_radius.png and .svg"
        + (", landscape.png and .svg" if drawn is not None else ""))
    if drawn is None and (out / "landscape.png").exists():
        log(f"note: {out / 'landscape.png'} is an earlier report's (no --landscape-eps now)")
    return rows


def _mixed(rows: list[dict]) -> list[str]:
    """What makes the rows' figures hard to compare: other datasets, other numbers of test
    images, attacks or energies with other settings (fewer steps or restarts find less)."""
    notes = []
    datasets = sorted({r["dataset"] for r in rows if r.get("dataset")})
    if len(datasets) > 1:
        notes.append(f"the runs were trained on different datasets ({', '.join(datasets)}; "
                     "the dataset column): their figures do not compare")
    sizes = sorted({r["n"] for r in rows if r["n"] is not None})
    if len(sizes) > 1:
        notes.append(f"the runs were evaluated on different numbers of test images "
                     f"({', '.join(map(str, sizes))}; the n column): compare with care")
    attacked = sorted({r["attack_settings"] for r in rows if r.get("attack_settings")})
    if len(attacked) > 1:
        notes.append(f"the runs were attacked with different settings ({len(attacked)} kinds; "
                     "the attack_settings column of results.csv): a weaker attack leaves "
                     "more robust accuracy, so compare with care")
    measured = sorted({r["energy_settings"] for r in rows if r.get("energy_settings")})
    if len(measured) > 1:
        notes.append(f"the energies were measured with different settings "
                     f"({'; '.join(measured)}; the energy_settings column of results.csv): "
                     "compare with care")
    return notes


def _measured_weights(energy: object) -> str | None:
    """The SHA-256 of the weights an ``energy.json`` measured: ``erat energy``'s record, or a
    suite's cache key."""
    for part, key in (("settings", "checkpoint_sha256"), ("cache_key", "weights_sha256")):
        got = energy.get(part) if isinstance(energy, dict) else None
        if isinstance(got, dict) and got.get(key):
            return got[key]
    return None


def _run_row(run: Path, name: str, result: dict) -> dict:
    """The report's row of a run folder: its name, method, training ball and labels
    (``config.yaml``), test images, accuracies, mean energy (``energy.json``, when measured,
    keyed by its ball), failed checks, what the training guard flagged, and its training
    cost in ERM epochs and updates (``model.pt``'s record; none for a model from outside)."""
    from erat.methods import trained_ball
    from erat.rundir import RunDir

    folder = RunDir(run)
    config = folder.read_config(missing={})
    ball = trained_ball(config)
    energy = read_json(run / RunDir.ENERGY, "energy result") \
        if (run / RunDir.ENERGY).is_file() else {}
    _check_weights(run / RunDir.ENERGY, _measured_weights(energy), run,
                  f"measure it again: erat energy {run} --json {run / RunDir.ENERGY}")
    try:  # (the cost's record; a model file that cannot be read gives none)
        meta = folder.read_meta() if config and folder.finished() else {}
    except UserError:
        meta = {}
    return {"run": name, "method": config.get("method"),
            "dataset": config.get("dataset") or result["threat"].get("dataset"),
            "trained": ball_name(*ball) if ball else None, "labels": config.get("labels"),
            "method_settings": _given(config.get("method_params")),
            **result_row(result), "attack_settings": attack_settings(result["threat"]),
            **energy_column(energy), **_training_notes(run),
            "cost_erm_epochs": meta.get("cost_erm_epochs"), "updates": meta.get("updates"),
            "train_seconds": meta.get("train_seconds")}


def _given(params: object) -> str | None:
    """A run's method settings as given, but its ball (the ``trained`` column): ``S 3, lam
    0.5``, the others at their defaults."""
    given = {k: v for k, v in params.items() if k not in ("eps", "norm")} \
        if isinstance(params, dict) else {}
    return ", ".join(f"{k} {v}" for k, v in sorted(given.items())) or None
