"""Honest robustness evaluation: clean accuracy, attacks worst case per example, checks.

Threat model: inputs in pixel space ``[0, 1]`` (normalisation lives inside the model), an
l2 or l-inf ball of radius ``eps`` in that space, intersected with the box. An example counts
as robust at ``eps`` only if it is classified correctly on the clean pass AND at the end point
of every attack run against it, at ``eps`` and at every smaller radius evaluated (Croce &
Hein 2020, AutoAttack, arXiv 2003.01690; the RobustBench protocol, arXiv 2010.09670).
Attacks (:mod:`erat.attacks`) run in the given order, each only on the examples still robust
(:mod:`erat.stages`), so later attacks add to earlier ones; the sanity checks are
:mod:`erat.sanity`. This is the library on tensors; the evaluation of a run folder is
:mod:`erat.assess`.

The whole evaluation runs in eval mode (:func:`erat.passes.supervised_search`; the model's
mode is restored afterwards) with the random number generators forked: every (stage, eps,
batch) is seeded from ``seed``, so a resumed run gives the same numbers as an uninterrupted
one. Per-example flags can be saved after every batch (``state_path``) and are reused when
the settings, the data and the weights match.

Example::

    res = evaluate(model, x_test, y_test, attacks="pgd,autoattack", eps=[0.5, 1.0, 2.0])
    print(res["clean_acc"], res["robust_acc"]["pgd+autoattack-l2-eps1"], res["checks_failed"])
"""

from __future__ import annotations

import copy
import time
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from erat import sanity
from erat.attacks import attack_with
from erat.attacks.base import ATTACKS
from erat.errors import EnvironmentProblem, UserError
from erat.graphs import Padded, compiled
from erat.inputs import images, labels, within_outputs
from erat.passes import sample_outputs, supervised_search
from erat.sanity import EvaluationWarning  # noqa: F401  (part of this module's interface)
from erat.stages import (
    STATE_VERSION,
    EvalConfig,
    Progress,
    Stages,
    progress_key,
    weights_fingerprint,
)
from erat.threat import check_radius_fits

__all__ = ["EvalConfig", "EvaluationWarning", "evaluate", "weights_fingerprint"]


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: EvalConfig | None = None,
    *,
    n_total: int | None = None,
    progress: bool = False,
    state_path: Path | None = None,
    extra_info: dict | None = None,
    fast: bool = False,
    **settings: Any,
) -> dict:
    """Clean and robust accuracy of ``model`` on ``x`` ``[N, C, H, W]`` in ``[0, 1]`` with
    labels ``y`` ``[N]``, worst case per example, plus the threat model and sanity checks.

    Settings come as ``config`` or as keywords for :meth:`EvalConfig.build`: ``attacks``
    (``"pgd"``, ``"pgd,autoattack"``, ``"all"``, ...), ``norm`` (``"l2"``, ``"linf"``),
    ``eps`` (radii in pixel space: a number, a list, or ``"8/255,16/255"``; in l2 default
    0.5 and 1.0, in l-inf required), ``steps``, ``restarts`` and the other attack options
    (one that no attack run takes is ignored, with a warning), ``batch_size``, ``seed``,
    ``sanity_n`` (0: no sanity checks). ``n_total``: the size of the full test set when
    ``x`` is a subset (recorded in ``threat``). ``state_path``: per-example flags are saved
    there after every batch and reused when the settings, data and weights match.
    ``extra_info`` is merged into ``threat``. ``fast`` (on a GPU): the attacks run on the
    model captured as CUDA graphs, batches padded to a few sizes (:mod:`erat.graphs`); the
    same function, a different speed. ``progress``: a bar per stage.

    Returns a JSON-ready dict: ``clean_acc``; ``robust_acc`` and ``robust_count`` by
    :func:`~erat.attacks.robust_key` (``"pgd-l2-eps0.5"``: the stages' label, the norm, the
    radius as ``%g``); ``threat`` (the settings, examples, attacks and versions);
    ``checks`` (:mod:`erat.sanity`), ``checks_failed`` (their count) and ``notes``;
    ``check_settings``, ``versions``, ``resumed``, ``seconds``.
    """
    cfg = config if config is not None else EvalConfig.build(**settings, warn_unused=True)
    y = _validate_data(x, y, n_total)
    for eps in cfg.eps:
        check_radius_fits(eps, cfg.norm, tuple(x.shape[1:]), name="eps")
    _check_installed(cfg)
    _check_square(cfg, x)
    clash = set(extra_info or {}) & set(_threat(cfg, len(y), n_total))
    if clash:
        raise ValueError(f"extra_info may not override threat keys: {sorted(clash)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = any(m.training for m in model.modules())
    start = time.perf_counter()
    attacked = _channels_last_copy(model) if x.dim() == 4 else model
    if fast and device.type == "cuda":
        attacked = Padded(compiled(attacked, graphs=True, graph_searches=True))
    cuda = [device] if device.type == "cuda" else []
    sample = sample_outputs(model, x[:8].to(device))
    within_outputs(y, sample)
    classes = int(sample.shape[-1])
    with supervised_search(attacked), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        saved = Progress(state_path, progress_key(cfg, model, x, y, sample) if state_path
                         else {})
        stages = Stages(attacked, x.to(device), y.to(device), cfg, saved, progress)
        flags = stages.run_attacks()
        results = sanity.run_checks(stages, flags, was_training)
        saved.finish()
    return _result(cfg, flags, results, n_total, extra_info, saved.resumed,
                   time.perf_counter() - start, classes)


def _channels_last_copy(model: nn.Module) -> nn.Module:
    """A channels-last copy of a convolutional model (the caller's model is left as it is):
    the same function, faster on CPUs, whose max-pooling is slow in the default layout
    (docs/results/evaluation.md)."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    try:
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    except Exception:  # (a model that cannot be copied is attacked as it is)
        return model


def _validate_data(x: Tensor, y: Tensor, n_total: int | None) -> Tensor:
    """``y`` as int64 once ``x`` and ``y`` pass :mod:`erat.inputs`' checks."""
    y = labels(y, len(images(x)))
    if n_total is not None and n_total < len(y):
        raise ValueError(f"n_total ({n_total}) is smaller than the {len(y)} examples given")
    return y


def _check_square(cfg: EvalConfig, x: Tensor) -> None:
    """One line, before any attack work, when an attack is asked for on images it cannot
    attack (its ``refuses``; the gradient-masking check skips them, :mod:`erat.sanity`)."""
    for name in cfg.attacks if x.dim() == 4 else ():
        refuses = getattr(ATTACKS[name], "refuses", None)
        why = refuses(x.shape[-2], x.shape[-1], cfg.norm) if refuses else None
        if why:
            raise UserError(f"the attack {name} cannot attack these images (pyautoattack's "
                            f"Square: {why}): resize them (--resize N for your own data) or "
                            "attack with pgd")


def _required(cfg: EvalConfig) -> dict[str, tuple[str, str]]:
    """Packages the evaluation needs beyond torch: name -> (what needs it, pip requirement),
    from the attacks' ``requires``."""
    needed = {p: (f"--attack {name}", spec) for name in cfg.attacks
              for p, spec in getattr(ATTACKS[name], "requires", {}).items()}
    black_box = attack_with("black-box")
    if cfg.sanity_n > 0 and cfg.masking_check and black_box:
        for p, spec in getattr(ATTACKS[black_box], "requires", {}).items():
            needed.setdefault(p, (f"the gradient-masking check "
                                    f"({ATTACKS[black_box].__name__})", spec))
    return needed


def _check_installed(cfg: EvalConfig) -> None:
    """One line naming the missing package and what needs it, before any attack work."""
    for pkg, (what, spec) in sorted(_required(cfg).items()):
        if find_spec(pkg) is None:
            raise EnvironmentProblem(f"{what} needs {pkg}: pip install '{spec}'")


def _versions(cfg: EvalConfig) -> dict:
    out = {"torch": torch.__version__}
    for pkg in ["erat", *sorted(_required(cfg))]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _described(attack: Any, classes: int | None) -> str:
    """An attack's words in a result's ``threat``: its ``describe()`` (``describe(classes)``
    where they depend on the model's number of classes), else its name."""
    import inspect

    describe = getattr(attack, "describe", None)
    if describe is None:
        return attack.name
    return describe(classes) if "classes" in inspect.signature(describe).parameters \
        else describe()


def _threat(cfg: EvalConfig, n: int, n_total: int | None, classes: int | None = None) -> dict:
    n_total = n if n_total is None else n_total
    attacks = cfg.built
    threat = {
        "attack": cfg.labels[-1], "attacks": list(cfg.attacks), "norm": cfg.norm,
        "eps": list(cfg.eps), "seed": cfg.seed, "batch_size": cfg.batch_size,
        "n": n, "n_total": n_total, "subset": n < n_total,
        "subset_note": f"first {n} of {n_total} test examples" if n < n_total else None,
        "input_space": "pixels in [0, 1]; eps measured there",
        "worst_case": "per example over: " + " then ".join(
            _described(a, classes) for a in attacks)
        + ("; and over the smaller radii" if len(set(cfg.eps)) > 1 else ""),
        "rules": STATE_VERSION,  # (the evaluation's: PGD's step, radii carried upward)
        **({"classes": classes} if classes else {}),  # (the model's outputs)
    }
    for a in attacks:
        if hasattr(a, "threat_info"):
            threat.update(a.threat_info(cfg.eps))
    return threat


def _result(cfg: EvalConfig, flags: dict[str, Tensor], checks: list[dict],
            n_total: int | None, extra_info: dict | None, resumed: bool,
            seconds: float, classes: int | None = None) -> dict:
    n = len(flags["clean"])
    robust = {k: v for k, v in flags.items() if k != "clean"}
    return {
        "clean_acc": int(flags["clean"].sum()) / n,  # (exact: 0.925, not float32's 0.92500001)
        "robust_acc": {k: int(v.sum()) / n for k, v in robust.items()},
        "robust_count": {k: int(v.sum()) for k, v in robust.items()},
        "threat": {**_threat(cfg, n, n_total, classes), **(extra_info or {})},
        "checks": checks,
        "checks_failed": len(sanity.failed(checks)),
        "notes": [c["name"] for c in checks if not c["passed"] and c not in
                  sanity.failed(checks)],
        "check_settings": {"sanity_n": cfg.sanity_n,
                           "masking_check": cfg.masking_check and cfg.sanity_n > 0,
                           "masking_queries": cfg.masking_queries},
        "versions": _versions(cfg),
        "resumed": resumed,
        "seconds": round(seconds, 3),
    }
