"""Tables of results, usable without the CLI: the short Markdown table under human column
names (:func:`readable_columns`, :func:`column_name`), mean ± sd over a suite's seeds
(:func:`seed_table`), every column (:func:`table_columns`, :func:`write_csv`), and
:func:`result_row` (one flat row per evaluation result).

Example::

    print(results_table([result_row(res_er, "ER")], ["label", "clean_acc", "pgd-l2-eps2"]))
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from erat.attacks import read_key, robust_key, title, upper_bound
from erat.files import atomic_write_text
from erat.threat import norm_name, radius_name


def _cell(v, float_fmt: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return float_fmt.format(v)
    if isinstance(v, dict | list):
        v = json.dumps(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def results_table(rows: Sequence[Mapping], columns: Sequence[str], *,
                  float_fmt: str = "{:.4f}", headers: Sequence[str] | None = None) -> str:
    """A Markdown table: a header row (``headers``, default ``columns``), then one line per
    row (missing -> empty); a column that no row holds is refused (``ValueError``, naming
    the keys that are near: a radius is written as ``%g``, ``pgd-l2-eps1``)."""
    import difflib

    held = {k for r in rows for k in r}
    for c in columns:
        if rows and c not in held:
            near = difflib.get_close_matches(c, sorted(held), n=3, cutoff=0.6)
            raise ValueError(f"no row holds column {c!r}" + (
                f" (did you mean {', '.join(map(repr, near))}?)" if near else
                f"; the rows hold {', '.join(map(repr, sorted(held)))}"))
    lines = ["| " + " | ".join(_cell(c, float_fmt) for c in headers or columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), float_fmt) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_SEED = re.compile(r"-s(\d+)$")  # a suite's seed suffix (erat.suites.expand_runs)


def seed_table(rows: Sequence[Mapping], keys: Sequence[str], names: Sequence[str]
               ) -> str | None:
    """A Markdown table of mean ± sd (sample, n - 1) over the seeds of each run that a suite
    ran with several seeds (names ``<base>-s<seed>``), for the numeric columns among
    ``keys`` (named ``names``): the spread a claim of a difference needs. None without
    such runs."""
    import statistics

    groups: dict[str, list[tuple[str, Mapping]]] = {}  # base name -> (seed, row)
    for r in rows:
        name = str(r.get("name") or r.get("run") or "")
        if m := _SEED.search(name):
            groups.setdefault(name[:m.start()], []).append((m[1], r))
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    numeric = [(k, n) for k, n in zip(keys, names, strict=True)
               if k in ("clean_acc", "val_robust_acc") or _robust(k) or energy_ball_of(k)]
    if not groups or not numeric:
        return None
    lines = ["| runs | seeds | " + " | ".join(n for _, n in numeric) + " |",
             "|---|---|" + "---|" * len(numeric)]
    for base, group in groups.items():
        seeds = ", ".join(seed for seed, _ in group)
        cells = []
        for k, _ in numeric:
            v = [float(r[k]) for _, r in group if isinstance(r.get(k), int | float)]
            cells.append("" if not v else f"{statistics.mean(v):.3f}" + (
                f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "") + (
                f" ({len(v)})" if len(v) != len(group) else ""))
        lines.append(f"| {base} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def energy_column(energy: object) -> dict[str, object]:
    """The mean energy of an ``energy.json`` under a key naming its ball
    (``energy-l2-eps0.5``, the robust accuracies' key format), with how it was estimated
    (``energy_settings``): runs measured at other radii or norms get other columns."""
    if not isinstance(energy, dict) or energy.get("energy_mean") is None:
        return {}
    s = energy.get("settings") or {}
    norm, eps = s.get("norm", "l2"), s.get("eps")
    key = robust_key("energy", norm, eps) if isinstance(eps, int | float) else \
        f"energy-{norm}-eps?"
    how = ", ".join(f"{k} {s[k]}" for k in ("n", "T", "M", "S") if k in s)
    return {key: energy["energy_mean"], **({"energy_settings": how} if how else {})}


def _robust(key: str) -> tuple[bool, str, str, str] | None:
    """``(AutoAttack's row?, attack, norm, eps)`` of a robust-accuracy column (``pgd-l2-eps1.5``;
    a suite's AutoAttack figures are ``aa_``-prefixed), None for any other column."""
    parts = read_key(key.removeprefix("aa_"))
    return (key.startswith("aa_"), *parts) if parts and parts[0] != "energy" else None


def energy_ball_of(key: str) -> tuple[str, str] | None:
    """``(norm, eps)`` of an energy column (``energy-l2-eps0.5``: erat report's and a suite's),
    else None."""
    parts = read_key(key)
    return parts[1:] if parts and parts[0] == "energy" else None


# the columns of a short table: these first, the robust accuracies, then those after
_FIRST = {"name": "run", "run": "run", "label": "run", "method": "method",
          "method_settings": "settings", "trained": "trained at",
          "labels": "labels", "budget": "budget", "radius": "radius", "clean_acc": "clean"}
_LAST = {"val_robust_acc": "val. robust",
         "train_s_per_epoch": "s/epoch", "checks_failed": "failed checks",
         "catastrophic_overfitting_epoch": "overfitting at epoch"}


def column_name(key: str, rows: Sequence[Mapping] = ()) -> str | None:
    """The human name of a result column (``pgd-l2-eps0.5`` -> ``PGD-l2 0.5``; AutoAttack
    on the first ``aa_n`` examples: ``AutoAttack-l2 1.5 (500)``), None for a column that
    short tables leave to the CSV."""
    if key == "val_robust_acc":  # named with the validation PGD's ball, when one
        balls = {r.get("val_ball") for r in rows if r.get(key) is not None} - {None}
        if len(balls) == 1:
            return f"{_LAST[key]} {balls.pop()}"
        if balls:  # (runs validated in other balls: the CSV's val_ball says whose)
            return f"{_LAST[key]} ({', '.join(sorted(balls))}; by run: val_ball)"
    if key in _FIRST or key in _LAST:
        return {**_FIRST, **_LAST}[key]
    if energy := energy_ball_of(key):
        return f"energy {norm_name(energy[0])} {radius_name(*energy)}"
    if (parts := _robust(key)) is None:
        return None
    aa, attack, norm, eps = parts
    subset = sorted({r["aa_n"] for r in rows if r.get(key) is not None and "aa_n" in r})
    return f"{title(attack)}-{norm_name(norm)} {radius_name(norm, eps)}" + (
        f" ({', '.join(map(str, subset))})" if aa and subset else "")


def _by_radius(keys: list[str]) -> list[str]:
    """Robust-accuracy columns grouped by attack and norm in order of first appearance, each
    group by radius."""
    parts = {k: _robust(k) for k in keys}
    groups = list(dict.fromkeys(parts[k][:3] for k in keys))
    return sorted(keys, key=lambda k: (groups.index(parts[k][:3]), float(parts[k][3])))


def readable_columns(rows: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """The columns of a short table of ``rows`` and their human names: the run, its method,
    clean and robust accuracies, energy, time per epoch, failed checks; columns empty in
    every row are left out."""
    present = [k for k in dict.fromkeys(k for r in rows for k in r)
               if any(r.get(k) not in (None, "") for r in rows)]
    first = [k for k in _FIRST if k in present and not (k == "run" and "name" in present)]
    robust = _by_radius([k for k in present if _robust(k)])
    energy = [k for k in present if energy_ball_of(k)]
    keys = first + robust + energy + [k for k in _LAST if k in present]
    return keys, [column_name(k, rows) for k in keys]


def table_columns(rows: Sequence[Mapping]) -> list[str]:
    """Every column that holds a value in some row, in order of first appearance, the robust
    accuracies and then the energies together after ``clean_acc`` (whichever row has
    them)."""
    present = [k for k in dict.fromkeys(k for row in rows for k in row)
               if any(row.get(k) not in (None, "") for row in rows)]
    robust = _by_radius([k for k in present if _robust(k)]) + list(filter(energy_ball_of,
                                                                        present))
    rest = [k for k in present if k not in robust]
    cut = rest.index("clean_acc") + 1 if "clean_acc" in rest else len(rest)
    return [*rest[:cut], *robust, *rest[cut:]]


def every_column(rows: Sequence[Mapping], columns: Sequence[str]) -> list[str]:
    """The lines of a report's full table (``results.md`` after its short one)."""
    return ["## Every column (also in results.csv)", "", results_table(rows, columns), ""]


def write_csv(rows: Sequence[Mapping], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Rows to CSV; columns default to every key in order of first appearance. Nested values
    are written as JSON."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    path = Path(path)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v
                         for k, v in r.items()})
    atomic_write_text(text.getvalue(), path)  # (a reader never meets half a table)
    return path


def result_row(result: Mapping, label: str | None = None, prefix: str = "") -> dict:
    """One flat row of an evaluation result: label, the number of test examples, clean
    accuracy, every robust accuracy, the sample's note (when a subset) and the number of
    failed checks; each column but the label named with ``prefix`` (a suite's ``aa_``)."""
    if not isinstance(result, Mapping) or not {"clean_acc", "robust_acc"} <= set(result):
        raise ValueError("result_row takes what erat.evaluate returns (clean_acc, robust_acc, "
                         f"threat), got {type(result).__name__} of "
                         f"{', '.join(map(str, result)) if isinstance(result, Mapping) else '?'}")
    threat = result.get("threat", {})
    row = {"n": threat.get("n"), "clean_acc": result["clean_acc"],
           **result.get("robust_acc", {}),
           **({"subset_note": threat["subset_note"]} if threat.get("subset_note") else {}),
           "checks_failed": result.get("checks_failed", 0)}
    return {**({} if label is None else {"label": label}),
            **{prefix + k: v for k, v in row.items()}}


def attack_settings(threat: Mapping) -> str | None:
    """What sets an evaluation's strength, as one text (a report's ``attack_settings``
    column): the attacks in the worst case, with their restarts and queries, and PGD's steps
    and step."""
    parts = [str(threat.get("worst_case") or "").removesuffix("; and over the smaller radii")]
    if "steps" in threat:
        parts.append(f"{threat['steps']} steps")
    if threat.get("step_size_rule") == "fixed":
        parts.append("step " + ", ".join(f"{v:g}" for v in sorted(set(
            (threat.get("step_size") or {}).values()))))
    elif threat.get("step_size_rule"):
        parts.append(f"step {threat['step_size_rule']}")
    return "; ".join(p for p in parts if p) or None


def check_lines(named: Sequence[tuple[str, Mapping]]) -> dict[str, list[str]]:
    """One line per sanity check an evaluation did not pass (``(label, result)``: its
    ``checks``), with its detail as ``erat eval`` prints it; for
    :func:`evaluation_section`'s ``more``."""
    return {f"{label}: {c['name']} " + ("(a note)" if c.get("severity") == "note" else
                                        "failed") + f": {c['detail']}": []
            for label, result in named for c in result.get("checks") or []
            if not c.get("passed", True)}


def evaluation_section(threats: Sequence[tuple[str, str, Mapping]],
                       more: Mapping[str, list[str]] | None = None) -> list[str]:
    """The ``## Evaluation`` lines of a ``results.md``: each distinct setting of the runs'
    evaluations (``(run, what, threat)``: a result's ``threat``, ``what`` naming its columns)
    (the ball, the worst case over which attacks, PGD's steps, the examples) with the runs
    it applies to, then the lines of ``more`` (line -> runs); none when there is nothing."""
    said: dict[str, list[str]] = {}
    for name, what, t in threats:  # (a part the threat does not record is left out)
        norm = t.get("norm", "l2")
        eps = ", ".join(radius_name(norm, f"{e:g}") for e in t.get("eps", []))
        parts = [norm_name(norm) + (f" at {eps}" if eps else ""),
                 *([f"worst case {t['worst_case']}"] if t.get("worst_case") else []),
                 *([f"PGD of {t['steps']} steps"] if "pgd" in t.get("attacks", []) else []),
                 *([f"on {t['n']}" + (f" of {t['n_total']}" if t.get("n_total") else "")
                    + " test images"] if t.get("n") else []),
                 *(["upper bounds of robust accuracy (no AutoAttack: a stronger attack may "
                    "find more)"] if t.get("attacks") and upper_bound(t["attacks"]) else [])]
        said.setdefault(what + ", ".join(parts), []).append(name)
    said.update(more or {})
    if not said:
        return []
    return ["## Evaluation", "", *[f"- {line}" + (f" ({', '.join(names)})" if names else "")
                                   for line, names in said.items()], ""]
