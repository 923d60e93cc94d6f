"""Index splits of a training set: balanced labeled subsets for semi-supervised learning
(Miyato et al. 2018's protocol) and the validation hold-out that model selection reads.

Example::

    val, rest = validation_split(y_train, 5000, seed=0)
    labeled, unlabeled = labeled_split(y_train, 100, seed=0, exclude=val)
"""

from __future__ import annotations

import torch
from torch import Tensor

from erat.datasets.registry import DataError


def balanced_split(y: Tensor, n_labels: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(labeled, unlabeled)`` with exactly ``n_labels`` labeled, balanced across the
    classes present in ``y`` (the standard protocol of Miyato et al. 2018, arXiv 1704.03976).

    When ``n_labels`` is not a multiple of the number of classes, the lowest class labels get
    one extra example each. Both index tensors are sorted, disjoint, and cover ``y``.
    """
    y = torch.as_tensor(y).reshape(-1).cpu()
    if not 0 <= n_labels <= len(y):
        raise DataError(f"cannot take {n_labels} of {len(y)} examples")
    classes, counts = torch.unique(y, return_counts=True)
    base, extra = divmod(n_labels, len(classes))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for i, (c, count) in enumerate(zip(classes.tolist(), counts.tolist(), strict=True)):
        quota = base + (i < extra)
        if quota > count:
            raise DataError(f"class {c} has {count} examples, fewer than the {quota} a "
                            "balanced split takes from each")
        idx = torch.nonzero(y == c).flatten()
        chosen.append(idx[torch.randperm(count, generator=gen)[:quota]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(chosen)] = True
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def most_balanced(y: Tensor) -> int:
    """The largest ``n`` that :func:`balanced_split` can take from ``y`` (a smaller ``n``
    never needs more of a class, so a bisection finds it)."""
    counts = torch.unique(torch.as_tensor(y).reshape(-1).cpu(), return_counts=True)[1].tolist()

    def fits(n: int) -> bool:
        base, extra = divmod(n, len(counts))
        return all(base + (i < extra) <= c for i, c in enumerate(counts))

    lo, hi = 0, sum(counts)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def validation_split(y: Tensor, n_val: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(val, train)``: ``n_val`` examples held out, balanced across classes and
    drawn with ``seed`` alone (not the training seed, so every run on a dataset holds out
    the same images); ``train`` is every other index. Both sorted, disjoint."""
    if not 0 < n_val < len(y):
        most = min(most_balanced(y), len(y) - 1)
        raise DataError(f"--val must be between 1 and {most} (the most a balanced hold-out "
                        f"of the {len(y)} training examples takes), got {n_val}")
    try:
        return balanced_split(y, n_val, seed)
    except DataError as err:
        raise DataError(f"--val {n_val}: {err}; hold out at most {most_balanced(y)}") from err


def labeled_split(y: Tensor, n_labels: int, seed: int, exclude: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Indices ``(labeled, unlabeled)`` of ``y``: ``n_labels`` balanced labels, the rest
    unlabeled; indices in ``exclude`` (a validation hold-out) are in neither."""
    y = torch.as_tensor(y).reshape(-1).cpu()
    if exclude is None or len(exclude) == 0:
        least = len(torch.unique(y))  # (one per class)
        if not 1 <= n_labels <= len(y):  # (fewer than the classes: said below)
            raise DataError(f"--labels must be between {least} (one per class) and "
                            f"{most_balanced(y)} (the most that balance the classes), "
                            f"got {n_labels}")
        _every_class_labeled(y, n_labels)
        try:
            return balanced_split(y, n_labels, seed)
        except DataError as err:
            raise DataError(f"--labels {n_labels}: {err}; give at most {most_balanced(y)}"
                            ) from err
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[exclude] = False
    pool = torch.nonzero(keep).flatten()
    least = len(torch.unique(y[pool]))
    if not 1 <= n_labels <= len(pool):
        raise DataError(f"--labels must be between {least} (one per class) and "
                        f"{most_balanced(y[pool])} (the most that balance the classes after "
                        f"--val), got {n_labels}")
    _every_class_labeled(y[pool], n_labels)
    try:
        labeled, unlabeled = balanced_split(y[pool], n_labels, seed)
    except DataError as err:
        raise DataError(f"--labels {n_labels}: {err}, after --val held out {len(exclude)} "
                        f"images; give at most {most_balanced(y[pool])}") from err
    return pool[labeled], pool[unlabeled]


def _every_class_labeled(y: Tensor, n_labels: int) -> None:
    """Refuse fewer labels than classes: a balanced split would leave some class unlabeled."""
    classes = len(torch.unique(y))
    if n_labels < classes:
        raise DataError(f"--labels {n_labels} is fewer than the {classes} classes: every "
                        f"class needs a label; give at least --labels {classes}")
