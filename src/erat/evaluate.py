"""Honest robustness evaluation: clean accuracy, attacks worst case per example, sanity checks.

Threat model: inputs in pixel space ``[0, 1]`` (normalisation lives inside the model), an
l2 or l-inf ball of radius ``eps`` in that space, intersected with the box. An example counts
as robust at ``eps`` only if it is classified correctly on the clean pass AND at the end point
of every attack run against it (Croce & Hein 2020, AutoAttack, arXiv 2003.01690; the
RobustBench protocol, arXiv 2010.09670). Attacks only ever run on examples that are still
robust, so later attacks add to earlier ones:

- ``pgd``: :func:`erat.perturb.pgd` on the cross-entropy (the one PGD of the package), run
  ``restarts`` times, each restart on the survivors of the previous ones;
- ``autoattack``: pyautoattack's standard version (APGD-CE, APGD-T, FAB-T, Square);
- ``square``: pyautoattack's Square attack alone (black-box, ``square_queries`` queries);
- ``all``: ``pgd`` first, then ``autoattack`` on its survivors.

The whole evaluation runs in eval mode (:func:`erat.perturb.search_mode`; the model's mode
is restored afterwards) with the random number generators forked: every (attack, eps, batch)
is seeded from ``seed``, so a resumed run gives the same numbers as an uninterrupted one.

Sanity checks (RobustBench / auto-attack ``checks.py``), each a ``{name, passed, detail}``
entry and a :class:`EvaluationWarning` when it fails; their cost is bounded by
``sanity_n`` examples (default 100), small next to the main attack:

1. ``monotone_in_eps``: robust accuracy never rises with the radius;
2. ``robust_le_clean``: robust accuracy never exceeds clean accuracy;
3. ``large_radius``: PGD at a radius that contains the grey image from every input
   (l-inf 0.5, l2 ``0.5 * sqrt(d)``) leaves at most 5% accuracy;
4. ``autoattack_vs_pgd`` (``all`` only): AutoAttack removes at most 2 points beyond PGD;
5. ``square_vs_whitebox`` (``masking_check``): Square with ``masking_queries`` queries at the
   largest radius fools at most 2% more of the subset than the white-box attacks did;
6. ``input_gradients``: at most 1% of clean points have an all-zero or non-finite gradient;
7. ``eval_mode``: the model was handed over in eval mode (it is evaluated in eval mode anyway).

Example::

    res = evaluate(model, x_test, y_test, attack="all", norm="l2", eps=[0.5, 1.0, 2.0])
    print(res["clean_acc"], res["robust_acc"]["all-l2-eps1"], res["checks_failed"])
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from erat import losses, perturb
from erat.threat import NORMS, Threat

ATTACKS = ("pgd", "autoattack", "square", "all")
_STAGES = {"pgd": ("pgd",), "autoattack": ("autoattack",), "square": ("square",),
           "all": ("pgd", "all")}
_STAGE_DESCRIPTION = {
    "pgd": "PGD on cross-entropy ({cfg.restarts} restart(s), each on the survivors)",
    "autoattack": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)",
    "all": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) on the PGD survivors",
    "square": "Square ({cfg.square_queries} queries, black-box)",
}
_AA_NORM = {"l2": "L2", "linf": "Linf"}
_STATE_VERSION = 1

LARGE_RADIUS_MAX_ACC = 0.05
WEAK_PGD_TOL = 0.02
MASKING_TOL = 0.02
ZERO_GRAD_MAX_FRAC = 0.01

RobustFn = Callable[[Tensor, int], Tensor]  # (example indices [k], seed) -> robust flags [k]


class EvaluationWarning(UserWarning):
    """A sanity check of :func:`evaluate` failed: the robustness figures may be too high."""


def robust_key(attack: str, norm: str, eps: float) -> str:
    """Key of a robust accuracy in the result, e.g. ``robust_key("pgd", "l2", 1.5)`` ->
    ``"pgd-l2-eps1.5"``."""
    return f"{attack}-{norm}-eps{eps:g}"


def large_radius(norm: str, x: Tensor) -> float:
    """A radius whose ball around every ``x`` in ``[0,1]^d`` contains the grey image 0.5:
    accuracy there should be (almost) zero."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())


@dataclass(frozen=True)
class _Config:
    attack: str
    norm: str
    eps: tuple[float, ...]
    steps: int
    step_size: float | None
    restarts: int
    batch_size: int
    seed: int
    sanity_n: int
    masking_check: bool
    masking_queries: int
    square_queries: int

    def step(self, eps: float) -> float:
        return 2.5 * eps / max(self.steps, 1) if self.step_size is None else self.step_size

    @property
    def uses_pyautoattack(self) -> bool:
        return self.attack != "pgd" or (self.masking_check and self.sanity_n > 0)


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "pgd",
    norm: str = "l2",
    eps: Sequence[float] = (0.5, 1.0),
    steps: int = 50,
    step_size: float | None = None,
    restarts: int = 1,
    batch_size: int = 500,
    seed: int = 0,
    n_total: int | None = None,
    progress: bool = False,
    state_path: Path | None = None,
    sanity_n: int = 100,
    masking_check: bool = True,
    masking_queries: int = 500,
    square_queries: int = 5000,
    checks: bool = True,
    extra_info: dict | None = None,
) -> dict:
    """Clean and robust accuracy of ``model`` on ``x`` ``[N, C, H, W]`` in ``[0, 1]`` with
    labels ``y`` ``[N]``, worst case per example, plus the threat model and sanity checks.

    ``step_size=None`` means ``2.5 * eps / steps`` per radius. ``n_total`` is the size of the
    full test set when ``x`` is a subset (recorded in ``threat``). ``state_path``: per-example
    flags are saved there after every batch and reused when the settings, data and weights
    match. ``checks=False`` (or ``sanity_n=0``) skips the checks that cost attack work (3, 5,
    6); the free ones always run. ``extra_info`` (e.g.
    ``{"checkpoint_sha256": ...}``) is merged into ``threat``. Returns a JSON-ready dict.
    """
    cfg = _config(attack, norm, eps, steps, step_size, restarts, batch_size, seed,
                  sanity_n if checks else 0, masking_check, masking_queries, square_queries)
    _validate_data(x, y, n_total)
    clash = set(extra_info or {}) & set(_threat(cfg, len(y), n_total))
    if clash:
        raise ValueError(f"extra_info may not override threat keys: {sorted(clash)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = any(m.training for m in model.modules())
    start = time.perf_counter()
    attacked = _channels_last_copy(model) if x.dim() == 4 else model
    with perturb.search_mode(attacked), torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        state = _State(state_path, _settings(cfg, model, x, y) if state_path else {})
        runner = _Runner(attacked, x.to(device), y.to(device), cfg, state, progress)
        flags = runner.run_attacks()
        results = runner.run_checks(flags, was_training)
    return _result(cfg, flags, results, n_total, extra_info, state.resumed,
                   time.perf_counter() - start)


def _channels_last_copy(model: nn.Module) -> nn.Module:
    """A channels-last copy of a convolutional model (the caller's model is left as it is).

    Same function, faster attacks: on this project's 2-core CPU, max-pooling in the default
    layout took 55% of a Square attack's time; the small CNN's forward pass is 2.9x faster
    and its forward-backward 1.2x faster in channels-last (batch 300, one thread).
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    try:
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    except Exception:  # (a model that cannot be copied is attacked as it is)
        return model


def _config(attack, norm, eps, steps, step_size, restarts, batch_size, seed, sanity_n,
            masking_check, masking_queries, square_queries) -> _Config:
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    eps_list = (float(eps),) if isinstance(eps, int | float) else tuple(float(e) for e in eps)
    if not eps_list or any(not math.isfinite(e) or e < 0 for e in eps_list):
        raise ValueError(f"eps must be a non-empty list of finite numbers >= 0, got {eps}")
    if steps < 0 or restarts < 1 or batch_size < 1 or sanity_n < 0:
        raise ValueError("need steps >= 0, restarts >= 1, batch_size >= 1 and sanity_n >= 0")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0 or None, got {step_size}")
    return _Config(attack, norm, eps_list, int(steps), step_size, int(restarts),
                   int(batch_size), int(seed), int(sanity_n), bool(masking_check),
                   int(masking_queries), int(square_queries))


def _validate_data(x: Tensor, y: Tensor, n_total: int | None) -> None:
    if not x.is_floating_point() or x.dim() < 2 or y.shape != (x.shape[0],) or len(y) == 0:
        raise ValueError(f"need float x [N, ...] and labels y [N] with N > 0, got "
                         f"x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)}")
    lo, hi = x.min().item(), x.max().item()
    if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
        raise ValueError(f"x must lie in [0, 1] (pixel space; normalise inside the model), "
                         f"got values in [{lo:.4g}, {hi:.4g}]")
    if n_total is not None and n_total < len(y):
        raise ValueError(f"n_total ({n_total}) is smaller than the {len(y)} examples given")


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _fingerprint(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _settings(cfg: _Config, model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """What a saved state must match to be reused: the config, the data and the weights."""
    raw = {"version": _STATE_VERSION, **asdict(cfg), "n": len(y),
           "data": _fingerprint([x, y]), "weights": _fingerprint(list(model.state_dict().values()))}
    return json.loads(json.dumps(raw))  # tuples -> lists, as they come back from disk


class _State:
    """Per-example robust flags and batches done, per stage key; saved atomically."""

    def __init__(self, path: Path | None, settings: dict):
        self.path, self.settings, self.resumed = path, settings, False
        self.flags: dict[str, Tensor] = {}
        self.done: dict[str, int] = {}
        if path is None or not Path(path).exists():
            return
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as err:  # unreadable (truncated, foreign): start afresh
            warnings.warn(f"ignoring unreadable evaluation state {path}: {err}", stacklevel=3)
            return
        if isinstance(saved, dict) and saved.get("settings") == settings:
            self.flags, self.done, self.resumed = saved["flags"], saved["done"], True
        else:
            warnings.warn(f"evaluation state {path} has other settings; starting afresh",
                          stacklevel=3)

    def get(self, key: str, start: Tensor) -> tuple[Tensor, int]:
        if key in self.flags:
            return self.flags[key].clone(), self.done[key]
        return start.clone(), 0

    def put(self, key: str, flags: Tensor, done: int) -> None:
        self.flags[key], self.done[key] = flags.clone(), done
        if self.path is None:
            return
        path = Path(self.path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"settings": self.settings, "flags": self.flags, "done": self.done}, tmp)
        os.replace(tmp, path)


class _Runner:
    """Runs the stages (clean, attacks, check attacks) batch by batch on still-robust examples."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, cfg: _Config, state: _State,
                 progress: bool):
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.state, self.progress = state, progress

    def stage(self, key: str, start: Tensor, fn: RobustFn) -> Tensor:
        """Flags ``[len(start)]`` after running ``fn`` on the examples flagged in ``start``
        (indices ``0..len(start)-1``), one batch at a time, saving after each batch."""
        flags, done = self.state.get(key, start)
        bs = self.cfg.batch_size
        n_batches = math.ceil(len(flags) / bs)
        batches = range(done, n_batches)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=key, initial=done, total=n_batches, leave=False)
        for b in batches:
            idx = torch.arange(b * bs, min((b + 1) * bs, len(flags)))
            live = idx[flags[idx]]
            if len(live):
                seed = zlib.crc32(f"{self.cfg.seed}/{key}/{b}".encode())
                torch.manual_seed(seed)
                flags[live] = fn(live, seed).cpu()
            self.state.put(key, flags, b + 1)
        return flags

    def correct(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return (self.model(x).argmax(dim=1) == y).cpu()

    def clean_fn(self, idx: Tensor, seed: int) -> Tensor:
        dev = self.x.device
        return self.correct(self.x[idx.to(dev)], self.y[idx.to(dev)])

    def pgd_fn(self, eps: float, restarts: int) -> RobustFn:
        threat, step = Threat(self.cfg.norm, eps), self.cfg.step(eps)

        def fn(idx: Tensor, seed: int) -> Tensor:
            robust = torch.ones(len(idx), dtype=torch.bool)
            for _ in range(restarts):  # each restart only on the survivors of the previous
                pos = robust.nonzero().squeeze(1)
                if len(pos) == 0:
                    break
                sel = idx[pos].to(self.x.device)
                robust[pos] = self.pgd_restart(self.x[sel], self.y[sel], threat, step)
            return robust

        return fn

    def pgd_restart(self, x: Tensor, y: Tensor, threat: Threat, step: float,
                    check_every: int = 10) -> Tensor:
        """One PGD run (random start, ``cfg.steps`` steps), checked every ``check_every``
        steps: an example misclassified at any iterate is done (every iterate lies in the
        ball, so it is a valid adversarial example) and leaves the batch, which makes the
        later steps cheaper. The survivors follow exactly the plain PGD trajectory."""
        robust = torch.ones(len(y), dtype=torch.bool)
        live = torch.arange(len(y))
        x_adv, done = x, 0
        while done < self.cfg.steps and len(live):
            n = min(check_every, self.cfg.steps - done)
            xb, yb = x[live.to(x.device)], y[live.to(x.device)]
            x_adv = perturb.pgd(lambda z, yb=yb: losses.cross_entropy(self.model(z), yb), xb,
                                threat, steps=n, step_size=step, random_start=done == 0,
                                start=None if done == 0 else x_adv)
            ok = self.correct(x_adv, yb)
            robust[live[~ok]] = False
            x_adv, live, done = x_adv[ok.to(x_adv.device)], live[ok], done + n
        return robust

    def autoattack_fn(self, eps: float, attacks: list[str] | None, queries: int) -> RobustFn:
        """pyautoattack's standard version (``attacks=None``) or the listed attacks alone."""
        auto_attack = _import_autoattack()
        threat = Threat(self.cfg.norm, eps)

        def fn(idx: Tensor, seed: int) -> Tensor:
            dev = self.x.device
            xb, yb = self.x[idx.to(dev)], self.y[idx.to(dev)]
            aa = auto_attack(self.model, attacks=attacks, device=dev, eps=eps,
                             norm=_AA_NORM[self.cfg.norm], seed=seed,
                             version="standard" if attacks is None else "custom")
            aa.verbose = False
            if attacks is not None:
                aa.square.n_queries = queries
            x_adv, _ = aa.run_standard_evaluation(xb, yb, batch_size=len(idx))
            # Re-classify inside the declared ball: only points of the threat model count.
            return self.correct(threat.project(xb, x_adv.to(dev)), yb)

        return fn

    def attack_fn(self, name: str, eps: float) -> RobustFn:
        if eps == 0:  # the ball is the point itself: robust = clean, no attack work
            return lambda idx, seed: torch.ones(len(idx), dtype=torch.bool)
        if name == "pgd":
            return self.pgd_fn(eps, self.cfg.restarts)
        if name == "square":
            return self.autoattack_fn(eps, ["square"], self.cfg.square_queries)
        return self.autoattack_fn(eps, None, 0)  # "autoattack", and "all" after PGD

    def run_attacks(self) -> dict[str, Tensor]:
        """Per-example flags: ``"clean"`` and one entry per ``robust_key``."""
        clean = self.stage("clean", torch.ones(len(self.y), dtype=torch.bool), self.clean_fn)
        flags = {"clean": clean}
        for eps in self.cfg.eps:
            src = clean
            for name in _STAGES[self.cfg.attack]:
                src = self.stage(f"{name}@{eps!r}", src, self.attack_fn(name, eps))
                flags[robust_key(name, self.cfg.norm, eps)] = src
        return flags

    def run_checks(self, flags: dict[str, Tensor], was_training: bool) -> list[dict]:
        acc = {k: v.float().mean().item() for k, v in flags.items()}
        checks = [_check_monotone(self.cfg, acc), _check_le_clean(acc)]
        if self.cfg.attack == "all":
            checks.append(_check_weak_pgd(self.cfg, acc))
        if self.cfg.sanity_n > 0:
            checks += [self.check_gradients(), self.check_large_radius(flags["clean"])]
            if self.cfg.masking_check and self.cfg.attack != "square" and max(self.cfg.eps) > 0:
                checks.append(self.check_masking(flags))
        checks.append(_check("eval_mode", not was_training,
                             "model was in train mode when evaluate() was called; evaluated "
                             "in eval mode" if was_training else "model was in eval mode"))
        for c in checks:
            if not c["passed"]:
                warnings.warn(f"evaluation check {c['name']} failed: {c['detail']}",
                              EvaluationWarning, stacklevel=3)
        return checks

    def check_gradients(self) -> dict:
        """Fraction of the first ``sanity_n`` clean points with zero or non-finite gradients."""
        m, bs = min(self.cfg.sanity_n, len(self.y)), self.cfg.batch_size
        bad = 0
        for s in range(0, m, bs):
            xb, yb = self.x[s:min(s + bs, m)], self.y[s:min(s + bs, m)]
            loss, grad = perturb.input_grad(
                lambda z, yb=yb: losses.cross_entropy(self.model(z), yb), xb)
            g = grad.flatten(1)  # [b, d]
            bad += int(((g == 0).all(1) | ~g.isfinite().all(1) | ~loss.isfinite()).sum())
        frac = bad / m
        return _check("input_gradients", frac <= ZERO_GRAD_MAX_FRAC,
                      f"{bad} of {m} clean points have an all-zero or non-finite input gradient "
                      f"(allowed: {ZERO_GRAD_MAX_FRAC:.0%})")

    def check_large_radius(self, clean: Tensor) -> dict:
        """PGD at a radius containing the grey image should leave (almost) nothing robust."""
        m, eps = min(self.cfg.sanity_n, len(self.y)), large_radius(self.cfg.norm, self.x)
        flags = self.stage(f"check-large-radius@{eps!r}", clean[:m], self.pgd_fn(eps, 1))
        acc = flags.float().mean().item()
        return _check("large_radius", acc <= LARGE_RADIUS_MAX_ACC,
                      f"PGD at {self.cfg.norm} eps={eps:.4g} leaves {acc:.1%} of {m} examples "
                      f"correct (expected <= {LARGE_RADIUS_MAX_ACC:.0%})")

    def check_masking(self, flags: dict[str, Tensor]) -> dict:
        """Square (black-box) on the white-box survivors of the first ``sanity_n`` examples."""
        cfg, eps = self.cfg, max(self.cfg.eps)
        m = min(cfg.sanity_n, len(self.y))
        white = flags[robust_key(_STAGES[cfg.attack][-1], cfg.norm, eps)][:m]
        fn = self.autoattack_fn(eps, ["square"], cfg.masking_queries)
        both = self.stage(f"check-square@{eps!r}", white, fn)
        gap = (white.sum() - both.sum()).item() / m
        return _check("square_vs_whitebox", gap <= MASKING_TOL,
                      f"Square ({cfg.masking_queries} queries, eps={eps:g}) fooled {gap:.1%} of "
                      f"{m} examples that the white-box attacks left robust (allowed: "
                      f"{MASKING_TOL:.0%}; more suggests gradient masking)")


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _check_monotone(cfg: _Config, acc: dict[str, float]) -> dict:
    rises = []
    for name in _STAGES[cfg.attack]:
        curve = [(e, acc[robust_key(name, cfg.norm, e)]) for e in sorted(set(cfg.eps))]
        rises += [f"{name}: {a0:.4f} at eps={e0:g} < {a1:.4f} at eps={e1:g}"
                  for (e0, a0), (e1, a1) in zip(curve, curve[1:], strict=False) if a1 > a0]
    return _check("monotone_in_eps", not rises,
                  "; ".join(rises) if rises else "robust accuracy is non-increasing in eps")


def _check_le_clean(acc: dict[str, float]) -> dict:
    above = [k for k, v in acc.items() if v > acc["clean"]]
    return _check("robust_le_clean", not above,
                  f"above clean accuracy: {', '.join(above)}" if above
                  else "robust accuracy <= clean accuracy everywhere")


def _check_weak_pgd(cfg: _Config, acc: dict[str, float]) -> dict:
    gaps = {e: acc[robust_key("pgd", cfg.norm, e)] - acc[robust_key("all", cfg.norm, e)]
            for e in cfg.eps}
    worst = max(gaps, key=gaps.get)
    return _check("autoattack_vs_pgd", gaps[worst] <= WEAK_PGD_TOL,
                  f"AutoAttack lowers PGD's robust accuracy by up to {gaps[worst]:.1%} "
                  f"(eps={worst:g}; allowed: {WEAK_PGD_TOL:.0%}; more means PGD is weak)")


def _import_autoattack():
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        msg = "AutoAttack and Square need pyautoattack: pip install 'pyautoattack>=0.2,<0.3'"
        raise ImportError(msg) from err
    return AutoAttack


def _versions(cfg: _Config) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for pkg in ("erat",) + (("pyautoattack",) if cfg.uses_pyautoattack else ()):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _threat(cfg: _Config, n: int, n_total: int | None) -> dict:
    n_total = n if n_total is None else n_total
    threat = {
        "attack": cfg.attack, "norm": cfg.norm, "eps": list(cfg.eps), "steps": cfg.steps,
        "step_size": {f"{e:g}": cfg.step(e) for e in cfg.eps},
        "step_size_rule": "2.5*eps/steps" if cfg.step_size is None else "fixed",
        "restarts": cfg.restarts, "seed": cfg.seed, "batch_size": cfg.batch_size,
        "n": n, "n_total": n_total, "subset": n < n_total,
        "subset_note": f"first {n} of {n_total} test examples" if n < n_total else None,
        "input_space": "pixels in [0, 1]; eps measured there",
        "worst_case": "per example over: " + " then ".join(
            _STAGE_DESCRIPTION[name].format(cfg=cfg) for name in _STAGES[cfg.attack]),
    }
    if cfg.attack in ("autoattack", "all"):
        threat["autoattack_version"] = "standard"
    if cfg.attack == "square":
        threat["square_queries"] = cfg.square_queries
    return threat


def _result(cfg: _Config, flags: dict[str, Tensor], checks: list[dict], n_total: int | None,
            extra_info: dict | None, resumed: bool, seconds: float) -> dict:
    n = len(flags["clean"])
    robust = {k: v for k, v in flags.items() if k != "clean"}
    return {
        "clean_acc": flags["clean"].float().mean().item(),
        "robust_acc": {k: v.float().mean().item() for k, v in robust.items()},
        "robust_count": {k: int(v.sum()) for k, v in robust.items()},
        "threat": {**_threat(cfg, n, n_total), **(extra_info or {})},
        "checks": checks,
        "checks_failed": sum(not c["passed"] for c in checks),
        "check_settings": {"sanity_n": cfg.sanity_n, "masking_check": cfg.masking_check,
                           "masking_queries": cfg.masking_queries},
        "versions": _versions(cfg),
        "resumed": resumed,
        "seconds": round(seconds, 3),
    }
