"""``erat reproduce SUITE``: train, evaluate and report a named suite of experiments.

A suite is a YAML file (``src/erat/configs/<suite>.yaml``, also reachable as ``configs/``
at the repository root) with ``defaults`` (training settings shared by every run), a list of
``runs`` (each a name plus the settings it changes), and the ``eval`` and ``energy``
settings. Finished steps are skipped, so an interrupted suite continues where it stopped:
training resumes from its checkpoint, a finished evaluation is read back from its JSON.

The report folder holds ``results.csv`` (one row per run: ``method``, ``dataset``,
``clean_acc`` and one column per robust-accuracy key), ``results.md`` (the same as a
Markdown table, the commands and the versions), ``runs/<name>/`` and the plots.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from erat import __version__
from erat.checkpoint import atomic_write_json, atomic_write_text, load_model, sha256
from erat.data import load_dataset
from erat.train import CHECKPOINT, TrainConfig, train

SUITE_KEYS = {"suite", "description", "defaults", "runs", "eval", "energy", "plots", "report"}


def suite_dir() -> Path:
    return Path(str(resources.files("erat") / "configs"))


def suite_names() -> list[str]:
    return sorted(p.stem for p in suite_dir().glob("*.yaml") if _is_suite(p))


def _is_suite(path: Path) -> bool:
    try:
        return "runs" in (yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError:
        return False


def load_suite(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.is_file():
        path = suite_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown suite {name_or_path!r}; choose one of "
            f"{', '.join(suite_names())} or give a YAML file"
        )
    suite = yaml.safe_load(path.read_text()) or {}
    unknown = set(suite) - SUITE_KEYS
    if unknown or not isinstance(suite.get("runs"), list):
        raise ValueError(f"{path}: a suite needs a 'runs' list (unknown keys: {sorted(unknown)})")
    suite.setdefault("suite", path.stem)
    return suite


def run_config(
    suite: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]
) -> TrainConfig:
    """Suite defaults < the run's own settings < command-line overrides (e.g. data_dir)."""
    from erat.cli import _merge  # the one merge rule of config layers

    fields = {f for f in TrainConfig.__dataclass_fields__}
    merged = _merge({}, suite.get("defaults", {}), fields)
    own = {k: v for k, v in run.items() if k not in RUN_ONLY_KEYS}
    merged = _merge(merged, own, fields)
    merged = _merge(merged, overrides, fields)
    return TrainConfig.from_dict(merged)


def reproduce(
    suite_name: str,
    out: Path,
    *,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or continue) a suite; returns the result rows also written to ``out``."""
    suite = load_suite(suite_name)
    out = Path(out)
    runs = [r for r in suite["runs"] if not only or r["name"] in only]
    if not runs:
        raise ValueError(f"no run of suite {suite['suite']!r} matches {only}")
    rows, models, commands = [], {}, []
    for run in runs:
        cfg = run_config(suite, run, overrides or {})
        folder = out / "runs" / run["name"]
        commands.append(_command(cfg, folder))
        t0 = time.perf_counter()
        row, model, result, (x, y) = run_one(suite, run, cfg, folder, log)
        rows.append(row)
        models[run["name"]] = (model, result)
        log(
            f"[{run['name']}] "
            + json.dumps({k: v for k, v in row.items() if k != "name"})
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
    write_report(suite, out, rows, models, commands, x, y)
    return rows


def run_one(
    suite: dict[str, Any],
    run: dict[str, Any],
    cfg: TrainConfig,
    folder: Path,
    log: Callable[[str], None],
):
    """Train (or resume, or skip), evaluate and measure the energy of one run of a suite.

    A run's own ``eval`` mapping overrides the suite's; its ``energy`` replaces the suite's
    (``energy: null`` skips the measurement for that run).
    """
    from erat.energy import energy_report
    from erat.evaluate import evaluate

    name = run["name"]
    if not (folder / "model.pt").exists():
        log(f"[{name}] training {cfg.method} on {cfg.dataset}")
        train(cfg, folder, resume=(folder / CHECKPOINT).exists(), log=log)
    model = load_model(folder)
    x, y = load_dataset(cfg.dataset, "test", cfg.data_dir).tensors
    ev = {**suite.get("eval", {}), **(run.get("eval") or {})}
    n = ev.pop("n", None) or len(x)
    extra = {"checkpoint_sha256": sha256(folder / "model.pt"), "run": name}
    result = _cached(
        folder / "eval.json",
        evaluate,
        model,
        x[:n],
        y[:n],
        n_total=len(x),
        extra_info=extra,
        state_path=folder / ".eval.state.pt",
        **ev,
    )
    row = {
        "name": name,
        "method": cfg.method,
        "dataset": cfg.dataset,
        "labels": cfg.labels or "",
        "clean_acc": result["clean_acc"],
        "clean_err": 1 - result["clean_acc"],
        **result["robust_acc"],
        "checks_failed": result.get("checks_failed", 0),
        "train_s_per_epoch": _train_seconds(folder),
    }
    en = run["energy"] if "energy" in run else suite.get("energy")
    if en:
        en = dict(en)
        ne = en.pop("n", None) or len(x)
        energy = _cached(folder / "energy.json", energy_report, model, x[:ne], y[:ne], **en)
        row.update({k: energy[k] for k in ENERGY_COLUMNS if k in energy})
    return row, model, result, (x, y)


RUN_ONLY_KEYS = {"name", "eval", "energy"}
ENERGY_COLUMNS = ("energy_mean", "at_term_mean", "vat_term_mean", "certified_frac")


def _cached(
    path: Path, compute: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """``compute(*args, **kwargs)``, or its JSON saved at ``path`` by an earlier call."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute(*args, **kwargs)
    atomic_write_json(result, path)
    return result


def _train_seconds(folder: Path) -> float:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    seconds = [json.loads(line)["seconds"] for line in lines if line.strip()]
    return round(sum(seconds) / max(len(seconds), 1), 3)


def _command(cfg: TrainConfig, folder: Path) -> str:
    """The ``erat train`` command line of a configuration (settings that differ from the
    defaults, plus the ones that name the run)."""
    default = TrainConfig()
    parts = ["erat train"]
    for name in TrainConfig.__dataclass_fields__:
        value = getattr(cfg, name)
        if name == "progress" or (value == getattr(default, name) and name not in NAMED):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "method_params":
            for k, v in value.items():
                parts.append(_flag("--" + k.replace("_", "-"), v))
        elif name == "model_kwargs":
            parts.append(f"--model-kwargs '{json.dumps(value)}'")
        elif name == "augment":
            parts.append("--no-augment")
        else:
            parts.append(_flag(flag, value))
    return " ".join([*parts, f"--out {folder}"])


NAMED = {"dataset", "model", "method", "epochs", "seed"}


def _flag(flag: str, value: Any) -> str:
    return flag if value is True else f"{flag} {value}"


def write_report(
    suite: dict[str, Any],
    out: Path,
    rows: list[dict[str, Any]],
    models: dict[str, Any],
    commands: list[str],
    x,
    y,
) -> None:
    from erat import report

    columns = list(dict.fromkeys(k for row in rows for k in row))
    report.write_csv(rows, out / "results.csv")
    ev = suite.get("eval", {})
    results = {name: res for name, (_, res) in models.items()}
    report.accuracy_vs_radius(
        results,
        out / "accuracy_vs_radius",
        attack=ev.get("attack", "pgd"),
        norm=ev.get("norm", "l2"),
    )
    plots = suite.get("plots", {})
    if plots.get("landscape", True):
        wanted = [n for n in ("erm", "at", "vat", "er") if n in models] or list(models)[:4]
        index = int(plots.get("landscape_index", 0))
        report.landscape(
            {n: models[n][0] for n in wanted},
            x[index : index + 1],
            y[index : index + 1],
            eps=float(plots.get("landscape_eps", 1.0)),
            out=out / "landscape",
        )
    versions = {
        "erat": __version__,
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    text = [
        f"# Suite `{suite['suite']}`",
        "",
        suite.get("description", "").strip(),
        "",
        report.results_table(rows, columns),
        "",
        "![accuracy vs radius](accuracy_vs_radius.png)",
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
        "## Versions",
        "",
        "```",
        yaml.safe_dump(versions).strip(),
        "```",
        "",
    ]
    atomic_write_text("\n".join(text), out / "results.md")
