"""Warnings for training that goes wrong in a way the training loss does not show: the
predictions on unlabeled data collapse into one class, the validation accuracy falls well
below its best (docs/results/semi-supervised-defaults.md), or catastrophic overfitting
(Wong, Rice, Kolter 2020, arXiv 2001.03994): the validation PGD accuracy collapses within an
epoch while the FGSM accuracy stays high, the signature of a model that has learnt to defeat
the one-step attack it trains on rather than to be robust; or a model that never leaves
chance level (large-radius adversarial training from scratch can stall there)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

COLLAPSE_SHARE = 3.0  # predicted share of a class, against its largest share among the labels
VAL_DROP = 0.05  # validation accuracy below its best by this much
PGD_COLLAPSE = 0.5  # PGD accuracy down to this fraction of its best (and by VAL_DROP at least)
FGSM_HOLD = 0.05  # ... while FGSM accuracy stays within this of its best
STUCK_EPOCHS = 3  # validation clean accuracy at chance for this many epochs from the start
STUCK_MARGIN = 0.02  # "at chance": at most the largest class share plus this
WATCHED = 2000  # unlabeled images whose predictions are counted


def guard(model: nn.Module, xu: Tensor | None, y: Tensor, row: dict[str, Any],
          history: list[dict[str, Any]], perturbed: bool = True,
          unlabeled_term: bool = True) -> str | None:
    """A warning, or None: the predictions on unlabeled data ``xu`` (the first ``WATCHED``)
    pile into one class (its share over ``COLLAPSE_SHARE`` times the largest class share
    among the labels; recorded for any ``xu``, said for a method with an ``unlabeled_term``:
    ``fit`` given unlabeled data its method does not read records the share alone), the
    validation accuracy falls ``VAL_DROP`` below its best, or catastrophic overfitting
    (:func:`catastrophic`; only for a method that trains on perturbed inputs, ``perturbed``:
    ERM's robust accuracy falling as it trains is no failure of a search). Adds
    ``unlabeled_max_share`` and ``catastrophic_overfitting`` to ``row`` where they apply."""
    out = []
    chance = torch.bincount(y).max().item() / len(y)  # the largest class share of the labels
    if xu is not None:
        with torch.no_grad():
            was = model.training
            model.eval()
            pred = torch.cat([model(b).argmax(1) for b in xu[:WATCHED].split(500)])
            model.train(was)
        share = torch.bincount(pred, minlength=int(y.max()) + 1).max().item() / len(pred)
        row["unlabeled_max_share"] = round(share, 4)
        if unlabeled_term and share > COLLAPSE_SHARE * chance:
            out.append(f"{share:.0%} of the unlabeled predictions fall into one class (the "
                       f"labels: at most {chance:.0%}): the unlabeled term may be overpowering "
                       "the labels, or the model is not trained yet")
    best = max((r["val_clean_acc"] for r in history if "val_clean_acc" in r), default=None)
    if best is not None and row.get("val_clean_acc", best) < best - VAL_DROP:
        out.append(f"validation accuracy fell to {row['val_clean_acc']:.3f} from its best "
                   f"{best:.3f}")
    if stuck(row, history, chance):
        out.append(f"validation accuracy has stayed at chance ({row['val_clean_acc']:.3f}) "
                   f"for the first {STUCK_EPOCHS} epochs: the model is not learning (try a "
                   "smaller --lr, or a smaller radius)")
    co = catastrophic(row, history) if perturbed else None
    if co:
        row["catastrophic_overfitting"] = True
        out.append(co)
    return "; ".join(out) or None


def catastrophic(row: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """Catastrophic overfitting at this epoch: the validation PGD accuracy falls to at most
    ``PGD_COLLAPSE`` of its best so far (and by ``VAL_DROP`` at least) while the FGSM
    accuracy at the same radius stays within ``FGSM_HOLD`` of its best or above."""
    pgd, fgsm = row.get("val_robust_acc"), row.get("val_fgsm_acc")
    earlier = [r for r in history if "val_robust_acc" in r and "val_fgsm_acc" in r]
    if pgd is None or fgsm is None or not earlier:
        return None
    best_pgd = max(r["val_robust_acc"] for r in earlier)
    best_fgsm = max(r["val_fgsm_acc"] for r in earlier)
    if pgd <= PGD_COLLAPSE * best_pgd and best_pgd - pgd >= VAL_DROP \
            and fgsm >= best_fgsm - FGSM_HOLD:
        return (f"catastrophic overfitting: validation PGD accuracy fell to {pgd:.3f} from "
                f"its best {best_pgd:.3f} while FGSM accuracy is {fgsm:.3f} (Wong et al. "
                "2020); --select best-robust keeps the best epoch")
    return None


def stuck(row: dict[str, Any], history: list[dict[str, Any]], chance: float) -> bool:
    """Whether this epoch is the ``STUCK_EPOCHS``-th from the start whose validation clean
    accuracy is within ``STUCK_MARGIN`` of ``chance`` (said once, at that epoch)."""
    rows = [r for r in history if "val_clean_acc" in r] + [row]
    return "val_clean_acc" in row and len(rows) == STUCK_EPOCHS and all(
        r["val_clean_acc"] <= chance + STUCK_MARGIN for r in rows)


def overfitting_epoch(history: list[dict[str, Any]]) -> int | None:
    """The first epoch the guard flagged as catastrophic overfitting (None: none)."""
    return next((r["epoch"] for r in history if r.get("catastrophic_overfitting")), None)
