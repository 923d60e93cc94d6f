"""Which examples each update trains on: index batches of one epoch, each set cycling
(reshuffled each pass). An epoch is a pass over the larger of the labeled and unlabeled
sets, whether or not the method reads the unlabeled one, so that a labels-only baseline
makes as many updates per epoch as the semi-supervised runs it is compared with."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from erat.fit.options import FitOptions


class EpochSampler:
    """Index batches of one epoch: labeled batches, and unlabeled ones when the method
    reads them (``uses_unlabeled``); ``n_unlabeled`` sets the epoch's length either way."""

    def __init__(self, options: FitOptions, n_labeled: int, n_unlabeled: int,
                 uses_unlabeled: bool = True) -> None:
        self.options, self.n_labeled, self.n_unlabeled = options, n_labeled, n_unlabeled
        self.uses_unlabeled = uses_unlabeled and n_unlabeled > 0
        self.labeled_batch = min(options.batch_size, n_labeled)
        self.unlabeled_batch = options.unlabeled_batch_size or options.batch_size
        if n_unlabeled:  # (as the labeled one: at most the set; its cost is counted so)
            self.unlabeled_batch = min(self.unlabeled_batch, n_unlabeled)
        passes = max(n_labeled // self.labeled_batch, n_unlabeled // self.unlabeled_batch)
        self.updates = options.epoch_updates or max(passes, 1)  # drop a partial batch

    def batches(self, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor | None]]:
        labeled = _cycle(self.n_labeled, self.labeled_batch, gen)
        unlabeled = _cycle(self.n_unlabeled, self.unlabeled_batch, gen) \
            if self.uses_unlabeled else None
        for _ in range(self.updates):
            yield next(labeled), (next(unlabeled) if unlabeled else None)


def _cycle(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of a fresh permutation per pass; a pass drops its last partial batch."""
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen, device=gen.device)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]
