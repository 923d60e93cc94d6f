"""``train(config, out)``: build what a :class:`~erat.config.TrainConfig` names (dataset,
splits, model, method), then :func:`erat.fit.fit` it into a run folder
(:class:`~erat.rundir.RunDir`).

The run folder has one owner: training takes its lock, refuses a folder that holds a run
unless told to ``resume`` it (with the same configuration) or ``overwrite`` it, and removes
the temporaries an interrupted write left behind.

Example::

    train(resolve([({"dataset": "digits", "method": "er", "eps": 1.0}, "example")]), "runs/er")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from erat import distributed
from erat.config import TrainConfig, resume_conflicts
from erat.datasets import (
    DatasetInfo,
    dataset_info,
    labeled_split,
    load_dataset,
    validation_split,
)
from erat.datasets.own import describe
from erat.distributed import resolve_device
from erat.errors import UserError, first_line
from erat.files import tensor_sha256
from erat.fit import FitData, FitResult, fit
from erat.methods import Method, ball, method_config
from erat.models import build_model
from erat.models.factory import absolute, is_factory
from erat.rundir import RunDir
from erat.threat import ball_name, check_radius_fits


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train as configured into the run folder ``out``; returns the path of ``model.pt``
    (of ``checkpoint.pt`` when ``stop_after`` ended the run early) and logs ``wrote PATH``
    when it wrote it (a finished run resumed is left unchanged, and says so)."""
    run = RunDir(out)
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after must be >= 1, got {stop_after}")
    # names, settings and your own data and model first: a bad one touches no folder
    info = dataset_info(cfg.dataset, cfg.data_dir, **cfg.data_options)
    method = cfg.build_method()
    norm, trained = ball(method)
    for name, eps in (("--eps", trained), ("--val-eps", cfg.fit.val_eps)):
        if eps is not None:  # (radii in pixel space)
            check_radius_fits(float(eps), norm, info.shape, name=name)
    if is_factory(cfg.model):
        _check_factory(cfg, info)
    if distributed.world_size() == 1:  # (torchrun: rank 0 checks, below)
        run.check_output(resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.device)
    if cfg.sync_bn and distributed.world_size() > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA GPUs (SyncBatchNorm); on the CPU each process "
                        "keeps its own BatchNorm batch statistics: leave --sync-bn out")
    dist = distributed.setup(device)
    if dist.enabled:
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_main:
            log = _silent
    with contextlib.ExitStack() as held:
        refused, locked = None, False
        if dist.is_main:
            try:
                if dist.enabled:  # (here, not before: a slow rank saw rank 0's new files)
                    run.check_output(resume=resume, overwrite=overwrite)
                held.enter_context(run.lock())
                locked = True
                _prepare_folder(run, cfg, resume, overwrite, log)
            except Exception as e:  # (every rank learns of it; the other ranks would hang)
                refused = e
                if overwrite and locked:
                    run.restore()
        if not distributed.agree(refused is None, dist, device):  # (torchrun: every rank)
            raise refused or UserError(f"rank 0 refused the run in {run.path} (its message "
                                       "above)")
        if resume and run.finished():
            check_epoch_length(run, cfg)
            kept = "its weights were dropped" if run.weights_dropped() else \
                f"{run.model_file()} is already there, unchanged"
            log(f"{run.path} is finished: {kept}; nothing to do")
            return run.model_file()
        try:
            result, built = _run(cfg, run, resume, stop_after, log, device, dist)
        except BaseException:
            if dist.is_main and not resume and not run.metrics():
                run.clear()  # failed before its first epoch: the folder as it was
                run.restore()  # (--overwrite: the run it was to replace)
            raise
        if result.stopped:
            log(f"wrote {run / RunDir.CHECKPOINT}")
            return run / RunDir.CHECKPOINT
        if dist.is_main:
            digest = _save(run, cfg, built, result)
            run.finish(cfg.keep_checkpoint)
            log(f"weights: state_dict_sha256 {digest}")
            chosen = (f" (epoch {result.selected_epoch} of {result.last_epoch}: the best "
                      "validation robust accuracy)" if cfg.fit.select == "best-robust" else "")
            log(f"wrote {run.model_file()}{chosen}")  # (only what was written, so here)
    return run.model_file()


def check_epoch_length(run: RunDir, cfg: TrainConfig) -> None:
    """Refuse a finished labels-only run of a semi-supervised configuration whose epochs may
    have been one pass over the labels: an erat before 2026-12-02 made that many updates per
    epoch (one, on 100 labels), this one makes a pass over the unlabeled set's; such a run's
    metrics rows lack ``epoch_updates``, and its first epoch made no more updates than a pass
    over the labels. Its figures would be reused under-trained."""
    if cfg.labels is None or cfg.fit.epoch_updates \
            or cfg.build_method().uses_unlabeled:
        return
    rows = run.metrics()
    shorter = max(cfg.labels // max(min(cfg.fit.batch_size, cfg.labels), 1), 1)  # (the old)
    if rows and "epoch_updates" not in rows[0] and rows[0].get("updates", 0) <= shorter:
        raise UserError(f"{run.path} was trained by an older erat whose labels-only epochs "
                        "were one pass over the labels (fewer updates than this erat makes); "
                        "remove it, or train it again into another folder")


def _rounded(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def _check_factory(cfg: TrainConfig, info: DatasetInfo) -> None:
    """Build a ``MODULE:FACTORY`` model once (the random streams left as they were) and run
    it on two blank images: an import, a factory or an output that does not fit is refused
    before the run folder is touched."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.model, in_shape=info.shape, num_classes=info.num_classes,
                            mean=info.mean, std=info.std, **cfg.model_kwargs)
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(2, *info.shape))
        except Exception as e:  # the user's module: any error is theirs to read
            raise UserError(f"--model {cfg.model} fails on {cfg.dataset}'s images "
                            f"[2, {', '.join(map(str, info.shape))}]: {type(e).__name__}: "
                            f"{first_line(e)}") from e
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, info.num_classes):
        shown = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(f"--model {cfg.model} gives {shown} for 2 images; {cfg.dataset} needs "
                        f"logits [2, {info.num_classes}] ({info.num_classes} classes)")


def _prepare_folder(run: RunDir, cfg: TrainConfig, resume: bool, overwrite: bool,
                    log: Callable[[str], None]) -> None:
    removed = run.remove_temps()
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write")
    if resume:
        conflicts = resume_conflicts(run.read_config(), cfg.to_dict())
        if conflicts:
            raise UserError(f"--resume: settings differ from {run / RunDir.CONFIG}: "
                            + "; ".join(conflicts))
        if not run.finished() and not (run / RunDir.CHECKPOINT).exists():
            log(f"resuming {run.path}: no {RunDir.CHECKPOINT} yet; starting at epoch 1")
    elif overwrite:
        run.set_aside()  # (until the new run's first epoch: a refusal restores it)
    run.write_config(cfg.to_dict())


class _Built(NamedTuple):
    """What a training run built: its method, model, dataset information and the SHA-256
    of its test set."""
    method: Method
    model: nn.Module
    info: Any
    test_sha256: str


def _run(cfg: TrainConfig, run: RunDir, resume: bool, stop_after: int | None,
         log: Callable[[str], None], device: torch.device, dist: distributed.Dist
         ) -> tuple[FitResult, _Built]:
    info = dataset_info(cfg.dataset, cfg.data_dir, **cfg.data_options)
    if info.details is not None:
        log(describe(info))
    method = cfg.build_method()
    if hasattr(method, "eps") and "eps" not in cfg.method_params:
        log(f"note: {cfg.method} trains at its default radius, "
            f"{ball_name(getattr(method, 'norm', 'l2'), method.eps)} (--eps to choose)")
    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download, **cfg.data_options)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download, **cfg.data_options)
    x, y = train_set.tensors
    digests = {"train_sha256": tensor_sha256([x, y]),
               "test_sha256": tensor_sha256(list(test_set.tensors))}
    if resume:
        _check_same_data(run, cfg, digests)
    data = _split(cfg, method, x, y, run if dist.is_main else None, log, digests)
    data.augment = info.augment
    if cfg.val is None:  # with a validation set, training never looks at the test set
        data.test = test_set.tensors
    torch.manual_seed(cfg.fit.seed)
    if is_factory(cfg.model):  # (what the network is given: a pretrained one expects its own)
        log(f"model: Normalize(mean {_rounded(info.mean)}, std {_rounded(info.std)}, "
            f"{cfg.dataset}'s), then {cfg.model}'s network; a network that normalises its "
            "inputs its own way (a pretrained one) is fine-tuned through erat.fit "
            "(docs/own-model-and-data.md)")
    model = build_model(cfg.model, in_shape=info.shape, num_classes=info.num_classes,
                        mean=info.mean, std=info.std, **cfg.model_kwargs).to(device)
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.fit.channels_last:
        model = model.to(memory_format=torch.channels_last)
    distributed.broadcast_parameters(model, dist)
    result = fit(model, method, data, cfg.fit, run, resume=resume,
                 stop_after=stop_after, log=log, dist=dist)
    return result, _Built(method, model, info, digests["test_sha256"])


def _check_same_data(run: RunDir, cfg: TrainConfig, digests: dict[str, str]) -> None:
    """Refuse to resume on other data than the run started on (a file changed or replaced,
    a relative path read from another folder): the SHA-256s in ``split.json``."""
    saved = run.read_split()
    changed = [k.split("_")[0] for k in digests if saved.get(k, digests[k]) != digests[k]]
    if changed:
        raise UserError(f"--resume: the {' and '.join(changed)} data of {cfg.dataset} differ "
                        f"from those {run.path} started on (their SHA-256 in "
                        f"{RunDir.SPLIT}; images resized by another Pillow differ too); "
                        "resume on the same data, or --overwrite to start again")


def _split(cfg: TrainConfig, method: Method, x: Tensor, y: Tensor, run: RunDir | None,
           log: Callable[[str], None], digests: dict[str, str]) -> FitData:
    """Validation hold-out, labeled and unlabeled training examples; saved in
    ``split.json`` for audit (only what was split), with the data's ``digests``."""
    val_idx = validation_split(y, cfg.val, cfg.val_seed)[0] if cfg.val else None
    saved: dict[str, Any] = dict(digests)
    if val_idx is not None:
        saved |= {"val": cfg.val, "val_seed": cfg.val_seed, "val_indices": val_idx.tolist()}
    if cfg.labels is None:
        keep = torch.ones(len(y), dtype=torch.bool)
        if val_idx is not None:
            keep[val_idx] = False
        labeled, unlabeled = torch.nonzero(keep).flatten(), torch.empty(0, dtype=torch.long)
    else:
        labeled, unlabeled = (labeled_split(y, cfg.labels, cfg.fit.seed) if val_idx is None
                              else labeled_split(y, cfg.labels, cfg.fit.seed, exclude=val_idx))
        saved |= {"labels": cfg.labels, "seed": cfg.fit.seed, "labeled": labeled.tolist()}
    if run is not None:
        run.write_split(saved)
    if cfg.labels is not None:
        if method.uses_unlabeled:
            log(f"semi-supervised: {len(labeled)} labeled, {len(unlabeled)} unlabeled")
            if note := getattr(method, "training_note", lambda semi: None)(True):
                log(note)
        else:  # (the unlabeled set still sets the epoch's length: erat.fit.sampler)
            log(f"method {cfg.method!r} uses no unlabeled data: training on the "
                f"{len(labeled)} labeled examples only, with epochs as long as a "
                f"semi-supervised run's ({len(unlabeled)} unlabeled)")
    val = (x[val_idx], y[val_idx]) if val_idx is not None else None
    reads = len(unlabeled) > 0 and method.uses_unlabeled
    return FitData(x[labeled], y[labeled], x[unlabeled] if reads else None, val,
                   unlabeled_count=0 if reads else len(unlabeled))


def _save(run: RunDir, cfg: TrainConfig, built: _Built, result: FitResult) -> str:
    """``model.pt`` (and ``model-last.pt``); returns ``model.pt``'s ``state_dict_sha256``."""
    info = built.info
    common = dict(dataset=cfg.dataset, model_name=absolute(cfg.model),  # (eval: any folder)
                  model_kwargs=cfg.model_kwargs,
                  in_shape=info.shape, num_classes=info.num_classes, mean=info.mean,
                  std=info.std, method=method_config(built.method), epochs=cfg.fit.epochs,
                  budget=cfg.fit.budget, seed=cfg.fit.seed, labels=cfg.labels, val=cfg.val,
                  select=cfg.fit.select, last_epoch=result.last_epoch,
                  updates=result.updates, cost_erm_epochs=result.cost,
                  train_seconds=result.seconds, test_sha256=built.test_sha256,
                  ran=result.ran)
    if info.details is not None:  # your own data: what erat eval re-reads
        common["data"] = info.details
    if result.last_state is not None:  # (first: model.pt marks the run finished)
        run.save_model(result.last_state, selected_epoch=result.last_epoch, last=True, **common)
    meta = run.save_model(result.model, selected_epoch=result.selected_epoch, **common)
    return meta["state_dict_sha256"]


def _silent(*_: Any) -> None:
    pass
