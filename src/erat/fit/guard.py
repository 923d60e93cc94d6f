"""Warnings for training that goes wrong in a way the training loss does not show: the
predictions on unlabeled data collapse into one class, or the validation accuracy falls
well below its best (docs/results/semi-supervised-defaults.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

COLLAPSE_SHARE = 3.0  # predicted share of a class, against its largest share among the labels
VAL_DROP = 0.05  # validation accuracy below its best by this much


def guard(model: nn.Module, xu: Tensor | None, y: Tensor, row: dict[str, Any],
          history: list[dict[str, Any]]) -> str | None:
    """A warning, or None: the predictions on unlabeled data pile into one class (its share
    over ``COLLAPSE_SHARE`` times the largest class share among the labels), or the
    validation accuracy falls ``VAL_DROP`` below its best. Adds ``unlabeled_max_share`` to
    ``row`` when there are unlabeled data."""
    out = []
    if xu is not None:
        with torch.no_grad():
            was = model.training
            model.eval()
            pred = torch.cat([model(b).argmax(1) for b in xu[:2000].split(500)])
            model.train(was)
        share = torch.bincount(pred, minlength=int(y.max()) + 1).max().item() / len(pred)
        limit = COLLAPSE_SHARE * torch.bincount(y).max().item() / len(y)
        row["unlabeled_max_share"] = round(share, 4)
        if share > limit:
            out.append(f"{share:.0%} of the unlabeled predictions fall into one class (the "
                       f"labels: at most {limit / COLLAPSE_SHARE:.0%}); the unlabeled term may "
                       "be overpowering the labels")
    best = max((r["val_clean_acc"] for r in history if "val_clean_acc" in r), default=None)
    if best is not None and row.get("val_clean_acc", best) < best - VAL_DROP:
        out.append(f"validation accuracy fell to {row['val_clean_acc']:.3f} from its best "
                   f"{best:.3f}")
    return "; ".join(out) or None
