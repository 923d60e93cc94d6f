"""Figures from evaluation results and models, usable without the CLI.

- :func:`accuracy_vs_radius`: robust accuracy against the radius, one line per run, from the
  dicts :func:`erat.evaluate.evaluate` returns (:func:`plotted`: the attack and norm most
  runs were evaluated with);
- :func:`landscape`: the picture of Zhang, Huang & Xu (arXiv 1911.06479): the loss of one test
  image along the adversarial direction and along random unit directions (l2 or l-inf), and
  over the plane spanned by the adversarial and one random direction, one column per model.
  A model with a smooth landscape has an adversarial curve close to the random ones;
- :func:`frontier`: robust and clean accuracy against training cost, one curve per family.

Figures are written as ``<out>.png`` and ``<out>.svg``; matplotlib is imported inside the
functions with the Agg backend, so importing this module costs nothing.

Example::

    accuracy_vs_radius({"ER": res_er, "PGD-AT": res_at}, Path("runs/acc"), norm="l2")
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from erat.attacks import read_key, title, upper_bound
from erat.files import atomic_write_bytes
from erat.losses import cross_entropy
from erat.passes import supervised_search
from erat.search import adversarial_direction
from erat.threat import Norm, norm_name, random_direction

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
    curve = {float(p[2]): float(v) for k, v in result["robust_acc"].items()
             if (p := read_key(k)) and p[:2] == (attack, norm)}
    if curve and 0.0 not in curve and "clean_acc" in result:
        curve[0.0] = float(result["clean_acc"])
    return sorted(curve.items())


def plotted(results: Mapping[str, Mapping]) -> tuple[str, str]:
    """The attack and norm an accuracy plot of these evaluation results draws: of those the
    runs were evaluated with (each result's ``threat``, and PGD in its norm, which every
    chain starting with PGD records), the one with curves for the most runs, the first
    run's on a tie (a run evaluated otherwise than the first stays in the plot)."""
    pairs = [(t.get("attack", "pgd"), t.get("norm", "l2"))
             for t in (r["threat"] for r in results.values())]
    pairs = list(dict.fromkeys([p for pair in pairs for p in (pair, ("pgd", pair[1]))]))
    return max(pairs, key=lambda p: sum(bool(radius_curve(r, attack=p[0], norm=p[1]))
                                        for r in results.values()))


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
    sizes = sorted({int(r["threat"]["n"]) for label, r in results.items() if curves[label]
                    and isinstance((r.get("threat") or {}).get("n"), int)})  # (those drawn)
    ax.set_title(f"robust accuracy under {title(attack)}-{norm_name(norm)}"
                 + (" (an upper bound)" if upper_bound([attack]) else "")
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
