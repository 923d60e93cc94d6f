"""Evaluating a run folder (``erat eval``, ``erat energy``): the run's model, read once, its
test data (checked to be the data it was trained beside; your own data is re-read as the
run's ``model.pt`` records it), the resumable state of an interrupted evaluation in the run
folder, and the lines printed. A model from outside erat (``--model``, no run folder) is
read by :mod:`erat.external`. The evaluation itself is the library on tensors
(:func:`erat.evaluate.evaluate`, :func:`erat.measure.energy_report`).

Example::

    result = evaluate_run(Path("runs/fm-er"), EvalConfig.build("pgd", eps=[1.5]), n=500,
                          data_dir=None, device="cpu")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from erat import fields
from erat.attacks import read_key, title, upper_bound
from erat.datasets import own_scheme, recorded_test_set
from erat.distributed import resolve_device
from erat.energy import check_settings
from erat.errors import UserError
from erat.evaluate import EvalConfig, evaluate
from erat.external import ExternalOptions, open_external, state_path
from erat.inputs import first_n
from erat.measure import energy_report
from erat.models.factory import is_factory, source_sha256
from erat.rundir import RunDir, check_exists, check_output_file, open_model
from erat.threat import Norm, ball_name, check_radius_fits, norm_name, radius_name

NO_MODEL = ("give a run folder (or model.pt), or a model from outside erat with --model "
            "MODULE:FACTORY --weights FILE --dataset DATA")


class RunInputs(NamedTuple):
    """What an evaluation of a run reads: its model (eval mode), metadata, the first ``n``
    test examples, the test set's size, the model file's SHA-256, what the result records
    about the model and data, and where the resumable state goes (None: nowhere)."""

    model: nn.Module
    meta: dict[str, Any]
    x: Tensor
    y: Tensor
    n_total: int
    sha256: str | None
    record: dict[str, Any]
    state: Callable[[str], Path | None]


def open_run(path: Path | None, external: ExternalOptions | None, *, n: int | None,
           data_dir: str | None, device: torch.device, seed: int = 0) -> RunInputs:
    """A run folder (or model file) or, with ``--model``, a model from outside erat (built
    from ``seed`` when it comes without weights)."""
    given = external.given() if external is not None else []
    if path is not None and given:
        raise UserError(f"{', '.join(given)}: for a model from outside erat, and a run folder "
                        f"({path}) records its own model and data; give one or the other")
    if path is not None:
        return run_inputs(path, n=n, data_dir=data_dir, device=device)
    if external is None or external.model is None:
        raise UserError(NO_MODEL)
    got = open_external(external, n=n, data_dir=data_dir, device=device, seed=seed)
    meta = {"dataset": external.dataset, "method": None}
    return RunInputs(got.model, meta, got.x, got.y, got.n_total, got.record["model_sha256"],
                     got.record, lambda name: state_path(got, name))


def run_inputs(path: Path, *, n: int | None, data_dir: str | None, device: torch.device
               ) -> RunInputs:
    """The model of a run folder (or model file), read once, and the first ``n`` test
    examples of its dataset (from the run's own ``data_dir`` unless given; for your own
    data, ``data_dir`` is where its folder or file is now). A test set that differs from the
    one recorded at training (another dataset in ``data_dir``) is refused."""
    opened = open_model(path, device)
    run = RunDir(opened.path.parent)
    dataset = opened.meta["dataset"]
    moved_to = data_dir if own_scheme(dataset) else None  # (your own data: where it is now)
    if data_dir is None:
        data_dir = run.read_config(missing={}).get("data_dir")
    x, y = recorded_test_set(opened.meta, data_dir, moved_to, model=path)
    total = len(x)
    x, y = first_n(x, y, n)
    record = {"checkpoint_sha256": opened.sha256, "run": str(path), "dataset": dataset,
              "method": opened.meta["method"]}
    if is_factory(spec := str(opened.meta.get("model"))):  # (your network's code: its file)
        record["code_sha256"] = source_sha256(spec)
    if opened.meta.get("data"):
        record["data"] = opened.meta["data"]
    if moved_to is not None:  # (your own data, read where --data-dir says it is now)
        record["data_read_from"] = str(Path(moved_to).resolve())
    state = (lambda name: None) if Path(path).is_file() else RunDir(path).state_path
    return RunInputs(opened.model, opened.meta, x, y, total, opened.sha256, record, state)


def evaluate_run(path: Path | None, cfg: EvalConfig, *, n: int | None, data_dir: str | None,
                 device: str, fresh: bool = False, json_path: Path | None = None,
                 external: ExternalOptions | None = None, fast: bool = True) -> dict:
    """``erat eval``: :func:`~erat.evaluate.evaluate` a run folder (or model file) on its
    test set, its resumable state in the run folder (or a cache folder when read-only), or a
    model from outside erat (``external``); ``json_path`` is checked for writing before any
    attack work. With ``fast``, a model on a GPU is attacked as CUDA graphs."""
    if json_path is not None:
        check_output_file(json_path, "--json", own=RunDir.EVAL, source=path)
    got = open_run(path, external, n=n, data_dir=data_dir, device=resolve_device(device),
                 seed=cfg.seed)
    for eps in cfg.eps:
        check_radius_fits(eps, cfg.norm, tuple(got.x.shape[1:]))
    state = got.state(f"eval-{cfg.labels[-1]}-{cfg.norm}")
    folder = RunDir(path) if path is not None and state is not None \
        and state.parent == Path(path) else None
    record = {**got.record, **_trained_record(path)}  # (format_result notes another norm)
    with folder.lock() if folder is not None else nullcontext():  # (one writer of its state)
        if state is not None and fresh:
            state.unlink(missing_ok=True)
        return evaluate(got.model, got.x, got.y, cfg, n_total=got.n_total, progress=True,
                        state_path=state, extra_info=record,
                        fast=fast and any(p.is_cuda for p in got.model.parameters())
                        and not scripted(got.model))


def chance_note(acc: float | None, classes: int, n: int, what: str) -> list[str]:
    """A note when clean accuracy on ``n`` images is at chance level (1 in ``classes``, or
    within 3 standard deviations of ``n`` guesses above it): ``what`` of a model that does
    not classify says nothing of its robustness."""
    p = 1 / classes if classes >= 2 else None
    if not p or acc is None or acc > p + 3 * math.sqrt(p * (1 - p) / max(n, 1)):
        return []
    return [f"note: clean accuracy is at chance level (1 in {classes}): {what} of a model that "
            "does not classify says nothing of its robustness (its weights? its input range "
            "or normalisation, --input-range, --normalize? its data's class order?)"]


def scripted(model: nn.Module) -> bool:
    """Whether a TorchScript module is part of ``model`` (an outside model's file, held in
    erat's ``Sequential(normalize, net)``): such a model is attacked eager, not captured."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def default_threat(path: Path | None, norm: str | None, eps: list[float] | None
                   ) -> tuple[str, list[float]]:
    """The norm and radii of an evaluation where the command line names none: the run's
    training norm (l2 for a model from outside erat); in l2 the radii 0.5 and 1.0, in l-inf
    the run's training radius (an l-inf run needs no l2 radius, and the l2 defaults are none
    of its)."""
    trained = _trained_threat(path)
    norm = norm or (trained[0] if trained else "l2")
    if eps is None:
        if norm == "l2":
            eps = list(EvalConfig().eps)
        elif trained is not None and trained[0] == "linf" and trained[1]:
            eps = [trained[1]]
        else:
            raise UserError("--norm linf needs --eps (the l2 defaults 0.5,1.0 are no l-inf "
                            "radii), e.g. --eps 8/255")
    return norm, eps


def _trained_threat(path: Path | None) -> tuple[str, float] | None:
    """``(norm, eps)`` of the method a run folder (or its model.pt) was trained with, from
    its ``config.yaml`` (:func:`erat.methods.trained_ball`); None without one."""
    from erat.methods import trained_ball

    config = _config(path)
    return None if config is None else trained_ball(config)


def _trained_record(path: Path | None) -> dict[str, Any]:
    """``{"trained": ...}``: the run's training ball and, with ``--labels``, its number of
    labels and whether its method read the unlabeled rest (``semi``), for the result's
    ``threat`` (none for a model from outside erat)."""
    from erat.methods import ball, trained_method

    config = _config(path) or {}  # (read once)
    method = trained_method(config) if config else None
    norm, eps = ball(method)
    out = {"norm": norm, "eps": eps} if eps is not None else {}
    if config.get("labels"):
        out |= {"labels": config["labels"],
                "semi": method.uses_unlabeled if method is not None else None}
    return {"trained": out} if out else {}


def _config(path: Path | None) -> dict[str, Any] | None:
    """The ``config.yaml`` of a run folder (or of its model.pt's folder); None without one."""
    if path is None:
        return None
    run = RunDir(Path(path).parent if Path(path).is_file() else path)
    return run.read_config(missing=None)


def format_result(result: dict[str, Any]) -> str:
    """The lines ``erat eval`` prints: examples, clean and robust accuracies, failed checks
    and notes."""
    threat = result["threat"]
    lines = [describe_data(threat)] if threat.get("data") or threat.get("model_kind") else []
    how = f"worst case {threat['worst_case']}" if threat.get("worst_case") else None
    if how and "pgd" in threat.get("attacks", []):
        how += f"; PGD of {threat.get('steps')} steps"
    trained = threat.get("trained") or {}
    other = trained.get("norm") not in (None, threat.get("norm"))  # (said, not refused)
    lines += [
        f"examples: {threat['n']}"
        + (f" ({threat['subset_note']})" if threat.get("subset") else ""),
        *([how] if how else []),
        *([f"note: the run was trained in {ball_name(trained['norm'], trained['eps'])}, "
           f"and is evaluated in {norm_name(threat['norm'])} (--norm)"] if other else []),
        *([f"trained semi-supervised on {trained['labels']} labels" if trained.get("semi")
           is not False else f"trained on {trained['labels']} labels alone (its method "
           "reads no unlabeled data)"] if trained.get("labels") else []),
        *(["resumed: the saved per-example results of an earlier eval of these settings, "
           "data and weights were used (--fresh starts over)"] if result.get("resumed")
          else []),
        f"{'clean':<24} {result['clean_acc']:.4f}",
        *chance_note(result["clean_acc"], threat.get("classes") or 0, threat.get("n") or 0,
                     "the robust accuracy"),
    ]
    bounds = upper_bound(threat.get("attacks", []))  # (else mark the stages before it)
    for key, acc in result["robust_acc"].items():
        label, norm, eps = read_key(key) or (key, None, None)
        bound = f"  ({title(label)} alone: an upper bound)" \
            if not bounds and upper_bound([label]) else ""
        levels = f"  (eps {radius_name(norm, eps)})" \
            if norm and radius_name(norm, eps) != eps else ""
        lines.append(f"{key:<24} {acc:.4f}{levels}{bound}")
    if result["robust_acc"] and bounds:
        lines.append("(upper bounds of robust accuracy: a stronger attack may find more; "
                     "--attack all adds AutoAttack)")
    skipped = (result.get("check_settings") or {}).get("sanity_n") == 0
    lines.append(f"sanity checks failed: {result.get('checks_failed', 0)} of "
                 f"{len(result.get('checks', []))}" + (" (--no-checks: the checks that cost "
                                                       "attack work did not run)" if skipped
                                                       else ""))
    for c in result.get("checks", []):
        if not c["passed"]:
            mark = "note" if c.get("severity") == "note" else "!"
            lines.append(f"  {mark} {c['name']}: {c['detail']}")
    return "\n".join(lines)


def energy_ball(path: Path | None, norm: str | None, eps: float | None) -> tuple[str, float]:
    """The ball of ``erat energy`` where the command line leaves it out: the run's training
    norm, and its training radius when that norm is the one measured."""
    trained = _trained_threat(path)
    norm = norm or (trained[0] if trained else "l2")
    if eps is not None:
        return norm, eps
    if trained is None:
        why = ("a model from outside erat has no training radius" if path is None else
               f"{path} was trained without a radius" if _config(path) else
               f"{path} has no config.yaml beside it to give its training radius")
        raise UserError(f"--eps is needed, e.g. --eps 0.5: {why}")
    if trained[0] != norm:
        raise UserError(f"--eps is needed: the run trained in {ball_name(*trained)}, not in "
                        f"{norm_name(norm)}")
    return norm, trained[1]


def energy_run(path: Path | None, *, eps: float | None, T: int, M: int, S: int,
               n: int | None, data_dir: str | None, batch_size: int, seed: int, device: str,
               json_path: Path | None = None, norm: Norm | None = None,
               external: ExternalOptions | None = None) -> dict:
    """``erat energy``: :func:`~erat.measure.energy_report` of a run folder (or model file),
    or of a model from outside erat (``external``), on its test set, in the ball given or
    :func:`energy_ball`; every setting and ``json_path`` is checked before any work."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if json_path is not None:
        check_output_file(json_path, "--json", own=RunDir.ENERGY, source=path)
    if path is None and (external is None or external.model is None):
        raise UserError(NO_MODEL)  # (said before the radius the model would give)
    if path is not None:
        check_exists(path)  # (said before the radius its config would give)
    given = eps
    norm, eps = energy_ball(path, norm, eps)
    if eps == 0:
        raise UserError("--eps must be > 0: the energy in a ball of radius 0 is 0")
    try:
        check_settings(eps, T, M, S, "max", norm)
    except UserError as err:  # (named as the flags: --T, --eps)
        raise fields.flagged(err) from None
    got = open_run(path, external, n=n, data_dir=data_dir, device=resolve_device(device),
                 seed=seed)
    check_radius_fits(eps, norm, tuple(got.x.shape[1:]))
    result = energy_report(got.model, got.x, got.y, eps=eps, T=T, M=M, S=S,
                           batch_size=batch_size, seed=seed, norm=norm)
    result["settings"].update({"n_total": got.n_total, "checkpoint_sha256": got.sha256,
                               "dataset": got.meta["dataset"], "trained_ball": given is None})
    if "model_kind" in got.record:
        result["settings"]["model"] = got.record
    return result


def describe_data(threat: dict[str, Any]) -> str:
    """The line that says which outside model and which of your own data were evaluated."""
    parts = []
    if threat.get("model_kind"):
        parts.append(f"model: {threat['model']} ({threat['model_kind']}"
                     + (f", {threat['model_file']} sha256 {threat['model_sha256'][:12]}"
                        if threat.get("model_file") else ", no weights file") + ")")
    d = threat.get("data")
    if d:
        moved = f", read from {threat['data_read_from']}" if threat.get("data_read_from") else ""
        parts.append(f"data: {threat['dataset']} test split ({d.get('test')}{moved}), "
                     f"{d.get('layout')}, {len(d.get('classes', []))} classes")
    return "; ".join(parts)


def format_report(result: dict) -> str:
    """The lines ``erat energy`` prints: the examples measured (of how many), the ball and the
    estimate's settings, then the figures."""
    keys = ("energy_mean", "energy_median", "at_term_mean", "virtual_energy_mean",
            "vat_term_mean", "certified_frac")  # (each lower bound after its energy)
    s = result.get("settings") or {}
    total = s.get("n_total")
    eps = s.get("eps")
    ball = (f"ball: {norm_name(str(s.get('norm')))} radius "
            f"{f'{eps:g}' if isinstance(eps, int | float) else eps}"
            + (" (the run's training ball)" if s.get("trained_ball") else "")
            + f", T {s.get('T')}, M {s.get('M')}, S {s.get('S')}")
    chance = chance_note(result.get("clean_acc"), result.get("classes") or 0, result["n"],
                         "the energy")
    first = [f"{k:<22} {result[k]:.4f}" for k in ("clean_acc", "loss_mean") if k in result]
    return "\n".join([f"examples: {result['n']}" + (f" of {total}" if total else ""), ball,
                      *first, *(f"{k:<22} {result[k]:.4f}" for k in keys), *chance,
                      result["certificate_note"]])
