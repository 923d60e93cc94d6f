"""Which examples each update trains on: index batches of one epoch, with the labeled
batches cycling (reshuffled each pass) when an unlabeled set sets the epoch's length."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from erat.fit.options import FitOptions


class EpochSampler:
    """Index batches of one epoch: the epoch's set, plus cycling labeled batches (semi-sup)."""

    def __init__(self, options: FitOptions, n_labeled: int, n_unlabeled: int) -> None:
        self.options, self.n_labeled, self.n_unlabeled = options, n_labeled, n_unlabeled
        self.labeled_batch = min(options.batch_size, n_labeled)
        self.unlabeled_batch = options.unlabeled_batch_size or options.batch_size
        size, batch = ((n_unlabeled, self.unlabeled_batch) if n_unlabeled
                       else (n_labeled, self.labeled_batch))
        self.updates = options.epoch_updates or max(size // batch, 1)  # drop a partial batch

    def batches(self, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor | None]]:
        labeled = _cycle(self.n_labeled, self.labeled_batch, gen)
        unlabeled = _cycle(self.n_unlabeled, self.unlabeled_batch, gen) if self.n_unlabeled \
            else None
        for _ in range(self.updates):
            yield next(labeled), (next(unlabeled) if unlabeled else None)


def _cycle(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of a fresh permutation per pass; a pass drops its last partial batch."""
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen, device=gen.device)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]
