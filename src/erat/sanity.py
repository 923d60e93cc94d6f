"""Sanity checks of a robustness evaluation (RobustBench / auto-attack ``checks.py``): each
a ``{name, passed, detail, severity}`` entry. A check of severity ``failure`` is evidence
that the figures are too high (gradient masking, a weak or broken attack) and warns with an
:class:`EvaluationWarning`; one of severity ``note`` reports what is expected of a sound
evaluation too (AutoAttack finding points that PGD missed: PGD is an upper bound). Their
attack work is bounded by ``sanity_n`` examples, small next to the main attacks:

1. ``monotone_in_eps``: robust accuracy never rises with the radius;
2. ``robust_le_clean``: robust accuracy never exceeds clean accuracy;
3. ``large_radius``: PGD at a radius that contains the grey image from every input
   (l-inf 0.5, l2 ``0.5 * sqrt(d)``) leaves at most 5% accuracy;
4. ``autoattack_vs_pgd`` (PGD, then AutoAttack; a note): how much AutoAttack removes after
   PGD, beyond 2 points said so;
5. ``square_vs_whitebox`` (``masking_check``): Square with ``masking_queries`` queries at the
   largest radius fools at most 2% more of the subset (and at least one example) than the
   white-box attacks did (a note that it did not run on images Square cannot attack: not
   square, or an l2 size its start does not tile);
6. ``input_gradients``: at most 1% of clean points have an all-zero or non-finite gradient;
7. ``eval_mode`` (a note): the model was handed over in eval mode (it is evaluated in eval
   mode anyway).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from erat.attacks import ATTACKS, attack_with, build_attack, robust_key
from erat.losses import supervised_loss
from erat.search import input_grad
from erat.stages import EvalConfig, Stages
from erat.threat import Threat

LARGE_RADIUS_MAX_ACC = 0.05
WEAK_PGD_TOL = 0.02
MASKING_TOL = 0.02
ZERO_GRAD_MAX_FRAC = 0.01

class EvaluationWarning(UserWarning):
    """A sanity check of an evaluation failed: the robustness figures may be too high."""


def check(name: str, passed: bool, detail: str, severity: str = "failure") -> dict:
    """A check's entry; ``severity`` is ``failure`` (counted in ``checks_failed``) or
    ``note``."""
    return {"name": name, "passed": bool(passed), "detail": detail, "severity": severity}


def failed(checks: list[dict]) -> list[dict]:
    """The checks that failed and count as failures (notes do not)."""
    return [c for c in checks if not c["passed"] and c.get("severity", "failure") == "failure"]


def large_radius(norm: str, x: Tensor) -> float:
    """A radius whose ball around every ``x`` in ``[0,1]^d`` contains the grey image 0.5:
    accuracy there should be (almost) zero."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def monotone(cfg: EvalConfig, acc: dict[str, float], carried: int = 0) -> dict:
    """Robust accuracy of each radius attacked on its own (``acc``) does not rise with the
    radius: an attack that finds less in a larger ball is failing. ``carried``: examples
    broken at a smaller radius only, counted as broken at the larger (the figures)."""
    rises = []
    for label in cfg.labels:
        curve = [(e, acc[robust_key(label, cfg.norm, e)]) for e in sorted(set(cfg.eps))]
        rises += [f"{label}: {a0:.4f} at eps={e0:g} < {a1:.4f} at eps={e1:g}"
                  for (e0, a0), (e1, a1) in zip(curve, curve[1:], strict=False) if a1 > a0]
    note = (f"; {carried} example(s) broken at a smaller radius only, counted broken at the "
            "larger" if carried else "")
    return check("monotone_in_eps", not rises,
                 ("; ".join(rises) if rises else "robust accuracy is non-increasing in eps")
                 + note)


def le_clean(acc: dict[str, float]) -> dict:
    above = [k for k, v in acc.items() if v > acc["clean"]]
    return check("robust_le_clean", not above,
                 f"above clean accuracy: {', '.join(above)}" if above
                 else "robust accuracy <= clean accuracy everywhere")


def weak_pgd(cfg: EvalConfig, acc: dict[str, float]) -> dict | None:
    """PGD first and the reference attack (AutoAttack) later in the list: how much the
    stronger attack adds."""
    reference = attack_with("reference")
    if cfg.attacks[0] != "pgd" or reference not in cfg.attacks[1:]:
        return None
    after = cfg.labels[cfg.attacks.index(reference)]
    gaps = {e: acc[robust_key("pgd", cfg.norm, e)] - acc[robust_key(after, cfg.norm, e)]
            for e in cfg.eps}
    worst = max(gaps, key=gaps.get)
    return check("autoattack_vs_pgd", gaps[worst] <= WEAK_PGD_TOL,
                 f"AutoAttack lowers PGD's robust accuracy by up to {100 * gaps[worst]:.1f} "
                 f"points (eps={worst:g}); PGD alone is an upper bound"
                 + (f", here {100 * gaps[worst]:.1f} points above the stronger attack"
                    if gaps[worst] > WEAK_PGD_TOL else ""), severity="note")


def gradients(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig) -> dict:
    """Fraction of the first ``sanity_n`` clean points with zero or non-finite gradients."""
    m, bs = min(cfg.sanity_n, len(y)), cfg.batch_size
    bad = 0
    for s in range(0, m, bs):
        xb, yb = x[s:min(s + bs, m)], y[s:min(s + bs, m)]
        loss, grad = input_grad(supervised_loss(model, yb), xb)
        g = grad.flatten(1)  # [b, d]
        bad += int(((g == 0).all(1) | ~g.isfinite().all(1) | ~loss.isfinite()).sum())
    frac = bad / m
    return check("input_gradients", frac <= ZERO_GRAD_MAX_FRAC,
                 f"{bad} of {m} clean points have an all-zero or non-finite input gradient "
                 f"(allowed: {ZERO_GRAD_MAX_FRAC:.0%})")


def radius(stages: Stages, clean: Tensor) -> dict:
    """PGD (one restart, its default step at this radius: a --step-size set for the radii
    evaluated is too short here) at a radius containing the grey image should leave (almost)
    nothing."""
    cfg = stages.cfg
    m, eps = min(cfg.sanity_n, len(clean)), large_radius(cfg.norm, stages.x)
    pgd = build_attack("pgd", {**cfg.options, "restarts": 1, "step_size": None})
    flags = stages.run(f"check-large-radius@{eps!r}", clean[:m], pgd, Threat(cfg.norm, eps))
    acc = flags.double().mean().item()  # (float32's 2/40 is above 0.05 and failed it)
    return check("large_radius", acc <= LARGE_RADIUS_MAX_ACC,
                 f"PGD at {cfg.norm} eps={eps:.4g} leaves {acc:.1%} of {m} examples "
                 f"correct (expected <= {LARGE_RADIUS_MAX_ACC:.0%})")


def masking(stages: Stages, flags: dict[str, Tensor]) -> dict:
    """The black-box attack (Square) on the white-box survivors of the first ``sanity_n``
    examples; None when no black-box attack is registered."""
    cfg, black_box = stages.cfg, attack_with("black-box")
    eps = max(cfg.eps)
    refuses = getattr(ATTACKS[black_box], "refuses", None)
    why = refuses(*stages.x.shape[-2:], cfg.norm) if refuses and stages.x.dim() == 4 else None
    if why:
        return check(f"{black_box}_vs_whitebox", False, f"not run: {black_box} cannot attack "
                     f"these images ({why}; resize them to have this check)", severity="note")
    m = min(cfg.sanity_n, len(flags["clean"]))
    white = flags[robust_key(cfg.labels[-1], cfg.norm, eps)][:m]
    queries = ATTACKS[black_box].queries_option  # its option that sets the query budget
    attack = build_attack(black_box, {queries: cfg.masking_queries})
    both = stages.run(f"check-{black_box}@{eps!r}", white, attack, Threat(cfg.norm, eps))
    fooled = int((white.sum() - both.sum()).item())
    allowed = masking_allowed(m)
    return check(f"{black_box}_vs_whitebox", fooled <= allowed,
                 f"{black_box} ({cfg.masking_queries} queries, eps={eps:g}) fooled {fooled} of "
                 f"{m} examples ({fooled / m:.1%}) that the white-box attacks left robust "
                 f"(allowed: at most {allowed}, {MASKING_TOL:.0%} of {m} but no fewer than "
                 "one; more suggests "
                 "gradient masking, or white-box attacks too weak for this model)" + (
                     "; the figures stay those of the attacks asked for (a check's attack "
                     "runs on a subset)" if fooled else ""))


def masking_allowed(m: int) -> int:
    """How many examples of a check subset of ``m`` the black-box attack may fool beyond the
    white-box attacks: ``MASKING_TOL`` of ``m`` and at least one (one image is no evidence
    at a small ``m``)."""
    return max(1, math.floor(MASKING_TOL * m))


def run_checks(stages: Stages, flags: dict[str, Tensor], was_training: bool) -> list[dict]:
    """Every check that applies to ``stages.cfg``, in order; warns for each failure."""
    cfg = stages.cfg
    acc = {k: v.float().mean().item() for k, v in flags.items()}
    alone = {k: v.float().mean().item() for k, v in stages.alone.items()}
    carried = 0  # (examples, each once: over every stage and radius)
    if stages.alone:
        carried = int(torch.stack([v & ~flags[k] for k, v in stages.alone.items()]).any(0).sum())
    checks = [monotone(cfg, alone, carried), le_clean(acc), weak_pgd(cfg, acc)]
    if cfg.sanity_n > 0:
        checks += [gradients(stages.model, stages.x, stages.y, cfg),
                   radius(stages, flags["clean"])]
        black_box = attack_with("black-box")
        if cfg.masking_check and black_box and black_box not in cfg.attacks \
                and max(cfg.eps) > 0:
            checks.append(masking(stages, flags))
    checks.append(check("eval_mode", not was_training,
                        "model was in train mode when evaluate() was called; evaluated in "
                        "eval mode" if was_training else "model was in eval mode",
                        severity="note"))
    checks = [c for c in checks if c is not None]
    for c in failed(checks):
        warnings.warn(f"evaluation check {c['name']} failed: {c['detail']}",
                      EvaluationWarning, stacklevel=4)
    return checks
