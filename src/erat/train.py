"""The training loop: knows no method by name, only the :class:`~erat.methods.Method` protocol.

One epoch is a pass over the labeled training set (supervised), or over the unlabeled set
when ``labels`` is set and the method reads unlabeled data (semi-supervised; the labeled
batches cycle, reshuffled each cycle); ``epoch_steps`` overrides the length. The run folder
holds ``config.yaml`` (the resolved configuration), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (full state after every epoch, written atomically), ``split.json`` (the
labeled indices, semi-supervised only) and, at the end, ``model.pt``.

Reproducibility: the global RNG is seeded once; each epoch's shuffling and augmentation draw
from a generator seeded by ``(seed, epoch)``; the checkpoint stores the global RNG states, so
a resumed run ends with the same weights as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from erat import __version__, distributed
from erat.checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_file, save_model
from erat.data import augment_batch, dataset_info, labeled_split, load_dataset
from erat.methods import Batch, Method, build_method, method_config
from erat.models import build_model

CHECKPOINT, CONFIG, METRICS, SPLIT = "checkpoint.pt", "config.yaml", "metrics.jsonl", "split.json"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.yaml`` in the run folder."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "erm"
    method_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    labels: int | None = None  # semi-supervised: keep this many labels, balanced
    unlabeled_batch_size: int | None = None  # default: batch_size
    epoch_steps: int | None = None  # default: one pass over the set that defines an epoch
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "none"] = "cosine"
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False  # memory format for conv nets (faster on recent GPUs)
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # multi-GPU: SyncBatchNorm instead of per-rank statistics
    augment: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "lr must be a finite number > 0": math.isfinite(self.lr) and self.lr > 0,
            "labels must be >= 1": self.labels is None or self.labels >= 1,
            "unlabeled_batch_size must be >= 1": self.unlabeled_batch_size is None
            or self.unlabeled_batch_size >= 1,
            "epoch_steps must be >= 1": self.epoch_steps is None or self.epoch_steps >= 1,
            "optimizer must be sgd or adam": self.optimizer in ("sgd", "adam"),
            "schedule must be cosine, step or none": self.schedule in ("cosine", "step", "none"),
            "amp must be none, bf16 or fp16": self.amp in ("none", "bf16", "fp16"),
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}") from e


def build_optimizer(cfg: TrainConfig, model: nn.Module, total_steps: int):
    params = model.parameters()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:  # per optimiser step
        progress = min(step / max(total_steps, 1), 1.0)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class EpochSampler:
    """Index batches of one epoch: the epoch's set, plus cycling labeled batches (semi-sup)."""

    def __init__(self, cfg: TrainConfig, n_labeled: int, n_unlabeled: int) -> None:
        self.cfg, self.n_labeled, self.n_unlabeled = cfg, n_labeled, n_unlabeled
        ub = cfg.unlabeled_batch_size or cfg.batch_size
        lb = min(cfg.batch_size, n_labeled)
        size, batch = (n_unlabeled, ub) if n_unlabeled else (n_labeled, lb)
        self.steps = cfg.epoch_steps or max(size // batch, 1)  # drop the last partial batch

    def batches(self, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor | None]]:
        lb = min(self.cfg.batch_size, self.n_labeled)
        ub = self.cfg.unlabeled_batch_size or self.cfg.batch_size
        labeled = _cycle(self.n_labeled, lb, gen)
        unlabeled = _cycle(self.n_unlabeled, ub, gen) if self.n_unlabeled else None
        for _ in range(self.steps):
            yield next(labeled), (next(unlabeled) if unlabeled else None)


def _cycle(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of a fresh permutation per pass; a pass drops its last partial batch."""
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Any = print,
) -> Path:
    """Train as configured, writing the run folder ``out``; returns the path of ``model.pt``.

    ``stop_after`` ends the run after that epoch as if interrupted (a later ``resume``
    continues it); a finished run writes ``model.pt``.
    """
    out = Path(out)
    if (out / CHECKPOINT).exists() and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume or choose another --out")
    device = resolve_device(cfg.device)
    dist = distributed.setup(device)
    if dist.enabled:
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        if cfg.batch_size % dist.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} must divide among {dist.world_size} processes"
            )
        if not dist.is_main:
            log = _silent
    info = dataset_info(cfg.dataset)
    method = build_method(cfg.method, **cfg.method_params)
    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download)
    x_train, y_train = (t.to(device) for t in train_set.tensors)
    labeled_idx, unlabeled_idx = _split(
        cfg, method, y_train.cpu(), out if dist.is_main else None, log
    )

    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        in_shape=info.shape,
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        **cfg.model_kwargs,
    ).to(device)
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    distributed.broadcast_parameters(model, dist)
    sampler = EpochSampler(cfg, len(labeled_idx), len(unlabeled_idx))
    optimizer, scheduler = build_optimizer(cfg, model, cfg.epochs * sampler.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    start = 0
    if resume and (out / CHECKPOINT).exists():
        start = _restore(out / CHECKPOINT, model, optimizer, scheduler, scaler)
        log(f"resumed {out} after epoch {start}")
    if dist.enabled:  # different random searches on each rank, reproducibly
        torch.manual_seed(cfg.seed * 7919 + start * 31 + dist.rank)
    step_model = torch.compile(model) if cfg.compile else model
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), out / CONFIG)

    aug = info.augment if cfg.augment else "none"
    for epoch in range(start + 1, cfg.epochs + 1):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            sampler.batches(gen),
            total=sampler.steps,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for i, (li, ui) in enumerate(bar):
            idx = distributed.shard(labeled_idx[li], dist).to(device)
            step = (epoch - 1) * sampler.steps + i
            batch = Batch(_prepare(x_train[idx], aug, gen, cfg), y_train[idx], step=step)
            if ui is not None:
                uidx = distributed.shard(unlabeled_idx[ui], dist).to(device)
                batch.x_unlabeled = _prepare(x_train[uidx], aug, gen, cfg)
            metrics = _step(
                step_model, method, batch, optimizer, scheduler, scaler, cfg.amp, device, dist
            )
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        seconds = time.perf_counter() - t0
        sums = distributed.mean_over_ranks(sums, dist, device)
        if dist.is_main:
            row = {
                "epoch": epoch,
                "seconds": round(seconds, 3),
                "lr": scheduler.get_last_lr()[0],
                **{f"train_{k}": v / sampler.steps for k, v in sums.items()},
                "test_acc": clean_accuracy(model, *test_set.tensors),
            }
            _append_jsonl(out / METRICS, row, epoch)
            _checkpoint(out / CHECKPOINT, model, optimizer, scheduler, scaler, epoch, cfg)
            log(json.dumps(row))
        if stop_after is not None and epoch >= stop_after and epoch < cfg.epochs:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return out / CHECKPOINT
    meta = {
        "erat_version": __version__,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "in_shape": list(info.shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "method": method_config(method),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "labels": cfg.labels,
    }
    if dist.is_main:
        save_model(model, meta, out / "model.pt")
    return out / "model.pt"


def _silent(*_: Any) -> None:
    pass


def _prepare(x: Tensor, aug: str, gen: torch.Generator, cfg: TrainConfig) -> Tensor:
    x = augment_batch(x, aug, gen)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def _step(
    model: nn.Module,
    method: Method,
    batch: Batch,
    optimizer,
    scheduler,
    scaler,
    amp: str,
    device: torch.device,
    dist: distributed.Dist,
) -> dict[str, float]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = method(model, batch)
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"loss became {out.loss.item()}; lower --lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    distributed.average_gradients(model, dist)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {k: float(v) for k, v in out.metrics.items()}


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


def _split(
    cfg: TrainConfig, method: Method, y: Tensor, out: Path | None, log: Any
) -> tuple[Tensor, Tensor]:
    """Labeled and unlabeled training indices; the split is saved (in ``out``) for audit."""
    if cfg.labels is None:
        return torch.arange(len(y)), torch.empty(0, dtype=torch.long)
    labeled, unlabeled = labeled_split(y, cfg.labels, cfg.seed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            {"labels": cfg.labels, "seed": cfg.seed, "labeled": labeled.tolist()}, out / SPLIT
        )
    if not method.uses_unlabeled:
        log(
            f"method {cfg.method!r} uses no unlabeled data: training on the "
            f"{len(labeled)} labeled examples only"
        )
        return labeled, torch.empty(0, dtype=torch.long)
    log(f"semi-supervised: {len(labeled)} labeled, {len(unlabeled)} unlabeled")
    return labeled, unlabeled


def _checkpoint(
    path: Path, model, optimizer, scheduler, scaler, epoch: int, cfg: TrainConfig
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": json.dumps(dataclasses.asdict(cfg)),
    }
    atomic_save(state, path)


def _restore(path: Path, model, optimizer, scheduler, scaler) -> int:
    state = load_file(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["epoch"])


def _append_jsonl(path: Path, row: dict[str, Any], epoch: int) -> None:
    """Append one metrics line, first dropping lines of epochs >= this one (a resumed run)."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("epoch", 0) < epoch]
    atomic_write_text("".join(f"{ln}\n" for ln in [*kept, json.dumps(row)]), path)
