"""The training state a checkpoint holds (model, optimiser, schedule, scaler, epoch, RNG),
and the best validation epoch so far (``select="best-robust"``; robust overfitting, Rice et
al. 2020, arXiv 2002.11569)."""

from __future__ import annotations

from typing import Any

import torch

from erat.fit.options import FitOptions
from erat.rundir import RunDir, unwrap


class TrainState:
    """The training state that a checkpoint holds, and the best epoch so far."""

    def __init__(self, model, optimizer, scheduler, scaler) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, \
            scaler
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best: dict | None = None  # without a run folder, the best weights in memory

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best": {"score": self.best_score, "epoch": self.best_epoch},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def restore(self, saved: dict[str, Any] | None) -> int:
        """Load a checkpoint; the epoch it was written after (0 for none)."""
        if saved is None:
            return 0
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        best = saved.get("best") or {}
        self.best_score, self.best_epoch = best.get("score"), best.get("epoch")
        return int(saved["epoch"])

    def select(self, row: dict[str, Any], options: FitOptions, run_dir: RunDir | None) -> None:
        """Keep the weights of the best validation robust accuracy (the earliest on ties)."""
        score = row.get("val_robust_acc")
        if options.select != "best-robust" or score is None:
            return
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, row["epoch"]
            if run_dir is not None:
                run_dir.save_best(self.model, row["epoch"], score)
            else:
                self._best = {"epoch": row["epoch"], "state_dict": {
                    k: v.detach().cpu().clone()
                    for k, v in unwrap(self.model).state_dict().items()}}
        row["val_best_epoch"] = self.best_epoch

    def best_state(self, run_dir: RunDir | None) -> dict | None:
        return run_dir.load_best() if run_dir is not None else self._best
