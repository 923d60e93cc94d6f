"""The training loop: ``fit(model, method, data, options, run_dir)`` trains any ``nn.Module``
with any :class:`~erat.methods.Method` on tensors; it knows no name of a dataset, model or
method (:func:`erat.train.train` looks the names up and calls it).

One epoch is a pass over the labeled training set (supervised), or over the unlabeled set
when there is one and the method reads it (semi-supervised; the labeled batches cycle,
reshuffled each cycle); ``epoch_updates`` overrides the length. ``budget`` (in ERM epochs,
below) sets the number of updates instead of ``epochs``.

Cost: every update adds ``method.cost(batch, model)`` forward-pass equivalents (a backward
counts two forwards); the run's cost is reported in ERM epochs, the cost of one ERM pass
over the training images (labeled and unlabeled) at this batch size (3 per example), so
that methods compare at equal cost. Validation work is not training cost; it is timed apart.

Validation and selection: with a validation set, each epoch measures clean and PGD-l2
robust accuracy on its first ``val_n`` images (``val_steps`` steps, one restart, radius
``val_eps`` or the method's ``eps``); ``select="best-robust"`` returns the weights of the
best robust epoch (robust overfitting, Rice et al. 2020, arXiv 2002.11569), and the last
epoch's weights beside them.

Reproducibility: the global RNG is seeded by the caller before the model is built; each
epoch's shuffling and augmentation draw from a generator seeded by ``(seed, epoch)``; the
checkpoint stores the RNG states, so a resumed run ends with the same weights as an
uninterrupted one (on the CPU).

Example::

    result = fit(my_module, build_method("er", eps=1.5), FitData(x, y), FitOptions(epochs=5))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from erat import distributed
from erat.datasets import augment_batch
from erat.errors import UserError
from erat.fields import param
from erat.methods import Batch, Method, build_method
from erat.rundir import RunDir, unwrap

Select = Literal["last", "best-robust"]


@dataclass
class FitOptions:
    """How to train: length, batches, optimiser, schedule, precision, validation."""

    epochs: int = param(10, "passes over the training set")
    budget: float | None = param(None, "train for this cost in ERM epochs (sets the updates "
                                       "instead of --epochs)")
    budget_epochs: int | None = param(None, "with --budget: split the run into this many "
                                            "epochs (validations, checkpoints); default: "
                                            "one pass over the data each")
    batch_size: int = param(128, "labeled batch size")
    unlabeled_batch_size: int | None = param(None, "unlabeled batch size (default: "
                                                   "--batch-size)")
    epoch_updates: int | None = param(None, "optimiser updates per epoch (default: one pass)")
    optimizer: Literal["sgd", "adam"] = param("adam", "optimiser")
    lr: float = param(1e-3, "learning rate")
    momentum: float = param(0.9, "SGD momentum")
    weight_decay: float = param(0.0, "L2 weight decay")
    schedule: Literal["cosine", "step", "none"] = param("cosine", "learning-rate schedule")
    seed: int = param(0, "random seed")
    amp: Literal["none", "bf16", "fp16"] = param("none", "mixed precision")
    channels_last: bool = param(False, "channels-last memory format (faster on recent GPUs)")
    compile: bool = param(False, "torch.compile the model")
    augment: bool = param(True, "the dataset's train-time augmentation")
    progress: bool = param(True, "progress bars")
    val_n: int = param(1000, "validation images measured after each epoch")
    val_eps: float | None = param(None, "radius of the per-epoch validation PGD (default: "
                                        "the method's eps)")
    val_steps: int = param(10, "steps of the per-epoch validation PGD")
    select: Select = param("last", "model.pt from the last epoch, or from the epoch of the "
                                   "best validation robust accuracy")

    def __post_init__(self) -> None:
        checks = {
            "epochs must be an integer >= 1": _int(self.epochs, 1),
            "budget must be a finite number > 0": self.budget is None
            or (_num(self.budget) and 0 < self.budget < math.inf),
            "budget_epochs must be an integer >= 1 (and needs --budget)":
            self.budget_epochs is None or (_int(self.budget_epochs, 1) and self.budget is not None),
            "batch_size must be an integer >= 1": _int(self.batch_size, 1),
            "lr must be a finite number > 0": _num(self.lr) and 0 < self.lr < math.inf,
            "momentum must be a number in [0, 1)": _num(self.momentum) and 0 <= self.momentum < 1,
            "weight_decay must be a finite number >= 0": _num(self.weight_decay)
            and 0 <= self.weight_decay < math.inf,
            "unlabeled_batch_size must be an integer >= 1": self.unlabeled_batch_size is None
            or _int(self.unlabeled_batch_size, 1),
            "epoch_updates must be an integer >= 1": self.epoch_updates is None
            or _int(self.epoch_updates, 1),
            "optimizer must be sgd or adam": self.optimizer in ("sgd", "adam"),
            "schedule must be cosine, step or none": self.schedule in ("cosine", "step", "none"),
            "amp must be none, bf16 or fp16": self.amp in ("none", "bf16", "fp16"),
            "seed must be an integer": _int(self.seed, -(2**63)),
            "val_n must be an integer >= 1": _int(self.val_n, 1),
            "val_eps must be a finite number > 0": self.val_eps is None
            or (_num(self.val_eps) and 0 < self.val_eps < math.inf),
            "val_steps must be an integer >= 1": _int(self.val_steps, 1),
            "select must be last or best-robust": self.select in ("last", "best-robust"),
        }
        for message, ok in checks.items():
            if not ok:
                raise UserError(message)


def _int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass
class FitData:
    """Training tensors: labeled ``x`` ``[N, C, H, W]`` in [0, 1] and ``y`` ``[N]``; optional
    unlabeled inputs, a validation set (model selection) and a test set (logged only)."""

    x: Tensor
    y: Tensor
    x_unlabeled: Tensor | None = None
    val: tuple[Tensor, Tensor] | None = None
    test: tuple[Tensor, Tensor] | None = None
    augment: str = "none"  # the dataset's train-time augmentation (erat.datasets.augment)


@dataclass
class FitResult:
    """What :func:`fit` returns: the model holding the selected weights, and the record."""

    model: nn.Module
    last_epoch: int
    selected_epoch: int
    last_state: dict[str, Tensor] | None  # the last epoch's weights when another is selected
    updates: int
    cost: float | None  # ERM epochs
    seconds: float  # training time, validation excluded
    stopped: bool = False  # ended early by stop_after
    history: list[dict[str, Any]] = field(default_factory=list)


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
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def build_optimizer(options: FitOptions, model: nn.Module, total_updates: int):
    params = model.parameters()
    if options.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                              weight_decay=options.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)

    def factor(update: int) -> float:
        progress = min(update / max(total_updates, 1), 1.0)
        if options.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if options.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass(frozen=True)
class Schedule:
    """How long a run trains: ``updates`` in all, ``per_epoch`` per epoch (the last epoch
    may be shorter), the ERM-epoch unit in forward-pass equivalents, the cost per update."""

    updates: int
    per_epoch: int
    unit: float
    costs: tuple[float, ...] | None  # per update, None when the method counts no cost

    @property
    def epochs(self) -> int:
        return math.ceil(self.updates / self.per_epoch)

    def cost(self, updates: int) -> float | None:
        """ERM epochs spent by the first ``updates`` updates."""
        return None if self.costs is None else sum(self.costs[:updates]) / self.unit


def plan(method: Method, model: nn.Module, options: FitOptions, sampler: EpochSampler
         ) -> Schedule:
    """The number of updates of a run: ``epochs`` whole epochs, or as many updates as
    ``budget`` ERM epochs pay for (at least one, else ``UserError``)."""
    # the unit: one ERM pass over every training image, labeled or not (a semi-supervised
    # run's 100 labels would otherwise make one epoch cost thousands of units)
    erm_updates = max((sampler.n_labeled + sampler.n_unlabeled) // sampler.labeled_batch, 1)
    mode = model.training
    model.train()  # what the cost sees: train-mode BatchNorm and dropout
    try:
        unit = build_method("erm").cost(_shape_batch(sampler.labeled_batch, 0), model) \
            * erm_updates
        if not callable(getattr(method, "cost", None)):
            if options.budget is not None:
                raise UserError(f"--budget needs a method that counts its cost; "
                                f"{method!r} has no cost()")
            return Schedule(options.epochs * sampler.updates, sampler.updates, unit, None)
        if options.budget is None:
            total = options.epochs * sampler.updates
            costs = tuple(_update_cost(method, model, sampler, u, total) for u in range(total))
            return Schedule(total, sampler.updates, unit, costs)
        limit, spent, costs = options.budget * unit * (1 + 1e-9), 0.0, []
        while True:
            c = _update_cost(method, model, sampler, len(costs))
            if c <= 0:
                raise ValueError(f"{method!r} reports a cost of {c} per update")
            if spent + c > limit:
                break
            spent += c
            costs.append(c)
        if not costs:
            raise UserError(f"--budget {options.budget:g} ERM epochs pays for no update of "
                            f"{getattr(method, 'name', 'this method')} (one costs "
                            f"{c / unit:.3g} ERM epochs)")
        total = len(costs)  # (a warm-up tied to the run's length changes the costs a little)
        costs = [_update_cost(method, model, sampler, u, total) for u in range(total)]
        per_epoch = sampler.updates if options.budget_epochs is None else \
            math.ceil(total / options.budget_epochs)
        return Schedule(total, per_epoch, unit, tuple(costs))
    finally:
        model.train(mode)


def _shape_batch(n: int, nu: int, updates: int | None = None, total: int | None = None
                 ) -> Batch:
    """A batch of the right sizes for counting a method's cost (no data)."""
    return Batch(torch.empty(n, 0), torch.empty(n), torch.empty(nu, 0) if nu else None, updates,
                 total)


def _update_cost(method: Method, model: nn.Module, sampler: EpochSampler, update: int,
                 total: int | None = None) -> float:
    nu = sampler.unlabeled_batch if sampler.n_unlabeled else 0
    return float(method.cost(_shape_batch(sampler.labeled_batch, nu, update, total), model))


def fit(
    model: nn.Module,
    method: Method,
    data: FitData | tuple[Tensor, Tensor],
    options: FitOptions | None = None,
    run_dir: RunDir | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    dist: distributed.Dist | None = None,
) -> FitResult:
    """Train ``model`` in place with ``method`` on ``data``; returns the selected model.

    With ``run_dir``, every epoch appends to ``metrics.jsonl`` and writes ``checkpoint.pt``
    (and ``best.pt`` when selecting), and ``resume`` continues from the checkpoint.
    ``stop_after`` ends after that epoch as if interrupted. The model's device is used.
    """
    data = data if isinstance(data, FitData) else FitData(*data)
    loop = _Loop(model, method, data, options or FitOptions(), run_dir, log,
                 dist or distributed.Dist())
    start = loop.state.restore(run_dir.load_checkpoint()) if resume and run_dir else 0
    if start:
        log(f"resumed {run_dir.path} after epoch {start}")
    if loop.dist.enabled:  # different random searches on each rank, reproducibly
        torch.manual_seed(loop.options.seed * 7919 + start * 31 + loop.dist.rank)
    loop.history = run_dir.metrics() if run_dir and start else []
    epochs = loop.schedule.epochs
    for epoch in range(start + 1, epochs + 1):
        row = loop.epoch(epoch)
        loop.record(row)
        if stop_after is not None and stop_after <= epoch < epochs:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return FitResult(model, epoch, epoch, None, row["updates"],
                             loop.schedule.cost(row["updates"]), _train_seconds(loop.history),
                             stopped=True, history=loop.history)
    return loop.result()


class _Loop:
    """The state of one :func:`fit` call: data on the device, schedule, optimiser."""

    def __init__(self, model: nn.Module, method: Method, data: FitData, options: FitOptions,
                 run_dir: RunDir | None, log: Callable[[str], None], dist: distributed.Dist):
        self.model, self.method, self.data, self.options = model, method, data, options
        self.run_dir, self.log, self.dist = run_dir, log, dist
        self.device = next(model.parameters()).device
        if dist.enabled and options.batch_size % dist.world_size:
            raise UserError(f"batch_size {options.batch_size} must divide among "
                            f"{dist.world_size} processes")
        uses = data.x_unlabeled is not None and method.uses_unlabeled
        self.sampler = EpochSampler(options, len(data.y), len(data.x_unlabeled) if uses else 0)
        self.schedule = plan(method, model, options, self.sampler)
        self.sampler.updates = self.schedule.per_epoch
        optimizer, scheduler = build_optimizer(options, model, self.schedule.updates)
        scaler = torch.amp.GradScaler(self.device.type, enabled=options.amp == "fp16")
        self.val_eps = _val_radius(method, options, data)
        self.state = _State(model, optimizer, scheduler, scaler)
        self.step_model = torch.compile(model) if options.compile else model
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)
        self.xu = data.x_unlabeled.to(self.device) if uses else None
        self.augment = data.augment if options.augment else "none"
        self.history: list[dict[str, Any]] = []

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; its metrics row (without validation)."""
        opt, sched, dist = self.options, self.schedule, self.dist
        gen = torch.Generator().manual_seed(opt.seed * 100_003 + epoch)
        first = (epoch - 1) * sched.per_epoch
        n = min(sched.per_epoch, sched.updates - first)
        t0 = time.perf_counter()
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(self.sampler.batches(gen), total=n, desc=f"epoch {epoch}/{sched.epochs}",
                   disable=not opt.progress or not dist.is_main, leave=False)
        for i, (li, ui) in enumerate(bar):
            if i == n:
                break
            idx = distributed.shard(li, dist).to(self.device)
            batch = Batch(_prepare(self.x[idx], self.augment, gen, opt), self.y[idx],
                          updates=first + i, total_updates=sched.updates)
            if ui is not None:
                uidx = distributed.shard(ui, dist).to(self.device)
                batch.x_unlabeled = _prepare(self.xu[uidx], self.augment, gen, opt)
            metrics = _update(self.step_model, self.method, batch, self.state, opt.amp,
                              self.device, dist)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        seconds = time.perf_counter() - t0
        sums = distributed.mean_over_ranks(sums, dist, self.device)
        row = {"epoch": epoch, "updates": first + n, "seconds": round(seconds, 3),
               "lr": self.state.scheduler.get_last_lr()[0],
               **{f"train_{k}": v / n for k, v in sums.items()}}
        if sched.costs is not None:
            row["cost"] = sched.cost(first + n)
        return row

    def record(self, row: dict[str, Any]) -> None:
        """Validate, log, select, and write the epoch's metrics and checkpoint."""
        if self.data.val is not None:
            row |= _validate(self.model, self.data.val, self.options, self.val_eps,
                             self.device)
        if self.data.test is not None:
            row["test_acc"] = clean_accuracy(self.model, *self.data.test)
        warning = _guard(self.model, self.xu, self.y, row, self.history)
        if warning:
            row["guard"] = warning
            self.log(f"warning: {warning}")
        self.history.append(row)
        if self.dist.is_main and self.run_dir is not None:
            self.state.select(row, self.options, self.run_dir)
            self.run_dir.append_metrics(row)
            self.run_dir.save_checkpoint(self.state.checkpoint(row["epoch"]))
        elif self.options.select == "best-robust":
            self.state.select(row, self.options, None)
        self.log(epoch_line(row, self.schedule.epochs))

    def result(self) -> FitResult:
        """The finished run; the selected epoch's weights in the model."""
        last, model = self.schedule.epochs, unwrap(self.model)
        best = self.state.best_state(self.run_dir)
        selecting = self.options.select == "best-robust" and best is not None
        last_state = None
        if selecting and best["epoch"] != last:
            last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best["state_dict"])
        return FitResult(self.model, last, best["epoch"] if selecting else last, last_state,
                         self.schedule.updates, self.schedule.cost(self.schedule.updates),
                         _train_seconds(self.history), history=self.history)


COLLAPSE_SHARE = 3.0  # predicted share of a class, against its largest share among the labels
VAL_DROP = 0.05  # validation accuracy below its best by this much


def _guard(model: nn.Module, xu: Tensor | None, y: Tensor, row: dict[str, Any],
           history: list[dict[str, Any]]) -> str | None:
    """A warning when training goes wrong in a way the training loss does not show: the
    predictions on unlabeled data collapse into one class (its share over ``COLLAPSE_SHARE``
    times the largest class share among the labels), or the validation accuracy falls
    ``VAL_DROP`` below its best (docs/results.md, semi-supervised defaults)."""
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


def _train_seconds(history: list[dict]) -> float:
    return round(sum(r.get("seconds", 0.0) for r in history), 3)


def _val_radius(method: Method, options: FitOptions, data: FitData) -> float | None:
    eps = options.val_eps if options.val_eps is not None else getattr(method, "eps", None)
    if options.select == "best-robust":
        if data.val is None:
            raise UserError("--select best-robust needs a validation set (--val N)")
        if not eps:
            raise UserError(f"--select best-robust needs --val-eps for method "
                            f"{getattr(method, 'name', method)!r} (it has no eps)")
    return eps or None


class _State:
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


def _prepare(x: Tensor, aug: str, gen: torch.Generator, options: FitOptions) -> Tensor:
    x = augment_batch(x, aug, gen)
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last else x


def _update(model: nn.Module, method: Method, batch: Batch, state: _State, amp: str,
            device: torch.device, dist: distributed.Dist) -> dict[str, float]:
    """One optimiser update on ``batch``; returns the method's metrics as floats."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = method(model, batch)
    if not torch.isfinite(out.loss):
        raise UserError(f"the training loss became {out.loss.item()} at update "
                        f"{batch.updates}; lower --lr or check the data")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    distributed.average_gradients(model, dist)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    return {k: float(v) for k, v in out.metrics.items()}


def _validate(model: nn.Module, val: tuple[Tensor, Tensor], options: FitOptions,
              eps: float | None, device: torch.device) -> dict[str, float]:
    """Clean and PGD-l2 robust accuracy on the first ``val_n`` validation images."""
    from erat.evaluate import evaluate

    t0 = time.perf_counter()
    xv, yv = val[0][: options.val_n].to(device), val[1][: options.val_n].to(device)
    was_training = model.training
    model.eval()
    try:
        if eps is None:
            out = {"val_clean_acc": clean_accuracy(model, xv, yv)}
        else:
            res = evaluate(model, xv, yv, attacks="pgd", eps=[eps], steps=options.val_steps,
                           restarts=1, sanity_n=0, seed=0, batch_size=500)
            out = {"val_clean_acc": res["clean_acc"],
                   "val_robust_acc": next(iter(res["robust_acc"].values()))}
    finally:
        model.train(was_training)
    return out | {"val_seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Accuracy in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        correct += int((model(xb).argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """A short human line for an epoch (the full row goes to ``metrics.jsonl``)."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train_loss', math.nan):.3f}"]
    if "train_acc" in row:
        parts.append(f"acc {row['train_acc']:.3f}")
    if "val_clean_acc" in row:
        robust = row.get("val_robust_acc")
        parts.append(f"val {row['val_clean_acc']:.3f}" + (f"/{robust:.3f}" if robust is not None
                                                           else ""))
    if "test_acc" in row:
        parts.append(f"test {row['test_acc']:.3f}")
    parts.append(f"{row['seconds']:.1f} s")
    if row.get("cost") is not None:
        parts.append(f"cost {row['cost']:.2f}")
    return "  ".join(parts)


__all__ = ["EpochSampler", "FitData", "FitOptions", "FitResult", "Schedule", "fit", "plan"]
