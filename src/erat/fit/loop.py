"""The training loop: ``fit(model, method, data, options, run_dir)`` trains any ``nn.Module``
with any :class:`~erat.methods.Method` on tensors; it knows no name of a dataset, model or
method (:func:`erat.train.train` looks the names up and calls it).

One epoch is a pass over the labeled training set (supervised), or over the larger of the
labeled and unlabeled sets when there is an unlabeled one, whether or not the method reads
it (:mod:`erat.fit.sampler`; the smaller set's batches cycle, reshuffled each cycle);
``epoch_updates`` overrides the length. ``budget`` (in ERM epochs,
:mod:`erat.fit.schedule`) sets the number of updates instead of ``epochs``. Validation work
is not training cost; it is timed apart (:mod:`erat.fit.validate`).

Reproducibility: the global RNG is seeded by the caller before the model is built; each
epoch's shuffling and augmentation draw from a generator seeded by ``(seed, epoch)``; the
checkpoint stores the RNG states, so a resumed run ends with the same weights as an
uninterrupted one (on the CPU).

Example::

    result = fit(my_module, build_method("er", eps=1.5), FitData(x, y), FitOptions(epochs=5))
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from erat import distributed
from erat.datasets import augment_batch
from erat.errors import UserError, first_line
from erat.fields import differs, python_number
from erat.files import tensor_sha256
from erat.fit import fast
from erat.fit.guard import WATCHED, guard
from erat.fit.options import RESUME_MAY_CHANGE, FitData, FitOptions, FitResult
from erat.fit.sampler import EpochSampler
from erat.fit.schedule import build_optimizer, plan
from erat.fit.state import TrainState
from erat.fit.validate import clean_accuracy, val_ball, val_radius, validate
from erat.graphs import Cloned, check_capturable, cudagraph_skips, step_module
from erat.inputs import NonFiniteOutputs, within_outputs
from erat.methods import Batch, Method, ball
from erat.passes import sample_outputs
from erat.rundir import RunDir, unwrap
from erat.threat import check_radius_fits, norm_name, radius_name

# the fast path reads the loss on the host (a synchronisation) every this many updates
CHECK_EVERY = 25


def fit(
    model: nn.Module,
    method: Method,
    data: FitData | tuple[Tensor, Tensor],
    options: FitOptions | None = None,
    run_dir: RunDir | str | Path | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    dist: distributed.Dist | None = None,
) -> FitResult:
    """Train ``model`` in place with ``method`` on ``data`` (checked once:
    :class:`FitData`); returns a :class:`FitResult` whose ``model`` holds the selected
    weights, left in train mode as a training loop leaves it (``.eval()`` before measuring).

    With ``run_dir`` (a folder), every epoch appends to ``metrics.jsonl`` and writes
    ``checkpoint.pt`` (and ``best.pt`` when selecting), and ``resume`` continues from the
    checkpoint, refused when the method, options or training data differ from the ones it
    was written with; without ``resume``, a folder holding a run is refused; the model file
    ``model.pt`` is :func:`erat.train.train`'s. ``stop_after`` ends after that epoch as if
    interrupted. The model's device is used. Each epoch's line goes to ``log``
    (``progress=False`` turns off the progress bar only; ``log=lambda line: None`` too).
    """
    if isinstance(method, str) or not callable(method):
        raise TypeError(f"method must be a training method (erat.methods.build_method('er', "
                        f"eps=...)), got {type(method).__name__}")
    if not isinstance(data, FitData | tuple | list) or (not isinstance(data, FitData)
                                                        and len(data) != 2):
        raise TypeError(f"data must be FitData(x, y, ...) or an (x, y) pair of tensors, got "
                        f"{type(data).__name__} (a TensorDataset's: ds.tensors; a DataLoader's: "
                        "loader.dataset.tensors)")
    data = data if isinstance(data, FitData) else FitData(*data)
    options = options or FitOptions()
    for name, (norm, eps) in (("the method's eps", ball(method)),
                              ("val_eps", (val_ball(method, options)[0], options.val_eps))):
        if eps is not None:
            check_radius_fits(eps, norm, tuple(data.x.shape[1:]), name=name)
    if isinstance(run_dir, str | Path):
        run_dir = RunDir(run_dir)
    if resume and run_dir is None:
        raise UserError("resume=True continues a run_dir's checkpoint: give run_dir")
    if run_dir is not None and not resume:
        _check_unused(run_dir)
    loop = Loop(model, method, data, options, run_dir, log,
                dist or distributed.Dist())
    saved = run_dir.load_checkpoint() if resume else None
    if differ := _differences(loop.settings, (saved or {}).get("settings") or {}):
        raise UserError(f"resume: {run_dir.path} was trained with other settings ("
                        + "; ".join(differ) + "); train into another folder, or resume with "
                        "the run's own")
    start = loop.state.restore(saved)
    if stop_after is not None and stop_after <= start:
        raise UserError(f"--stop-after {stop_after} is not after epoch {start}, where the run "
                        "resumes; give a later epoch, or none")
    loop.history = [r for r in run_dir.metrics() if r.get("epoch", 0) <= start] \
        if run_dir and start else []  # (rows after the checkpoint's epoch: trained again)
    if start:
        _check_schedule(loop, start)
        log(f"resumed {run_dir.path} after epoch {start}")
    epochs = loop.schedule.epochs
    if stop_after is not None and stop_after >= epochs > start:
        log(f"note: --stop-after {stop_after} is not before the run's last epoch "
            f"({epochs}): the run trains to its end")
    for epoch in range(start + 1, epochs + 1):
        if loop.dist.enabled:  # each rank's searches its own, reseeded per epoch: a resumed
            # run draws what the uninterrupted one drew (only rank 0's state is saved)
            torch.manual_seed(loop.options.seed * 7919 + (epoch - 1) * loop.dist.world_size
                              + loop.dist.rank)
        row = loop.epoch(epoch)
        loop.record(row)
        if stop_after is not None and stop_after <= epoch < epochs:
            log(f"stopped after epoch {epoch}; " + (
                "continue with --resume (fit: resume=True)" if run_dir else
                "nothing saved to resume from (no run_dir)"))
            return FitResult(model, epoch, epoch, None, row["updates"],
                             loop.schedule.cost(row["updates"]), _train_seconds(loop.history),
                             stopped=True, history=loop.history)
    return loop.result()


def _check_unused(run_dir: RunDir) -> None:
    """Refuse to start a new training in a folder that holds another's progress or model
    (it would be replaced without a word)."""
    held = [f for f in (RunDir.METRICS, RunDir.CHECKPOINT, RunDir.BEST, RunDir.MODEL)
            if (run_dir.path / f).exists()]
    if held:
        raise UserError(f"{run_dir.path} already holds a run ({', '.join(held)}): "
                        "resume=True to continue it, or another run_dir (erat train "
                        "--overwrite replaces a run)")


def _say_clipped(sampler: EpochSampler, options: FitOptions, log: Callable[[str], None]
                 ) -> None:
    """A note for each batch size larger than its set, which trains with the whole set."""
    for flag, asked, got, n, what in (
            ("--batch-size", options.batch_size, sampler.labeled_batch, sampler.n_labeled,
             "labeled" if sampler.n_unlabeled else "training"),
            ("--unlabeled-batch-size", options.unlabeled_batch_size, sampler.unlabeled_batch,
             sampler.n_unlabeled, "unlabeled")):
        if asked and n and got < asked and (what != "unlabeled" or sampler.uses_unlabeled):
            log(f"note: {flag} {asked} is more than the {n} {what} examples: batches of {got}")


def _differences(now: dict[str, Any], then: dict[str, Any]) -> list[str]:
    """``name value (run: saved value)`` for each setting recorded in ``then`` (a
    checkpoint's :func:`_settings`) that ``now`` gives otherwise, the method's fields one by
    one; a setting a later erat added is not in ``then``, and not compared."""
    out = []
    for key in sorted(then):
        a, b = now.get(key), then[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += [differs(f"{key}.{k}", a.get(k), b[k]) for k in sorted(b) if a.get(k) != b[k]]
        elif a != b:
            out.append(differs(key, a, b) if key != "data" else "the training data")
    return out


def _settings(method: Method, options: FitOptions, data: FitData) -> dict[str, Any]:
    """What a checkpoint was trained with, compared on resume: the method (its name and
    fields), the options a resumed run may not change, the training data's SHA-256 and its
    augmentation; plain values only (a checkpoint is read with ``weights_only``)."""
    fields = dataclasses.asdict(method) if dataclasses.is_dataclass(method) else {}
    tensors = [data.x, data.y, *([data.x_unlabeled] if data.x_unlabeled is not None else [])]
    return _plain({"method": {"name": getattr(method, "name", type(method).__qualname__),
                              **fields},
                   "options": {k: v for k, v in dataclasses.asdict(options).items()
                               if k not in RESUME_MAY_CHANGE},
                   "data": tensor_sha256(tensors), "augment": data.augment})


def _plain(value: Any) -> Any:
    """``value`` as plain Python: numbers as ``int`` or ``float``, mappings and sequences
    walked, any other object by its type's name."""
    value = python_number(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return type(value).__qualname__


def _check_schedule(loop: Loop, start: int) -> None:
    """Refuse to resume a run whose first ``start`` epochs made another number of updates
    than this schedule plans (trained by an erat whose epochs were another length: a
    labels-only run made one update per epoch before 2026-12-02, it makes the unlabeled
    set's now; the learning rate and the cost would mix both)."""
    done = next((r.get("updates") for r in reversed(loop.history) if r.get("epoch") == start),
                None)
    planned = min(start * loop.schedule.per_epoch, loop.schedule.updates)
    if done is not None and done != planned:
        raise UserError(f"--resume: the run made {done} updates in its first {start} "
                        f"epoch(s), and this erat plans {planned} (its epochs are another "
                        "length); train it again into a new folder")


def _check_shards(sampler: EpochSampler, dist: distributed.Dist) -> None:
    """Refuse batches that do not divide among the processes (their gradients are averaged
    as equal shares): the labeled batch as used (``--batch-size``, or every label when
    there are fewer) and the unlabeled one when the method reads it."""
    if not dist.enabled:
        return
    sizes = [("--batch-size", sampler.labeled_batch)]
    if sampler.uses_unlabeled:
        sizes.append(("--unlabeled-batch-size", sampler.unlabeled_batch))
    for flag, size in sizes:
        if size % dist.world_size:
            within = "" if flag != "--batch-size" or size == sampler.options.batch_size \
                else f" (the {size} labels: fewer than --batch-size)"
            raise UserError(f"{flag}: a batch of {size}{within} does not divide among "
                            f"{dist.world_size} processes")


class Loop:
    """The state of one :func:`fit` call: data on the device, schedule, optimiser."""

    def __init__(self, model: nn.Module, method: Method, data: FitData, options: FitOptions,
                 run_dir: RunDir | None, log: Callable[[str], None], dist: distributed.Dist):
        self.model, self.method, self.data, self.options = model, method, data, options
        self.run_dir, self.log, self.dist = run_dir, log, dist
        if not any(p.requires_grad for p in model.parameters()):
            raise UserError("the model has no trainable parameters (none with requires_grad): "
                            "nothing to train")
        self.device = next(model.parameters()).device
        uses = data.x_unlabeled is not None and method.uses_unlabeled
        self.sampler = EpochSampler(options, len(data.y), data.unlabeled_count
                                    if data.x_unlabeled is None else len(data.x_unlabeled), uses)
        _check_shards(self.sampler, dist)
        _say_clipped(self.sampler, options, log)
        outputs = sample_outputs(model, data.x[:8].to(self.device), name="FitData.x")
        within_outputs(data.y, outputs, "FitData.y")
        self.schedule = plan(method, model, options, self.sampler)
        self.sampler.updates = self.schedule.per_epoch
        if options.budget_epochs and self.schedule.epochs < options.budget_epochs:
            u, e = self.schedule.updates, self.schedule.epochs
            log(f"note: --budget {options.budget:g} pays for {u} update{'s' * (u != 1)}: "
                f"{e} epoch{'s' * (e != 1)}, not --budget-epochs {options.budget_epochs}")
        self.fast = fast.active(options, self.device)
        if note := fast.idle_flags(options, self.fast):
            log(note)
        if options.amp != "none" and self.device.type == "cpu":
            log(f"note: --amp {options.amp} on the CPU is usually slower than float32 (mixed "
                "precision pays on GPUs; erat bench --amp none,bf16 measures it here)")
        conv = self.fast and fast.convolutional(model)
        self.amp = "bf16" if conv and options.fast_bf16 and options.amp == "none" else options.amp
        if self.amp != "none" and fast.float32_head(model, outputs.shape[1]) is None:
            log(f"note: no nn.Linear of {outputs.shape[1]} outputs ends the model: its logits "
                f"stay {self.amp} under autocast (the energy's differences carry their rounding)")
        self.channels_last = options.channels_last or (conv and options.fast_channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer, scheduler = build_optimizer(options, model, self.schedule.updates,
                                               **(fast.optimizer_kwargs(self.device)
                                                  if self.fast else {}))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.val_eps = val_radius(method, options, data.val is not None)
        self.val_norm = val_ball(method, options)[0]
        self.settings = _settings(method, options, data) if run_dir is not None else None
        if data.val is not None:
            n, norm = min(options.val_n, len(data.val[1])), self.val_norm
            drawn = " (drawn once, seed 0)" if n < len(data.val[1]) else ""
            log(f"validation after each epoch on {n} of {len(data.val[1])} held-out images"
                f"{drawn}: "
                + (f"val CLEAN/ROBUST (PGD-{norm_name(norm)} at "
                   f"{radius_name(norm, f'{self.val_eps:g}')}, "
                   f"{options.val_steps} steps)" if self.val_eps else "val CLEAN"))
        self.state = TrainState(model, optimizer, scheduler, scaler)
        self.step_model = self._step_model(data)
        self.skips = cudagraph_skips()  # (the warning below: once, for this run's graphs)
        on_device = self.fast and options.fast_data
        self.x = fast.DeviceImages(data.x, self.device) if on_device else data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.xu = None if not uses else fast.DeviceImages(data.x_unlabeled, self.device) \
            if on_device else data.x_unlabeled.to(self.device)
        self.watched = None if data.x_unlabeled is None else (  # (the guard's: see there)
            self.xu if uses else data.x_unlabeled)[:WATCHED].to(self.device)
        self.gen_device = self.device if on_device else torch.device("cpu")
        self.augment = data.augment if options.augment else "none"
        self.history: list[dict[str, Any]] = []
        self.untimed_compile = 2  # this session's first compiled updates still to come

    def _step_model(self, data: FitData) -> nn.Module:
        """The module the method calls (:func:`erat.graphs.step_module`: ``compile``, or the
        fast path's ``fast_graph``, refused for a model with graph breaks); said when the
        method differentiates twice, so that the model runs eager."""
        graphs = self.fast and self.options.fast_graph
        stepped = step_module(self.model, self.method, graphs=graphs,
                              compile=self.options.compile)
        if stepped is self.model and (graphs or self.options.compile):
            self.log("note: this method differentiates through an input gradient (a double "
                     "backward), which compiled graphs cannot: the model runs eager")
        elif graphs:
            check_capturable(self.model, data.x[:2].to(self.device))
        return stepped

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; its metrics row (without validation): ``seconds``, its wall time;
        ``compile_seconds``, the part of it that this session's first two compiled updates
        took (compilation, then the CUDA graphs' warm-up and capture), where there were any
        (a later recompilation, a new shape say, stays in ``seconds``)."""
        opt, sched, dist = self.options, self.schedule, self.dist
        gen = torch.Generator(self.gen_device).manual_seed(opt.seed * 100_003 + epoch)
        first = (epoch - 1) * sched.per_epoch
        n = min(sched.per_epoch, sched.updates - first)
        t0 = time.perf_counter()
        self.model.train()
        sums: dict[str, Any] = {}
        compile_seconds = None
        bar = tqdm(self.sampler.batches(gen), total=n, desc=f"epoch {epoch}/{sched.epochs}",
                   disable=None if opt.progress and dist.is_main else True, leave=False)
        for i, (li, ui) in enumerate(bar):
            if i == n:
                break
            idx = li.to(self.device)
            batch = Batch(self._prepare(self.x[idx], gen), self.y[distributed.shard(idx, dist)],
                          updates=first + i, total_updates=sched.updates, checked=True)
            if ui is not None:
                batch.x_unlabeled = self._prepare(self.xu[ui.to(self.device)], gen)
            timed = self.untimed_compile and self.step_model is not self.model
            t1 = time.perf_counter()
            metrics = self._update(batch)
            if timed:  # (compilation, then CUDA graphs' warm-up and capture: said apart)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                compile_seconds = (compile_seconds or 0.0) + time.perf_counter() - t1
                self.untimed_compile -= 1
            for k, v in metrics.items():  # (float64 sums, on the device on the fast path)
                sums[k] = sums.get(k, 0.0) + (v.double() if self.fast else v)
            if not self.fast or (i + 1) % CHECK_EVERY == 0 or i + 1 == n:
                if self.fast:
                    _check_finite(sums["loss"], first + i)
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        seconds = time.perf_counter() - t0
        sums = distributed.mean_over_ranks({k: float(v) for k, v in sums.items()}, dist,
                                           self.device)
        row = {"epoch": epoch, "updates": first + n, "epoch_updates": sched.per_epoch,
               "seconds": round(seconds, 3),
               "lr": self.state.scheduler.get_last_lr()[0],
               **{f"train_{k}": v / n for k, v in sums.items()}}
        if compile_seconds is not None:
            row["compile_seconds"] = round(compile_seconds, 3)
        if sched.counted:
            row["cost"] = sched.cost(first + n)
        skips = cudagraph_skips()
        if skips > self.skips and self.step_model is not self.model:
            self.log(f"erat: warning: {skips - self.skips} compiled graph(s) ran without CUDA "
                     "graphs (torch's cudagraph skips; TORCH_LOGS=perf_hints says why): the "
                     "fast path is slower there")
            self.skips = skips
        return row

    def _update(self, batch: Batch) -> dict[str, Any]:
        return update(self.step_model, self.method, batch, self.state, self.amp, self.device,
                      self.dist, lazy=self.fast,
                      fallback=None if self.step_model is self.model else self._go_eager)

    def _go_eager(self, err: Exception) -> nn.Module:
        """Where the compiled step or its CUDA-graph replay failed (a pattern of calls it
        cannot serve, a compiler that fails: Dynamo's, Inductor's and the graph trees' errors
        are not all a ``RuntimeError``), the run goes on eager, said once; Dynamo's state and
        its graphs' memory are let go."""
        skip = "--no-fast-graph" if self.fast and self.options.fast_graph else \
            "training without --compile"
        self.log(f"erat: warning: the compiled step failed ({first_line(err)}); this run goes "
                 f"on eager ({skip} skips the attempt)")
        import torch._dynamo

        torch._dynamo.reset()
        self.step_model = self.model
        return self.model

    def _prepare(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """This process's share of the global batch ``x``, augmented as one process would
        augment it (the draws are the whole batch's: each image's crop is its own)."""
        x = distributed.shard(augment_batch(x, self.augment, gen), self.dist)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def record(self, row: dict[str, Any]) -> None:
        """Validate, log, select, and write the epoch's metrics and checkpoint."""
        try:
            if self.data.val is not None:
                row |= validate(self.model, self.data.val, self.options, self.val_eps,
                                self.device, self.val_norm)
            if self.data.test is not None:
                row["test_acc"] = clean_accuracy(self.model, *self.data.test)
        except NonFiniteOutputs as err:  # (the model is the run's own: it diverged)
            raise UserError(f"training diverged by epoch {row['epoch']}: the model's outputs "
                            f"are not finite at {err.bad} of {err.n} held-out images; try a "
                            "smaller --lr (the last checkpoint is the epoch before)") from None
        warning = guard(self.model, self.watched, self.y, row, self.history,
                        perturbed=ball(self.method)[1] is not None,
                        unlabeled_term=self.xu is not None)
        if warning:
            row["guard"] = warning
            self.log(f"erat: warning: {warning}")
        self.history.append(row)
        if self.dist.is_main and self.run_dir is not None:
            self.state.select(row, self.options, self.run_dir)
            self.run_dir.append_metrics(row)
            self.run_dir.save_checkpoint({**self.state.checkpoint(row["epoch"]),
                                          "settings": self.settings})
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
                         _train_seconds(self.history), history=self.history, ran=self.ran())

    def ran(self) -> dict[str, Any]:
        """What this session trained with, the flags' outcome (``auto`` resolved, the fast
        path's precision and layout, a compiled step that fell back to eager) and the values
        the method's unset mode-dependent settings took (its optional ``defaults``)."""
        defaults = getattr(self.method, "defaults", None)
        return {"device": str(self.device), "processes": self.dist.world_size,
                "threads": torch.get_num_threads(), "amp": self.amp,
                "channels_last": bool(self.channels_last), "fast_path": bool(self.fast),
                "compiled": self.step_model is not self.model,
                "method_defaults": defaults(self.xu is not None, self.schedule.updates)
                if defaults else {}}


def _train_seconds(history: list[dict]) -> float:
    return round(sum(r.get("seconds", 0.0) for r in history), 3)


def update(model: nn.Module, method: Method, batch: Batch, state: TrainState, amp: str,
           device: torch.device, dist: distributed.Dist, *, lazy: bool = False,
           fallback: Callable[[Exception], nn.Module] | None = None) -> dict[str, Any]:
    """One optimiser update on ``batch``; returns the method's metrics as floats, after
    refusing a non-finite loss before the step. With ``lazy`` (the fast path) neither: the
    metrics stay detached tensors on the device and the caller checks the loss every few
    updates (no host synchronisation per update). ``fallback``: where the loss or its
    gradients fail on ``model`` (not with a ``UserError``), the model it returns computes them
    again, before anything is stepped (the failed attempt may have updated BatchNorm's
    running statistics once)."""
    try:
        out = _loss_and_grads(model, method, batch, state, amp, device, lazy)
    except Exception as err:
        if fallback is None or isinstance(err, UserError):
            raise
        out = _loss_and_grads(fallback(err), method, batch, state, amp, device, lazy)
    distributed.average_gradients(model, dist)
    distributed.broadcast_buffers(model, dist)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if lazy:
        return {k: torch.as_tensor(v).detach() for k, v in out.metrics.items()}
    return {k: float(v) for k, v in out.metrics.items()}


def _loss_and_grads(model: nn.Module, method: Method, batch: Batch, state: TrainState,
                    amp: str, device: torch.device, lazy: bool) -> Any:
    if isinstance(model, Cloned):
        model.start_update()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = method(model, batch)
    if not lazy and not torch.isfinite(out.loss):
        raise UserError(f"the training loss became {out.loss.item()} at update "
                        f"{batch.updates}; lower --lr or check the data")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    return out


def _check_finite(loss_sum: Tensor, update: int) -> None:
    """Stop when a training loss (the ``loss`` metric) since the last check was NaN or
    infinite (their sum is): the fast path's check, every ``CHECK_EVERY`` updates."""
    if not math.isfinite(float(loss_sum)):
        raise UserError(f"the training loss became {float(loss_sum)} by update {update}; "
                        "lower --lr or check the data")


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
    parts.append(f"{row['seconds']:.1f} s" + (f" ({row['compile_seconds']:.1f} compiling)"
                                               if row.get("compile_seconds") else ""))
    if row.get("cost") is not None:
        parts.append(f"cost {row['cost']:.2f} ERM epochs")
    return "  ".join(parts)
