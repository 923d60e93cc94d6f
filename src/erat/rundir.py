"""A run folder: the one place that knows its files, the model file's metadata, its lock,
and which cached results still belong to the weights beside them.

========================  ================================================================
file                      what it holds
========================  ================================================================
``config.yaml``           the resolved training configuration
``metrics.jsonl``         one JSON line per epoch
``checkpoint.pt``         full training state after every epoch (removed when the run
                          finishes, unless ``keep_checkpoint``)
``best.pt``               the weights of the best validation epoch so far (``select``)
``split.json``            the labeled / validation indices of the training set, and the
                          SHA-256 of the training and test data (``--resume`` checks them)
``model.pt``              the trained model: ``{"state_dict", "meta"}`` (:meth:`save_model`)
``model-last.pt``         the last epoch's model, when ``model.pt`` is another epoch's
``eval.json``,            cached results; each records the SHA-256 of the weights it was
``energy.json``           computed on and is recomputed when they differ (:meth:`cached`)
``model-meta.json``       ``model.pt``'s metadata and file SHA-256, left when the weights
                          were dropped (:meth:`drop_weights`): the results stay readable
``.lock``                 held while a process writes the folder
========================  ================================================================

Every file is written atomically (:mod:`erat.files`) and loaded with ``weights_only=True``.

Example::

    run = RunDir("runs/mnist-er")
    model = run.load_model()
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn

from erat import __version__
from erat.errors import EnvironmentProblem, UserError, first_line, os_problem
from erat.files import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    check_writable_file,
    load_file,
    load_file_and_digest,
    probe_folder,
    read_yaml,
    remove_temps,
    sha256,
    tensor_sha256,
)


class RunDir:
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    BEST = "best.pt"
    SPLIT = "split.json"
    MODEL = "model.pt"
    MODEL_LAST = "model-last.pt"
    MODEL_META = "model-meta.json"
    EVAL = "eval.json"
    EVAL_LAST = "eval-last.json"  # (a suite's: model-last.pt's evaluation)
    EVAL_AUTOATTACK = "eval-autoattack.json"  # (a suite's AutoAttack of a group's best)
    ENERGY = "energy.json"
    LOCK = ".lock"
    FILES = (CONFIG, METRICS, CHECKPOINT, BEST, SPLIT, MODEL, MODEL_LAST, MODEL_META, EVAL,
             EVAL_LAST, EVAL_AUTOATTACK, ENERGY)
    KEPT = "*.previous.json"  # (a result of other settings, kept beside: cached)
    STATES = ".eval*.state.pt"  # (an evaluation's saved progress: state_path)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._held: dict[str, Any] | None = None  # (the lock this object holds: lock())

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- what the folder holds ---------------------------------------------------------
    def run_files(self) -> list[Path]:
        """Files of a run present in the folder (results and evaluation states included)."""
        if not self.path.is_dir():
            return []
        found = [self.path / f for f in self.FILES if (self.path / f).exists()]
        return found + sorted(self.path.glob(self.KEPT)) + sorted(self.path.glob(self.STATES))

    def holds_run(self) -> bool:
        return bool(self.run_files()) or self.replaced()

    def finished(self) -> bool:
        """Trained to its end: ``model.pt`` is there, or was, before its weights were
        dropped."""
        return (self.path / self.MODEL).is_file() or self.weights_dropped()

    def weights_dropped(self) -> bool:
        return not (self.path / self.MODEL).exists() and (self.path / self.MODEL_META).is_file()

    def check_output(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before any work, a folder that cannot be written or would be clobbered:
        a new run needs an empty folder (or ``overwrite``); a resumed one needs a run."""
        check_writable_dir(self.path, "--out")
        if resume and overwrite:
            raise UserError("--resume and --overwrite contradict each other; choose one")
        if resume and not (self.path / self.CONFIG).is_file():
            raise UserError(f"--resume: {self.path} holds no run to resume (no {self.CONFIG})")
        if not resume and not overwrite and self.holds_run():
            names = ", ".join([p.name for p in self.run_files()[:4]] + (
                [f"{self.REPLACED}/, a run an interrupted --overwrite set aside"]
                if self.replaced() else []))
            raise UserError(f"{self.path} already holds a run ({names}); pass --resume to "
                            "continue it, --overwrite to replace it, or choose another --out")

    def clear(self) -> None:
        """Remove every run file (``--overwrite``), evaluation states and temporaries."""
        for f in self.run_files():
            f.unlink(missing_ok=True)
        self.remove_temps()

    REPLACED = ".replaced"  # (--overwrite: the old run, until the new one has an epoch)

    def set_aside(self) -> None:
        """Move the run's files into ``.replaced/`` (``--overwrite``): :meth:`restore` puts
        them back when the new run fails before its first epoch, and the new run's first
        epoch (:meth:`append_metrics`) deletes them. Where a killed ``--overwrite`` left
        ``.replaced/`` beside files without an epoch, those are cleared and it is kept."""
        aside = self.path / self.REPLACED
        if aside.is_dir() and not self.metrics():
            self.clear()
            return
        shutil.rmtree(aside, ignore_errors=True)
        files = self.run_files()
        if files:
            aside.mkdir()
            for f in files:
                f.rename(aside / f.name)
        self.remove_temps()

    def restore(self) -> None:
        """The files :meth:`set_aside` moved, back in place."""
        aside = self.path / self.REPLACED
        if aside.is_dir():
            for f in aside.iterdir():
                f.rename(self.path / f.name)
            aside.rmdir()

    def replaced(self) -> bool:
        """Whether ``.replaced/`` holds a run set aside by an ``--overwrite`` that has not
        had its first epoch."""
        return (self.path / self.REPLACED).is_dir()

    def remove_temps(self) -> list[Path]:
        """Temporaries of interrupted atomic writes (call while holding the lock)."""
        if not self.path.is_dir():
            return []
        removed = remove_temps(self.path, list(self.FILES))
        for tmp in self.path.glob("..eval*"):  # temporaries of evaluation states
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        return removed

    # --- the lock ----------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` while writing: a second writer is refused with the holder's name;
        a lock left by a dead process on this machine is taken over. Folders it made are
        removed again if they are empty at the end (a run that failed before its first
        epoch leaves no trace)."""
        made = [p for p in (self.path, *self.path.parents)  # (``x/../y`` makes ``x`` too)
                if p.name not in ("", ".", "..") and not p.exists()]
        path = self.path / self.LOCK
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
                "since": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        try:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise os_problem(err, f"create --out {self.path}") from err
            self._take(path, mine)
            self._held = mine
            yield
        finally:
            self._held = None
            if _read_lock(path) == mine:
                path.unlink(missing_ok=True)
            for folder in made:  # (the deepest first; one not empty, or gone, is kept)
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _take(self, path: Path, mine: dict[str, Any]) -> None:
        """Create the lock file ``path`` holding ``mine``, taking over a dead holder's. The
        lock appears with its content (a hard link of a written file): an empty lock, read
        by a second writer between its creation and its content, was taken for a dead one."""
        for _ in range(3):
            try:
                _create_with(path, json.dumps(mine))
            except FileExistsError:
                holder = _read_lock(path)
                if holder is not None and _alive(holder):
                    raise UserError(
                        f"{self.path} is being written by process {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')} "
                        f"({holder.get('command', '')[:60]!r}); wait for it, or remove "
                        f"{path} if that process is gone") from None
                stale = path.with_name(f"{self.LOCK}.stale.{os.getpid()}")
                try:
                    os.replace(path, stale)  # atomic: one taker wins
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            except OSError as err:
                raise os_problem(err, f"write {path}") from err
            return
        raise UserError(f"cannot take the lock {path}; remove it if no erat process runs")

    # --- configuration, metrics, split -------------------------------------------------
    def _check_held(self) -> None:
        """Refuse to write a run's files into a folder removed (or whose lock was taken)
        while this object held its lock: writing would make a new folder holding part of a
        run that looks finished."""
        if self._held is not None and _read_lock(self.path / self.LOCK) != self._held:
            raise EnvironmentProblem(f"{self.path} was removed while this run trained (its "
                                     f"{self.LOCK} is gone): stopped, nothing written there")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(yaml.safe_dump(config, sort_keys=False), self.path / self.CONFIG)

    def read_config(self, missing: Any = ...) -> dict[str, Any]:
        """The folder's ``config.yaml``; ``missing`` when there is none, if given (else
        reading it fails as a missing file does)."""
        if missing is not ... and not (self.path / self.CONFIG).exists():
            return missing
        data = read_yaml(self.path / self.CONFIG, "run configuration")
        if not isinstance(data, dict):
            raise UserError(f"{self.path / self.CONFIG} must hold a mapping of settings, "
                            f"not a {type(data).__name__}")
        return data

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one epoch's line, first dropping lines of that epoch or later (a resume)."""
        self._check_held()
        kept = [r for r in self.metrics() if r.get("epoch", 0) < row["epoch"]]
        text = "".join(json.dumps(r) + "\n" for r in [*kept, row])
        atomic_write_text(text, self.path / self.METRICS)
        shutil.rmtree(self.path / self.REPLACED, ignore_errors=True)  # (--overwrite's old run)

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / self.METRICS
        if not path.exists():
            return []
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path} line {i}: not valid JSON ({err.msg})") from err
        return rows

    def write_split(self, split: dict[str, Any]) -> None:
        atomic_write_json(split, self.path / self.SPLIT)

    def read_split(self) -> dict[str, Any]:
        """``split.json`` (empty when absent or unreadable: a run from before it was kept)."""
        try:
            saved = json.loads((self.path / self.SPLIT).read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    # --- training state ----------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self._check_held()
        atomic_save(state, self.path / self.CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None; an unreadable one is a ``UserError`` that
        says how to start afresh."""
        path = self.path / self.CHECKPOINT
        if not path.exists():
            return None
        try:
            return load_file(path, what="checkpoint")
        except UserError as err:
            raise UserError(f"{err}; --overwrite starts the run afresh") from err

    def save_best(self, model: nn.Module, epoch: int, score: float) -> None:
        self._check_held()
        atomic_save({"state_dict": _cpu_state(model), "epoch": epoch, "score": score},
                    self.path / self.BEST)

    def load_best(self) -> dict[str, Any] | None:
        path = self.path / self.BEST
        return load_file(path) if path.exists() else None

    def finish(self, keep_checkpoint: bool) -> None:
        """After ``model.pt`` is written: drop the training state unless asked to keep it."""
        if not keep_checkpoint:
            for name in (self.CHECKPOINT, self.BEST):
                (self.path / name).unlink(missing_ok=True)

    # --- the trained model -------------------------------------------------------------
    def save_model(self, model: nn.Module | dict, *, dataset: str, model_name: str,
                   model_kwargs: dict, in_shape: tuple[int, ...], num_classes: int,
                   mean: tuple[float, ...], std: tuple[float, ...], method: dict,
                   last: bool = False, **extra: Any) -> dict[str, Any]:
        """``model.pt`` (``model-last.pt`` when ``last``): the weights and the metadata that
        rebuilds the model (:meth:`load_model`) and says how it was trained (``extra``:
        epochs, seed, labels, selected epoch, cost, ...), with ``state_dict_sha256``, the
        SHA-256 of the weights alone (the file's bytes also hold the training time), which
        two runs share when their weights are equal. Returns the metadata."""
        self._check_held()
        state = model if isinstance(model, dict) else _cpu_state(model)
        meta = {"erat_version": __version__, "dataset": dataset, "model": model_name,
                "model_kwargs": model_kwargs, "in_shape": list(in_shape),
                "num_classes": num_classes, "mean": list(mean), "std": list(std),
                "method": method, **extra,
                "state_dict_sha256": tensor_sha256(list(state.values()))}
        atomic_save({"state_dict": state, "meta": meta},
                    self.path / (self.MODEL_LAST if last else self.MODEL))
        return meta

    def model_file(self) -> Path:
        return self.path / self.MODEL

    def read_meta(self) -> dict[str, Any]:
        if self.weights_dropped():
            return self._kept()["meta"]
        return _read_model_file(self.model_file())["meta"]

    def load_model(self, device: str | torch.device = "cpu", file: str | None = None
                   ) -> nn.Module:
        return load_model(self.path / (file or self.MODEL), device)

    def weights_sha256(self) -> str:
        """The SHA-256 of ``model.pt``'s file (the key of every cached result)."""
        return self._kept()["model_sha256"] if self.weights_dropped() \
            else sha256(self.model_file())

    def drop_weights(self) -> list[Path]:
        """Remove a finished run's weights (``model.pt``, ``model-last.pt``, the training state
        if kept, and the evaluations' resumable states, which only the weights can use),
        leaving ``model.pt``'s metadata and file SHA-256 in
        ``model-meta.json``: the run stays finished and its cached results stay its own, so
        a suite still reports it; what needs the weights (a new evaluation) needs the run
        trained again. For archives of many runs, and for a machine whose model files cannot
        be brought back (``benchmarks/gpu_cifar10_subset.sh``). Returns the files removed."""
        with self.lock():
            if not self.weights_dropped():  # (else a drop cut short: its leftovers go now)
                atomic_write_json({"meta": self.read_meta(),
                                   "model_sha256": self.weights_sha256()},
                                  self.path / self.MODEL_META)
            removed = [p for p in (self.path / f for f in (self.MODEL, self.MODEL_LAST,
                                                           self.CHECKPOINT, self.BEST))
                       if p.exists()] + sorted(self.path.glob(self.STATES))
            for p in removed:
                p.unlink()
        return removed

    def _kept(self) -> dict[str, Any]:
        path = self.path / self.MODEL_META
        try:
            kept = json.loads(path.read_text())
            return {"meta": dict(kept["meta"]), "model_sha256": str(kept["model_sha256"])}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path} is unreadable or not erat's ({first_line(err)})") from err

    # --- cached results ----------------------------------------------------------------
    def cached(self, name: str, settings: dict[str, Any], compute: Callable[[], dict],
               log: Callable[[str], None] | None = None) -> dict:
        """``compute()``, or the result saved in ``name`` by an earlier call with the same
        ``settings`` on the same weights (their SHA-256); anything else is recomputed, and a
        result of other settings is kept beside as ``<name>.previous.json`` (said to
        ``log``): a suite whose evaluation changed replaced its figures without a word."""
        key = {"weights_sha256": self.weights_sha256(), "settings": _jsonable(settings)}
        path = self.path / name
        saved = self._saved(name)
        if saved is not None and _same_key(saved.get("cache_key"), key):
            return saved
        result = {**compute(), "cache_key": key}
        if isinstance(saved, dict):
            kept = path.with_suffix(".previous.json")
            atomic_write_json(saved, kept)
            if log is not None:
                log(f"[{self.path.name}] {name} held other settings or weights: replaced, "
                    f"the earlier one kept as {kept.name}")
        atomic_write_json(result, path)
        return result

    def saved_but(self, name: str, settings: dict[str, Any], setting: str) -> dict | None:
        """The result saved in ``name`` (by :meth:`cached`) on these weights with these
        ``settings`` but another value of ``settings[setting]`` (an earlier version of a
        rule), else None."""
        saved = self._saved(name)
        key = saved.get("cache_key") if saved is not None else None
        if not isinstance(key, dict) or not isinstance(key.get("settings"), dict):
            return None
        given, wanted = dict(key["settings"]), _jsonable(settings)
        if given.pop(setting, None) == wanted.pop(setting, None) or given != wanted:
            return None
        return saved if key.get("weights_sha256") == self.weights_sha256() else None

    def _saved(self, name: str) -> dict | None:
        """The JSON object in ``name``, or None (absent, unreadable, not an object)."""
        try:
            saved = json.loads((self.path / name).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return saved if isinstance(saved, dict) else None

    def state_path(self, name: str) -> Path | None:
        """Where an evaluation keeps its resumable state: the run folder when writable, else
        a cache folder (``$XDG_CACHE_HOME/erat``), else nowhere (None)."""
        if writable(self.path):
            return self.path / f".{name}.state.pt"
        return cache_state_path(self.weights_sha256(), name)


def _same_key(saved: object, key: dict[str, Any]) -> bool:
    """Whether a saved result's ``cache_key`` is ``key``, ``norm: l2`` (the default) named
    or not (a suite block names it once an l-inf run is beside: its runs keep their figures)."""
    def plain(k: object) -> object:
        if not isinstance(k, dict) or not isinstance(k.get("settings"), dict):
            return k
        return {**k, "settings": {s: v for s, v in k["settings"].items()
                                  if not (s == "norm" and v == "l2")}}
    return plain(saved) == plain(key)


def cache_state_path(key: str, name: str) -> Path | None:
    """Where the resumable state of an evaluation with no writable run folder goes:
    ``$XDG_CACHE_HOME/erat/<key[:16]>/<name>.state.pt`` (``key``: the SHA-256 of the weights
    or of what defines the model), or nowhere (None) when that cannot be written."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "erat"
    where = root / key[:16]
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return where / f"{name}.state.pt" if writable(where) else None


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (a real probe: :func:`files.probe_folder`;
    ``os.access`` says yes where a write fails, as root on read-only mounts)."""
    try:
        probe_folder(folder, f"write into {folder}")
    except (UserError, EnvironmentProblem):
        return False
    return True


def model_path(path: str | Path) -> Path:
    """``model.pt`` inside a run folder, or the file itself."""
    path = Path(path)
    return path / RunDir.MODEL if path.is_dir() else path


def check_output_file(path: Path, flag: str, own: str | None = None,
                      source: str | Path | None = None) -> None:
    """Refuse an output file before any work: one that cannot be written
    (:func:`erat.files.check_writable_file`), or one of a run folder's own files (its
    model, configuration, metrics, checkpoint, split, results, saved progress), which
    another writer would break or mislabel; ``own`` names the result the command itself
    writes into the folder of ``source``, the run folder (or model file) it measures
    (``eval.json`` for ``erat eval RUN``), and into no other run's."""
    check_writable_file(path, flag)
    path = Path(path)
    home = None  # (the run folder whose own result this is: of the folder or its model.pt)
    if source is not None:  # (a model file's folder, even where the file links elsewhere)
        check_exists(source)
        source_path = Path(source).absolute()
        if source_path.is_dir() or source_path.name == RunDir.MODEL:
            home = (source_path if source_path.is_dir() else source_path.parent).resolve()
    for where in dict.fromkeys([path, path.resolve()]):
        name = where.name
        taken = name in RunDir.FILES or any(fnmatch.fnmatchcase(name, pattern)
                                            for pattern in (RunDir.KEPT, RunDir.STATES))
        if not taken or not RunDir(where.parent).holds_run():
            continue
        if name != own:
            raise UserError(f"{flag} {path} is the {name} of the run in {where.parent}: "
                            "writing there would break the run; give another file")
        if where.parent.resolve() != home:
            raise UserError(f"{flag} {path} is the {name} of the run in {where.parent}, not "
                            f"a result of {source or 'this model'}: writing there would "
                            "replace it; give another file")


def check_exists(path: str | Path) -> None:
    """``UserError`` naming a run folder or model file that is not there."""
    if not Path(path).exists():
        raise UserError(f"no such run folder or model file: {path}")


def _read_model_file(path: Path, device: str | torch.device = "cpu", digest: bool = False
                     ) -> dict[str, Any]:
    if not path.exists():
        folder = path.parent if path.name in (RunDir.MODEL, RunDir.MODEL_LAST) else path
        check_exists(folder)
        if RunDir(folder).replaced() and not (folder / RunDir.METRICS).exists():
            raise UserError(f"{folder}: no model.pt; an interrupted --overwrite set its run "
                            f"aside in {RunDir.REPLACED}/ (move its files back to use it)")
        if RunDir(folder).weights_dropped():
            raise UserError(f"{folder}: its weights were dropped ({RunDir.MODEL_META} keeps "
                            "what its results need); a new evaluation needs it trained again "
                            "(into an empty folder)")
        if (folder / RunDir.CHECKPOINT).is_file() and not (folder / RunDir.CONFIG).is_file():
            raise UserError(f"{folder}: no {RunDir.MODEL}: erat.fit.fit keeps its training "
                            f"state only ({RunDir.CHECKPOINT}, for resume=True); save the "
                            "model yourself, or train with erat.train.train (erat train), "
                            f"which writes {RunDir.MODEL}")
        if (folder / RunDir.CHECKPOINT).is_file():
            raise UserError(f"{folder}: no {RunDir.MODEL}: the run is unfinished (its "
                            f"{RunDir.CHECKPOINT} is there); continue it: erat train --out "
                            f"{folder} --resume")
        raise UserError(f"{folder}: no {RunDir.MODEL} (is the run finished?)")
    blob, sha = load_file_and_digest(path, device) if digest else (load_file(path, device), None)
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise UserError(f"{path} is not an erat model file")
    return {**blob, "sha256": sha} if digest else blob


class ModelFile(NamedTuple):
    """A model file read once: the model (eval mode), its metadata, the file's SHA-256."""

    model: nn.Module
    meta: dict[str, Any]
    sha256: str
    path: Path


def open_model(path: str | Path, device: str | torch.device = "cpu") -> ModelFile:
    """The model of a run folder or model file, its metadata and digest, from one read."""
    path = model_path(path)
    blob = _read_model_file(path, device, digest=True)
    return ModelFile(_build(path, blob).to(device).eval(), blob["meta"], blob["sha256"], path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run folder (or a model file), in eval mode: inputs in
    ``[0, 1]`` (normalisation is its first layer), logits out; ``device`` as ``--device``
    takes it (``auto``, ``cpu``, ``cuda:1``) or a ``torch.device``."""
    from erat.distributed import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    path = model_path(path)
    return _build(path, _read_model_file(path, device)).to(device).eval()


def _build(path: Path, blob: dict[str, Any]) -> nn.Module:
    from erat.models import build_model

    meta = blob["meta"]
    try:
        model = build_model(meta["model"], in_shape=tuple(meta["in_shape"]),
                            num_classes=meta["num_classes"], mean=meta["mean"], std=meta["std"],
                            **meta.get("model_kwargs", {}))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())  # (load_state_dict's message spans lines)
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        factory = ":" in str(meta.get("model"))
        changed = "; did its factory change since training?" if factory else ""
        raise UserError(f"{path}: the metadata does not rebuild its model{changed} "
                        f"({detail})") from err
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP or ``torch.compile`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _create_with(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` in one step (``FileExistsError`` if it exists): a
    file written beside, then hard-linked; where links are not allowed, created and then
    written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError:  # (a file system without hard links)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    finally:
        tmp.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock's holder still runs (a lock from another machine counts as alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _start_time(pid)
    return holder.get("start") is None or start is None or start == holder["start"]


__all__ = ["ModelFile", "RunDir", "cache_state_path", "load_model", "model_path", "open_model"]
