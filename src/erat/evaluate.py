"""Honest robustness evaluation: clean accuracy, attacks worst case per example, checks.

Threat model: inputs in pixel space ``[0, 1]`` (normalisation lives inside the model), an
l2 or l-inf ball of radius ``eps`` in that space, intersected with the box. An example counts
as robust at ``eps`` only if it is classified correctly on the clean pass AND at the end point
of every attack run against it (Croce & Hein 2020, AutoAttack, arXiv 2003.01690; the
RobustBench protocol, arXiv 2010.09670). Attacks (:mod:`erat.attacks`) run in the given
order, each only on the examples still robust, so later attacks add to earlier ones; the
sanity checks are :mod:`erat.checks`.

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
import dataclasses
import hashlib
import json
import math
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from erat import checks as sanity
from erat.attacks import attack_options, build_attack, resolve, robust_key
from erat.attacks.base import ATTACKS
from erat.checks import EvaluationWarning  # noqa: F401  (part of this module's interface)
from erat.errors import EnvironmentProblem, UserError
from erat.files import atomic_save
from erat.passes import supervised_search
from erat.threat import NORMS, Threat

_STATE_VERSION = 2


@dataclass(frozen=True)
class EvalConfig:
    """The settings of an evaluation. ``attacks`` are run in order (:func:`erat.attacks.
    resolve` gives their stage ``labels``); ``options`` holds the attacks' own settings by
    name (e.g. ``steps``, ``restarts``, ``square_queries``); ``sanity_n = 0`` skips the
    checks that cost attack work."""

    attacks: tuple[str, ...] = ("pgd",)
    labels: tuple[str, ...] = ("pgd",)
    norm: str = "l2"
    eps: tuple[float, ...] = (0.5, 1.0)
    batch_size: int = 500
    seed: int = 0
    sanity_n: int = 100
    masking_check: bool = True
    masking_queries: int = 500
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, attacks: str | Sequence[str] = "pgd", *, checks: bool = True,
              **settings: Any) -> EvalConfig:
        """From names as a user gives them: ``attacks`` (a name, a preset such as ``all``, a
        comma-separated list or a sequence), this class's fields, and attack options;
        ``checks=False`` sets ``sanity_n = 0``. Unknown names raise ``UserError``."""
        if "attack" in settings:  # the flag's and the suites' name for it
            attacks = settings.pop("attack")
        names, labels = resolve(attacks)
        own = {f.name for f in dataclasses.fields(cls)} - {"attacks", "labels", "options"}
        known_options = {o for a in ATTACKS for o in attack_options(a)}
        unknown = set(settings) - own - known_options
        if unknown:
            raise UserError(f"unknown evaluation setting(s): {', '.join(sorted(unknown))}")
        base = {k: v for k, v in settings.items() if k in own}
        options = {k: v for k, v in settings.items() if k in known_options}
        if not checks:
            base["sanity_n"] = 0
        cfg = cls(attacks=names, labels=labels, options=options, **base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        eps = (self.eps,) if isinstance(self.eps, int | float) else tuple(self.eps)
        if not eps or any(not isinstance(e, int | float) or not math.isfinite(e) or e < 0
                          for e in eps):
            raise UserError(f"eps must be a non-empty list of finite numbers >= 0, got "
                            f"{self.eps}")
        object.__setattr__(self, "eps", tuple(float(e) for e in eps))
        if self.batch_size < 1 or self.sanity_n < 0 or self.masking_queries < 1:
            raise UserError("need batch_size >= 1, sanity_n >= 0 and masking_queries >= 1")
        for name in self.attacks:  # options of the wrong type or range fail here
            build_attack(name, self.options)

    def attack(self, name: str) -> Any:
        return build_attack(name, self.options)


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
    **settings: Any,
) -> dict:
    """Clean and robust accuracy of ``model`` on ``x`` ``[N, C, H, W]`` in ``[0, 1]`` with
    labels ``y`` ``[N]``, worst case per example, plus the threat model and sanity checks.

    Settings come as ``config`` or as keywords for :meth:`EvalConfig.build`. ``n_total``:
    the size of the full test set when ``x`` is a subset (recorded in ``threat``).
    ``state_path``: per-example flags are saved there after every batch and reused when the
    settings, data and weights match. ``extra_info`` is merged into ``threat``. Returns a
    JSON-ready dict.
    """
    cfg = config if config is not None else EvalConfig.build(**settings)
    _validate_data(x, y, n_total)
    _check_installed(cfg)
    clash = set(extra_info or {}) & set(_threat(cfg, len(y), n_total))
    if clash:
        raise ValueError(f"extra_info may not override threat keys: {sorted(clash)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = any(m.training for m in model.modules())
    start = time.perf_counter()
    attacked = _channels_last_copy(model) if x.dim() == 4 else model
    cuda = [device] if device.type == "cuda" else []
    with supervised_search(attacked), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        state = _State(state_path, _settings(cfg, model, x, y) if state_path else {})
        stages = _Stages(attacked, x.to(device), y.to(device), cfg, state, progress)
        flags = stages.run_attacks()
        results = sanity.run_checks(stages.run, attacked, stages.x, stages.y, flags, cfg,
                                    was_training)
    return _result(cfg, flags, results, n_total, extra_info, state.resumed,
                   time.perf_counter() - start)


def _channels_last_copy(model: nn.Module) -> nn.Module:
    """A channels-last copy of a convolutional model (the caller's model is left as it is):
    the same function, and on CPUs max-pooling in the default layout took over half of a
    Square attack's time (docs/results.md, speed)."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    try:
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    except Exception:  # (a model that cannot be copied is attacked as it is)
        return model


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


def _fingerprint(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state (parameters and buffers)."""
    return _fingerprint(list(model.state_dict().values()))


def _settings(cfg: EvalConfig, model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """What a saved state must match to be reused: the config, the data and the weights."""
    raw = {"version": _STATE_VERSION, **dataclasses.asdict(cfg), "n": len(y),
           "data": _fingerprint([x, y]), "weights": weights_fingerprint(model)}
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
        if self.path is not None:
            atomic_save({"settings": self.settings, "flags": self.flags, "done": self.done},
                        Path(self.path))


class _Stages:
    """Runs stages (clean, attacks, check attacks) batch by batch on still-robust examples."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, state: _State,
                 progress: bool):
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.state, self.progress = state, progress

    def run(self, key: str, start: Tensor, attack: Any, threat: Threat | None = None
            ) -> Tensor:
        """Flags ``[len(start)]`` after ``attack`` (None: clean accuracy) on the examples
        flagged in ``start`` (indices ``0..len(start)-1``), one batch at a time, seeded per
        batch, saving after each batch."""
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
            if len(live) and (threat is None or threat.eps > 0):  # eps 0: robust = clean
                seed = zlib.crc32(f"{self.cfg.seed}/{key}/{b}".encode())
                torch.manual_seed(seed)
                xb, yb = self.x[live.to(self.x.device)], self.y[live.to(self.x.device)]
                flags[live] = (_correct(self.model, xb, yb) if attack is None
                               else attack(self.model, xb, yb, threat, seed).cpu())
            self.state.put(key, flags, b + 1)
        return flags

    def run_attacks(self) -> dict[str, Tensor]:
        """Per-example flags: ``"clean"`` and one entry per stage and radius."""
        clean = self.run("clean", torch.ones(len(self.y), dtype=torch.bool), None)
        flags = {"clean": clean}
        attacks = [self.cfg.attack(name) for name in self.cfg.attacks]
        for eps in self.cfg.eps:
            src = clean
            for attack, label in zip(attacks, self.cfg.labels, strict=True):
                src = self.run(f"{label}@{eps!r}", src, attack, Threat(self.cfg.norm, eps))
                flags[robust_key(label, self.cfg.norm, eps)] = src
        return flags


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).cpu()


def _required(cfg: EvalConfig) -> dict[str, tuple[str, str]]:
    """Packages the evaluation needs beyond torch: name -> (what needs it, pip requirement),
    from the attacks' ``requires``."""
    needed = {p: (f"--attack {name}", spec) for name in cfg.attacks
              for p, spec in getattr(ATTACKS[name], "requires", {}).items()}
    if cfg.sanity_n > 0 and cfg.masking_check:
        for p, spec in getattr(ATTACKS["square"], "requires", {}).items():
            needed.setdefault(p, ("the gradient-masking check (Square)", spec))
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


def _threat(cfg: EvalConfig, n: int, n_total: int | None) -> dict:
    n_total = n if n_total is None else n_total
    attacks = [cfg.attack(name) for name in cfg.attacks]
    threat = {
        "attack": cfg.labels[-1], "attacks": list(cfg.attacks), "norm": cfg.norm,
        "eps": list(cfg.eps), "seed": cfg.seed, "batch_size": cfg.batch_size,
        "n": n, "n_total": n_total, "subset": n < n_total,
        "subset_note": f"first {n} of {n_total} test examples" if n < n_total else None,
        "input_space": "pixels in [0, 1]; eps measured there",
        "worst_case": "per example over: " + " then ".join(
            getattr(a, "describe", lambda a=a: a.name)() for a in attacks),
    }
    for a in attacks:
        if hasattr(a, "threat_info"):
            threat.update(a.threat_info(cfg.eps))
    return threat


def _result(cfg: EvalConfig, flags: dict[str, Tensor], checks: list[dict],
            n_total: int | None, extra_info: dict | None, resumed: bool,
            seconds: float) -> dict:
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


def format_result(result: dict[str, Any]) -> str:
    """The lines ``erat eval`` prints: examples, clean and robust accuracies, failed checks."""
    threat = result["threat"]
    lines = [
        f"examples: {threat['n']}"
        + (f" ({threat['subset_note']})" if threat.get("subset") else ""),
        f"{'clean':<24} {result['clean_acc']:.4f}",
    ]
    lines += [f"{key:<24} {acc:.4f}" for key, acc in result["robust_acc"].items()]
    lines.append(f"sanity checks failed: {result.get('checks_failed', 0)}")
    lines += [f"  ! {c['name']}: {c['detail']}" for c in result.get("checks", [])
              if not c["passed"]]
    return "\n".join(lines)


def run_inputs(path: Path, *, n: int | None, data_dir: str | None, device: torch.device
               ) -> tuple[nn.Module, dict, Tensor, Tensor, int, str]:
    """For ``erat eval`` / ``erat energy``: the model of a run folder (or model file) in
    eval mode, its metadata, the first ``n`` test examples of its dataset (the run's own
    ``data_dir`` unless given), the test set's size and the weights' SHA-256."""
    from erat.datasets import load_dataset
    from erat.files import load_file, sha256
    from erat.rundir import RunDir, load_model, model_path

    file = model_path(path)
    model = load_model(file, device)
    config = RunDir(file.parent)
    meta = load_file(file)["meta"]
    if data_dir is None and (config / RunDir.CONFIG).exists():
        data_dir = config.read_config().get("data_dir")
    x, y = load_dataset(meta["dataset"], "test", data_dir).tensors
    total = len(x)
    if n is not None:
        if n < 1 or n > total:
            raise UserError(f"--n must be between 1 and {total} (the test set's size), got {n}")
        x, y = x[:n], y[:n]
    return model, meta, x, y, total, sha256(file)


def evaluate_run(path: Path, cfg: EvalConfig, *, n: int | None, data_dir: str | None,
                 device: str, fresh: bool = False, json_path: Path | None = None) -> dict:
    """``erat eval``: :func:`evaluate` a run folder (or model file) on its test set, its
    resumable state in the run folder (or a cache folder when read-only); ``json_path`` is
    checked for writing before any attack work."""
    from erat.distributed import resolve_device
    from erat.files import check_writable_file
    from erat.rundir import RunDir

    if json_path is not None:
        check_writable_file(json_path, "--json")
    model, meta, x, y, n_total, digest = run_inputs(path, n=n, data_dir=data_dir,
                                                    device=resolve_device(device))
    state = None if Path(path).is_file() else RunDir(path).state_path(
        f"eval-{cfg.labels[-1]}-{cfg.norm}")
    if state is not None and fresh:
        state.unlink(missing_ok=True)
    return evaluate(model, x, y, cfg, n_total=n_total, progress=True, state_path=state,
                    extra_info={"checkpoint_sha256": digest, "run": str(path),
                                "dataset": meta["dataset"], "method": meta["method"]})
