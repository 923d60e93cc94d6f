"""Tables and figures from evaluation results and models, usable without the CLI.

- :func:`accuracy_vs_radius`: robust accuracy against the radius, one line per run, from the
  dicts :func:`erat.evaluate.evaluate` returns;
- :func:`landscape`: the picture of Zhang, Huang & Xu (arXiv 1911.06479): the loss of one test
  image along the adversarial direction and along random unit directions (l2 or l-inf), and
  over the plane spanned by the adversarial and one random direction, one column per model.
  A model with a smooth landscape has an adversarial curve close to the random ones;
- :func:`results_table` (Markdown), :func:`write_csv`, :func:`result_row` (one flat row per
  evaluation result).

Figures are written as ``<out>.png`` and ``<out>.svg``; matplotlib is imported inside the
functions with the Agg backend, so importing this module costs nothing.

Example::

    accuracy_vs_radius({"ER": res_er, "PGD-AT": res_at}, Path("runs/acc"), norm="l2")
    print(results_table([result_row(res_er, "ER")], ["label", "clean_acc", "pgd-l2-eps2"]))
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from erat.attacks import robust_key
from erat.errors import UserError
from erat.files import atomic_write_bytes, atomic_write_text, check_writable_dir, read_json, sha256
from erat.losses import cross_entropy
from erat.passes import supervised_search
from erat.search import adversarial_direction
from erat.threat import Norm, ball_name, norm_name, random_direction

_FIG_SUFFIXES = (".png", ".svg", ".pdf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> list[Path]:
    """Write ``fig`` as ``out.png`` and ``out.svg`` (a figure suffix on ``out`` is dropped)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in _FIG_SUFFIXES else out
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{base}.png"), Path(f"{base}.svg")]
    for p in paths:  # (atomically: a kill mid-write leaves no half a picture)
        atomic_write_bytes(p, lambda f, p=p: fig.savefig(
            f, format=p.suffix[1:], dpi=150 if p.suffix == ".png" else None,
            bbox_inches="tight"))
    _pyplot().close(fig)
    return paths


def radius_curve(result: Mapping, *, attack: str = "pgd", norm: str = "l2"
                 ) -> list[tuple[float, float]]:
    """``[(eps, accuracy), ...]`` sorted by eps from one evaluation result, with the clean
    accuracy at ``eps = 0`` when the run has no ``eps = 0`` entry."""
    prefix = f"{attack}-{norm}-eps"
    curve = {float(k[len(prefix):]): float(v) for k, v in result["robust_acc"].items()
             if k.startswith(prefix)}
    if curve and 0.0 not in curve and "clean_acc" in result:
        curve[0.0] = float(result["clean_acc"])
    return sorted(curve.items())


def accuracy_vs_radius(results: Mapping[str, Mapping], out: Path, *, attack: str = "pgd",
                       norm: str = "l2") -> list[Path]:
    """One line per run (label -> evaluation result) of accuracy against the ``norm`` radius
    for ``attack`` (``robust_acc`` keys ``"<attack>-<norm>-eps<eps>"``), titled with the
    test images measured and, without AutoAttack, as an upper bound. Returns the paths."""
    curves = {label: radius_curve(r, attack=attack, norm=norm) for label, r in results.items()}
    if not any(curves.values()):
        raise ValueError(f"no {attack}-{norm} robust accuracies in any of {list(results)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, curve in curves.items():
        if not curve:
            warnings.warn(f"run {label!r} has no {attack}-{norm} results; left out of the plot",
                          stacklevel=2)
            continue
        eps, acc = zip(*curve, strict=True)
        ax.plot(eps, acc, marker="o", label=label)
    ax.set_xlabel(f"{norm_name(norm)} radius eps (pixels in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    sizes = sorted({int(r["threat"]["n"]) for r in results.values()
                    if isinstance((r.get("threat") or {}).get("n"), int)})
    bound = "autoattack" not in attack and attack != "all"  # (a white-box search alone)
    ax.set_title(f"robust accuracy under {attack_name(attack)}-{norm_name(norm)}"
                 + (" (an upper bound)" if bound else "")
                 + (f"\n{' or '.join(map(str, sizes))} test images"
                    + (" (the runs differ)" if len(sizes) > 1 else "") if sizes else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def loss_on_plane(model: nn.Module, x: Tensor, y: Tensor, d1: Tensor, d2: Tensor,
                  s: Tensor, t: Tensor) -> Tensor:
    """Cross-entropy ``[len(s), len(t)]`` at ``clip(x + s_i d1 + t_j d2)`` (the ray is clipped to
    ``[0, 1]`` point-wise, METHOD.md section 5); ``x``, ``d1``, ``d2`` are ``[1, ...]``."""
    ss, tt = torch.meshgrid(s.to(x), t.to(x), indexing="ij")  # [S, T]
    shape = (-1,) + (1,) * (x.dim() - 1)
    z = (x + ss.reshape(shape) * d1 + tt.reshape(shape) * d2).clamp(0.0, 1.0)  # [S*T, ...]
    with supervised_search(model), torch.no_grad():
        loss = cross_entropy(model(z), y.expand(len(z)))
    return loss.reshape(len(s), len(t)).cpu()


def landscape_data(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_random: int = 4,
                   points: int = 41, grid: int = 21, seed: int = 0, norm: Norm = "l2"
                   ) -> dict[str, Tensor]:
    """Loss of the first example of ``x`` along the adversarial and ``n_random`` random
    directions of unit size in ``norm`` (l2: the unit sphere; l-inf: the cube's vertices,
    :func:`~erat.threat.random_direction`) for ``t`` in ``[0, eps]`` (``"adv"``
    ``[points]``, ``"random"`` ``[n_random, points]``), and over the (adversarial, first
    random) plane on ``[-eps, eps]^2`` (``"surface"`` ``[grid, grid]``). Random directions
    depend on ``seed`` only, so every model sees the same ones."""
    dev = _device(model)
    x0, y0 = x[:1].to(dev), y.reshape(-1)[:1].to(dev)
    gen = torch.Generator().manual_seed(seed)
    rand = [random_direction(x0.cpu(), norm, generator=gen).to(dev)
            for _ in range(max(n_random, 1))]
    with supervised_search(model):
        adv = adversarial_direction(model, x0, y0, eps=eps, norm=norm)
    ts, zero = torch.linspace(0, eps, points), torch.zeros(1)
    grid_t = torch.linspace(-eps, eps, grid)
    return {
        "t": ts,
        "adv": loss_on_plane(model, x0, y0, adv, adv, ts, zero)[:, 0],
        "random": torch.stack([loss_on_plane(model, x0, y0, d, d, ts, zero)[:, 0]
                               for d in rand[:n_random]]) if n_random else torch.empty(0, points),
        "grid": grid_t,
        "surface": loss_on_plane(model, x0, y0, adv, rand[0], grid_t, grid_t),
    }


def landscape(models: Mapping[str, nn.Module], x: Tensor, y: Tensor, *, eps: float, out: Path,
              n_random: int = 4, points: int = 41, grid: int = 21, seed: int = 0,
              norm: Norm = "l2") -> list[Path]:
    """Loss landscape of one test image (the first of ``x`` ``[N, C, H, W]`` in ``[0, 1]``,
    label ``y[0]``) for each model side by side, in the ``norm`` ball of radius ``eps``
    (:func:`landscape_data`): top row, loss along the adversarial (PGD) and random unit
    directions for ``t`` in ``[0, eps]``, one scale for every model; bottom row, a contour
    of the loss on the plane of the adversarial and one random direction. Returns the PNG
    and SVG paths."""
    if not models:
        raise ValueError("landscape needs at least one model")
    data = {name: landscape_data(m, x, y, eps=eps, n_random=n_random, points=points, grid=grid,
                                 seed=seed, norm=norm) for name, m in models.items()}
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(data), figsize=(3.4 * len(data), 6.4), squeeze=False)
    curves = [c for d in data.values() for c in (d["adv"], *d["random"])]
    low = min(float(c.min()) for c in curves)
    high = max(float(c.max()) for c in curves)
    pad = 0.05 * (high - low) or 0.05  # (one scale for every model's curves: comparable)
    for col, (name, d) in enumerate(data.items()):
        top, bottom = axes[0, col], axes[1, col]
        for i, curve in enumerate(d["random"]):
            top.plot(d["t"], curve, color="0.6", lw=1, label="random" if i == 0 else None)
        top.plot(d["t"], d["adv"], color="C3", lw=2, label="adversarial")
        top.set(title=name, xlabel=f"t ({norm_name(norm)} step along unit direction)",
                ylabel="cross-entropy", ylim=(low - pad, high + pad))
        top.legend(fontsize=7)
        g, surface = d["grid"], d["surface"]
        lo, hi = surface.min().item(), surface.max().item()
        flat = hi - lo <= 1e-6 * max(1.0, abs(hi))  # (a model that predicts one class)
        cs = bottom.contourf(g, g, surface.T, cmap="viridis",
                             levels=[lo - 1e-3, hi + 1e-3] if flat else 20)
        fig.colorbar(cs, ax=bottom, fraction=0.046)
        bottom.set(xlabel="adversarial direction", ylabel="random direction",
                   title=f"flat: loss {hi:.4g}" if flat else None)
    fig.suptitle(f"loss landscape of one test image, {norm_name(norm)} radius {eps:g}")
    fig.tight_layout()
    return _save(fig, out)


def frontier_points(rows: Sequence[Mapping], *, robust: str, clean: str = "clean_acc",
                    cost: str = "cost_erm_epochs", family: str = "family",
                    select: str = "val_robust_acc") -> dict[str, list[tuple]]:
    """``{family: [(cost, robust, clean), ...]}`` sorted by cost, one point per family and
    budget: the row with the highest ``select`` value among those at that budget."""
    best: dict[tuple[str, float], Mapping] = {}
    for r in rows:
        if r.get(robust) is None or r.get(cost) is None:
            continue
        key = (str(r.get(family, r.get("name"))), float(r.get("budget") or r[cost]))
        if key not in best or (r.get(select) or 0) > (best[key].get(select) or 0):
            best[key] = r
    points: dict[str, list[tuple]] = {}
    for (name, _), r in best.items():
        points.setdefault(name, []).append(
            (float(r[cost]), float(r[robust]), float(r.get(clean, float("nan")))))
    return {k: sorted(v) for k, v in points.items()}


def frontier(rows: Sequence[Mapping], out: Path, *, robust: str, clean: str = "clean_acc",
             cost: str = "cost_erm_epochs", family: str = "family",
             select: str = "val_robust_acc", title: str | None = None) -> list[Path]:
    """Robust accuracy (``robust`` key of each row) against training cost (``cost``), one
    curve per ``family``, with clean accuracy (``clean``) in a second panel: which method buys
    the most robustness for the compute. Of several rows of a family at one budget, the one
    with the highest ``select`` (validation) value is drawn. Rows without the keys are left
    out."""
    points = frontier_points(rows, robust=robust, clean=clean, cost=cost, family=family,
                             select=select)
    if not points:
        raise ValueError(f"no row has both {robust!r} and {cost!r}")
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.6, 6.4), sharex=True)
    for i, (name, pts) in enumerate(sorted(points.items())):
        c, rob, cl = zip(*pts, strict=True)
        style = {"marker": "os^vD<>ph*"[i % 10], "label": name}
        top.plot(c, rob, **style)
        bottom.plot(c, cl, **style)
    top.set(ylabel=robust, title=title or "robust accuracy against training cost")
    bottom.set(xlabel=f"training cost ({cost})", ylabel=clean)
    ticks: list[float] = []
    for t in sorted(p[0] for pts in points.values() for p in pts):
        if not ticks or t > ticks[-1] * 1.02:  # one tick per budget (costs 119.6-120 are one)
            ticks.append(t)
    for ax in (top, bottom):
        ax.set_xscale("log")
        ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.3)
        ax.set_xticks(ticks, [f"{t:.0f}" if t >= 10 else f"{t:.2g}" for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, out)


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
    row (missing -> empty)."""
    lines = ["| " + " | ".join(_cell(c, float_fmt) for c in headers or columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c), float_fmt) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_SEED = re.compile(r"-s(\d+)$")  # a suite's seed suffix (erat.config.expand_runs)


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
    numeric = [(k, n) for k, n in zip(keys, names, strict=True) if k in (
        "clean_acc", "val_robust_acc", "energy_mean") or _ROBUST_KEY.match(k)]
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


_ATTACK_NAMES = {"pgd": "PGD", "fgsm": "FGSM", "autoattack": "AutoAttack",
                 "square": "Square", "all": "PGD+AutoAttack"}
_ROBUST_KEY = re.compile(  # (an attack's name may hold hyphens: rs-fgsm-l2-eps0.5)
    r"^(?!energy-)(aa_)?([a-z0-9+]+(?:-[a-z0-9+]+)*?)-(l2|linf)-eps([0-9.e+-]+)$")
_ENERGY_KEY = re.compile(r"^energy-(l2|linf)-eps([0-9.e+-]+)$")  # erat report's energy column
# the columns of a short table: these first, the robust accuracies, then those after
_FIRST = {"name": "run", "run": "run", "method": "method", "trained": "trained at",
          "labels": "labels", "budget": "budget", "radius": "radius", "clean_acc": "clean"}
_LAST = {"val_robust_acc": "val. robust", "energy_mean": "energy",
         "train_s_per_epoch": "s/epoch", "checks_failed": "failed checks",
         "catastrophic_overfitting_epoch": "overfitting at epoch"}
_BALLS = {"val_robust_acc": "val_ball", "energy_mean": "energy_ball"}  # (a suite's rows)


def attack_name(attack: str) -> str:
    """The name tables give an attack chain: ``pgd+square`` -> ``PGD+Square``."""
    return "+".join(_ATTACK_NAMES.get(a, a) for a in attack.split("+"))


def column_name(key: str, rows: Sequence[Mapping] = ()) -> str | None:
    """The human name of a result column (``pgd-l2-eps0.5`` -> ``PGD-l2 0.5``; AutoAttack
    on the first ``aa_n`` examples: ``AutoAttack-l2 1.5 (500)``), None for a column that
    short tables leave to the CSV."""
    if key in _BALLS:  # named with the validation PGD's or the energy's ball, when one
        balls = {r.get(_BALLS[key]) for r in rows if r.get(key) is not None} - {None}
        if len(balls) == 1:
            return f"{_LAST[key]} {balls.pop()}"
    if key in _FIRST or key in _LAST:
        return {**_FIRST, **_LAST}[key]
    if m := _ENERGY_KEY.match(key):
        return f"energy {norm_name(m[1])} {m[2]}"
    m = _ROBUST_KEY.match(key)
    if m is None:
        return None
    attack, norm = attack_name(m[2]), norm_name(m[3])
    subset = sorted({r["aa_n"] for r in rows if r.get(key) is not None and "aa_n" in r})
    return f"{attack}-{norm} {m[4]}" + (f" ({', '.join(map(str, subset))})"
                                         if m[1] and subset else "")


def readable_columns(rows: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """The columns of a short table of ``rows`` and their human names: the run, its method,
    clean and robust accuracies, energy, time per epoch, failed checks; columns empty in
    every row are left out."""
    present = [k for k in dict.fromkeys(k for r in rows for k in r)
               if any(r.get(k) not in (None, "") for r in rows)]
    first = [k for k in _FIRST if k in present and not (k == "run" and "name" in present)]
    robust = [k for k in present if _ROBUST_KEY.match(k)]
    energy = [k for k in present if _ENERGY_KEY.match(k)]
    keys = first + robust + energy + [k for k in _LAST if k in present]
    return keys, [column_name(k, rows) for k in keys]


def table_columns(rows: Sequence[Mapping]) -> list[str]:
    """Every column that holds a value in some row, in order of first appearance, the robust
    accuracies together after ``clean_acc`` (whichever row has them)."""
    present = [k for k in dict.fromkeys(k for row in rows for k in row)
               if any(row.get(k) not in (None, "") for row in rows)]
    robust = [k for k in present if _ROBUST_KEY.match(k)]
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


def result_row(result: Mapping, label: str | None = None) -> dict:
    """One flat row of an evaluation result: label, clean accuracy, every robust accuracy,
    the sample and the number of failed checks."""
    threat = result.get("threat", {})
    row = {} if label is None else {"label": label}
    row["clean_acc"] = result["clean_acc"]
    row.update(result.get("robust_acc", {}))
    row["n"] = threat.get("n")
    row["subset_note"] = threat.get("subset_note")
    row["checks_failed"] = result.get("checks_failed")
    return row


def _check_weights(path: Path, recorded: str | None, run: Path, again: str) -> None:
    """Refuse a result file ``path`` of run folder ``run`` whose ``recorded`` weights'
    SHA-256 is not its finished ``model.pt``'s (trained again since, or measured on
    ``model-last.pt``): one line naming the file and how to compute it ``again``."""
    from erat.rundir import RunDir

    folder = RunDir(run)
    if not recorded or not folder.finished() or recorded == folder.weights_sha256():
        return
    last = run / RunDir.MODEL_LAST
    which = f"{RunDir.MODEL_LAST}, the last epoch's" if last.is_file() and \
        sha256(last) == recorded else "other weights (trained again since?)"
    raise UserError(f"{path} was computed on {which}, not on {run}'s {RunDir.MODEL}; {again}")


def read_results(runs: Sequence[Path], eval_name: str = "eval.json") -> dict[str, dict]:
    """Each run folder's evaluation JSON by run name; a missing file, one that is not an
    evaluation result, or one computed on other weights than the run's (trained again
    since: its ``threat.checkpoint_sha256``) is one line naming it."""

    results = {}
    for run in runs:
        path = Path(run) / eval_name
        if not Path(run).is_dir():
            raise UserError(f"{run} is a file, not a run folder" if Path(run).exists()
                            else f"no such run folder: {run}")
        if not path.is_file() and (Path(run) / "runs").is_dir():
            raise UserError(f"{run} is a suite's report folder, not a run: give its runs "
                            f"({Path(run) / 'runs'}/*), or write its report with `erat "
                            f"reproduce SUITE --out {run} --report-only`")
        if not path.is_file():
            raise UserError(f"{path} not found: run `erat eval {run} --json {path}` first")
        res = read_json(path, "evaluation result")
        if not isinstance(res, dict) or not isinstance(res.get("robust_acc"), dict) \
                or "clean_acc" not in res or "threat" not in res:
            raise UserError(f"{path} is not an erat evaluation result (no clean_acc, "
                            "robust_acc and threat)")
        _check_weights(path, res["threat"].get("checkpoint_sha256"), Path(run),
                      f"evaluate it again: erat eval {run} --json {path}")
        name = Path(run).name
        if name in results:  # (the rows are keyed by name: one would replace the other)
            raise UserError(f"two run folders are named {name!r} ({run} and an earlier "
                            "one); a report names each run by its folder: rename one")
        results[name] = res
    return results


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
    from erat.datasets import load_dataset, recorded_options
    from erat.rundir import RunDir

    run0 = RunDir(runs[0])
    data_dir = run0.read_config().get("data_dir") if (run0 / RunDir.CONFIG).exists() else None
    where = recorded_options(run0.read_meta(), data_dir)
    x, y = load_dataset(where.pop("name"), "test", **where).tensors
    if not 0 <= index < len(x):
        raise UserError(f"--index must be in 0..{len(x) - 1} (the test images of "
                        f"{runs[0]}), got {index}")
    models = {Path(r).name: RunDir(r).load_model() for r in runs}
    return models, x[index:index + 1], y[index:index + 1]


def report_runs(runs: Sequence[Path], out: Path, *, eval_name: str = "eval.json",
                landscape_eps: float | None = None, index: int | None = None,
                log=print) -> list[dict]:
    """``erat report``: the table (CSV; Markdown: the short table of :func:`readable_columns`,
    then every column) and the accuracy-radius plot of evaluated run folders, and optionally
    the loss landscape of test image ``index`` (default 0; only with ``landscape_eps``, a
    radius in the norm of the accuracy plot); the short table and the files written are
    printed. Every option, the evaluation files, and for a landscape the test image and the
    models, are checked and read before anything is written: a mistake leaves ``out`` as it
    was."""
    from erat.threat import check_radius

    if index is not None and landscape_eps is None:
        raise UserError("--index picks the landscape's test image: give --landscape-eps too")
    index = 0 if index is None else index
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"--index must be a test image's position (0 or more), got {index!r}")
    check_writable_dir(out, "--out")
    results = read_results(runs, eval_name)
    rows = [_run_row(Path(run), name, res)
            for run, (name, res) in zip(runs, results.items(), strict=True)]
    sizes = sorted({r["n"] for r in rows if r["n"] is not None})
    if len(sizes) > 1:
        log(f"note: the runs were evaluated on different numbers of test images "
            f"({', '.join(map(str, sizes))}; the n column): compare with care")
    measured = sorted({r["energy_settings"] for r in rows if r.get("energy_settings")})
    if len(measured) > 1:  # (fewer directions or steps find a smaller energy)
        log(f"note: the energies were measured with different settings ({'; '.join(measured)};"
            " the energy_settings column of results.csv): compare with care")
    attack, norm = _plotted(results)
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
    if len(sizes) > 1:  # (said above: shown beside the accuracies)
        keys.insert(keys.index("clean_acc"), "n")
        names.insert(keys.index("n"), "n")
    if any(r["cost_erm_epochs"] is not None for r in rows):  # (cost beside every comparison)
        keys.append("cost_erm_epochs")
        names.append("cost (ERM epochs)")
    short = results_table(rows, keys, headers=names, float_fmt="{:.3f}")
    out = Path(out)
    write_csv(rows, out / "results.csv", columns)
    atomic_write_text("\n".join([short, "", *every_column(rows, columns), ""]),
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


def _plotted(results: Mapping[str, Mapping]) -> tuple[str, str]:
    """The attack and norm the accuracy plot draws: of those the runs were evaluated with
    (each result's ``threat``, and PGD in its norm, which ``all`` includes), the one with
    curves for the most runs, the first run's on a tie (it took the first run's, which
    left out every run evaluated otherwise)."""
    pairs = [(t.get("attack", "pgd"), t.get("norm", "l2"))
             for t in (r["threat"] for r in results.values())]
    pairs = list(dict.fromkeys([p for pair in pairs for p in (pair, ("pgd", pair[1]))]))
    return max(pairs, key=lambda p: sum(bool(radius_curve(r, attack=p[0], norm=p[1]))
                                        for r in results.values()))


def _measured_weights(energy: object) -> str | None:
    """The SHA-256 of the weights an ``energy.json`` measured: ``erat energy``'s record, or a
    suite's cache key."""
    for part, key in (("settings", "checkpoint_sha256"), ("cache_key", "weights_sha256")):
        got = energy.get(part) if isinstance(energy, dict) else None
        if isinstance(got, dict) and got.get(key):
            return got[key]
    return None


def _energy_column(energy: object) -> dict[str, float]:
    """The mean energy of an ``energy.json`` under a key naming its ball
    (``energy-l2-eps0.5``): runs measured at other radii or norms get other columns."""
    if not isinstance(energy, dict) or energy.get("energy_mean") is None:
        return {}
    s = energy.get("settings") or {}
    norm, eps = s.get("norm", "l2"), s.get("eps")
    key = robust_key("energy", norm, eps) if isinstance(eps, int | float) else \
        f"energy-{norm}-eps?"  # (the robust accuracies' key format, for the same ball)
    how = ", ".join(f"{k} {s[k]}" for k in ("n", "T", "M", "S") if k in s)
    return {key: energy["energy_mean"], **({"energy_settings": how} if how else {})}


def _run_row(run: Path, name: str, result: dict) -> dict:
    """The report's row of a run folder: its name, method, training ball and labels
    (``config.yaml``), test images, accuracies, mean energy (``energy.json``, when measured,
    keyed by its ball), failed checks, what the training guard flagged, and its training
    cost in ERM epochs and updates (``model.pt``'s record; none for a model from outside)."""
    from erat.methods import trained_ball
    from erat.rundir import RunDir

    folder = RunDir(run)
    config = folder.read_config() if (run / RunDir.CONFIG).is_file() else {}
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
            "trained": ball_name(*ball) if ball else None, "labels": config.get("labels"),
            "n": result["threat"].get("n"),
            "clean_acc": result["clean_acc"], **result["robust_acc"],
            **_energy_column(energy),
            "checks_failed": result.get("checks_failed", 0), **_training_notes(run),
            "cost_erm_epochs": meta.get("cost_erm_epochs"), "updates": meta.get("updates")}
