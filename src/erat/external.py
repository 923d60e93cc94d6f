"""A model from outside erat, evaluated with no run folder (``erat eval --model ...``):

- ``--model MODULE:FACTORY --weights FILE``: the factory (:mod:`erat.models.factory`; it
  runs your code) builds the network, ``FILE`` holds its state dict (``torch.save(
  model.state_dict(), FILE)``; a dict with a ``state_dict`` entry and DataParallel's
  ``module.`` prefixes are accepted), read with ``weights_only=True``, so a file that holds
  pickled code is refused, never run;
- ``--model FILE``: a TorchScript file (``torch.jit.save``) or a ``torch.export`` program
  (``torch.export.save``, ``.pt2``; export it in eval mode and with a dynamic batch
  dimension). The tensors inside a ``.pt2`` are loaded with weights-only unpickling forced
  (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``: torch would otherwise unpickle them unrestricted).

Inputs stay pixels in ``[0, 1]``, where every radius is measured (docs/METHOD.md section 1):
an :class:`~erat.models.Normalize` in front of the network maps them to what it expects,
``((LO + (HI - LO) x) - MEAN) / STD`` per channel for ``--input-range LO,HI`` and
``--normalize MEAN,STD`` (both in the network's input units; defaults ``0,1`` and none).

The test data is ``--dataset`` (a registered dataset with ``--data-dir``, or your own,
``folder:PATH`` / ``npz:PATH``). The result records the model's file and SHA-256; the
resumable state of an interrupted evaluation goes to a cache folder keyed by what defines
the model (:func:`erat.rundir.cache_state_path`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from erat.datasets import DatasetInfo, dataset_info, load_dataset
from erat.errors import UserError, first_line
from erat.fields import flag, flagged, param
from erat.files import load_file_and_digest
from erat.inputs import first_n
from erat.models import Normalize, check_kwargs
from erat.models.factory import build_factory, is_factory, source_sha256
from erat.rundir import cache_state_path


@dataclass
class ExternalOptions:
    """The flags of ``erat eval`` / ``erat energy`` for a model from outside erat."""

    model: str | None = param(None, "instead of a run folder: MODULE:FACTORY (with --weights), "
                                    "or a TorchScript or torch.export (.pt2) file")
    weights: str | None = param(None, "the state dict of --model MODULE:FACTORY (read with "
                                      "weights_only=True)")
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments of --model MODULE:FACTORY, as JSON"})
    dataset: str | None = param(None, "with --model: the test data, a registered dataset (with "
                                      "--data-dir) or folder:PATH or npz:PATH")
    test_split: float | None = param(None, "with --model and your own data without a test "
                                           "split: the fraction held out (fixed seed)")
    resize: int | None = param(None, "with --model and your own data: resize every image to "
                                     "N x N pixels")
    input_range: str = param("0,1", "LO,HI: the pixel range --model expects; erat's [0, 1] "
                                    "pixels are scaled to it (radii stay in [0, 1] units)")
    normalize: str | None = param(None, "MEAN,STD (or C means then C stds) in --model's input "
                                        "units: normalisation put in front of it")

    def given(self) -> list[str]:
        """The flags set to other than their defaults."""
        default = ExternalOptions()
        return [flag(f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)]


class External(NamedTuple):
    """What an evaluation of an outside model reads: the model (inputs in ``[0, 1]``), the
    first ``n`` test examples, the test set's size, what the result records, and where the
    resumable state goes (None: nowhere)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    n_total: int
    record: dict[str, Any]
    state_key: str


def open_external(options: ExternalOptions, *, n: int | None, data_dir: str | None,
                  device: torch.device, seed: int = 0) -> External:
    """The model ``options`` name and its test data; every flag is checked first, then the
    data, then the model (its weights must fit it; it must give logits for the data; a
    factory without ``--weights`` is built from ``seed``)."""
    if not options.dataset:
        raise UserError("--model needs --dataset: the test data to evaluate it on (a registered "
                        "dataset with --data-dir, or folder:PATH or npz:PATH)")
    lo, hi = parse_range(options.input_range)
    data_options = {"test_split": options.test_split, "resize": options.resize}
    info = dataset_info(options.dataset, data_dir, **data_options)
    mean, std = parse_normalize(options.normalize, info.shape[0])
    x, y = load_dataset(options.dataset, "test", data_dir, **data_options).tensors
    total = len(x)
    x, y = first_n(x, y, n)
    net, record = _network(options, info, seed)
    model = nn.Sequential(OrderedDict(normalize=input_layer(lo, hi, mean, std), net=net))
    for m in model.modules():  # (an exported program refuses .eval(); the flag is enough)
        m.training = False
    model = model.to(device)
    _probe(model, x[:3].to(device), options.model, info.num_classes, record["model_kind"])
    record |= {"dataset": options.dataset, "inputs": {
        "range": [lo, hi], "normalize": None if options.normalize is None else
        {"mean": list(mean), "std": list(std)}}}
    if info.details is not None:
        record["data"] = info.details
    key = hashlib.sha256(json.dumps([record, options.model_kwargs], sort_keys=True,
                                    default=str).encode()).hexdigest()
    return External(model, x, y, total, record, key)


def state_path(external: External, name: str) -> Path | None:
    return cache_state_path(external.state_key, name)


def parse_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-range wants LO,HI (e.g. 0,255), got {text!r}") from None
    if not (float("-inf") < lo < hi < float("inf")):
        raise UserError(f"--input-range wants finite LO < HI, got {text!r}")
    return lo, hi


def parse_normalize(text: str | None, channels: int
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``MEAN,STD`` (one each, for every channel), ``M1,..,MC,S1,..,SC`` or ``MEANS;STDS``;
    ``None``: mean 0, std 1."""
    if text is None:
        return (0.0,) * channels, (1.0,) * channels
    try:
        if ";" in text:
            halves = [[float(v) for v in h.split(",") if v.strip()] for h in text.split(";")]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
            halves = [values[:len(values) // 2], values[len(values) // 2:]]
    except ValueError:
        halves = []
    if len(halves) != 2 or len(halves[0]) != len(halves[1]) or len(halves[0]) not in (
            1, channels):
        raise UserError(f"--normalize wants MEAN,STD or {channels} means then {channels} stds "
                        f"(comma-separated), got {text!r}")
    mean, std = (h * channels if len(h) == 1 else h for h in halves)
    if min(std) <= 0:
        raise UserError(f"--normalize: every std must be positive, got {text!r}")
    return tuple(mean), tuple(std)


def input_layer(lo: float, hi: float, mean: tuple[float, ...], std: tuple[float, ...]
                ) -> Normalize:
    """``((lo + (hi - lo) x) - mean) / std`` as one :class:`Normalize` on ``x`` in [0, 1]:
    ``(x - (mean - lo) / (hi - lo)) / (std / (hi - lo))``."""
    scale = hi - lo
    return Normalize([(m - lo) / scale for m in mean], [s / scale for s in std])


def _network(options: ExternalOptions, info: DatasetInfo, seed: int = 0
             ) -> tuple[nn.Module, dict[str, Any]]:
    """The network and what identifies it: the name, its file and the file's SHA-256."""
    spec = options.model
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".py":
        raise UserError(f"--model {spec}: a Python file; name the function or class in it that "
                        f"builds the network: --model {spec}:FACTORY")
    if path.is_file():
        for flag, value in (("--weights", options.weights),
                            ("--model-kwargs", options.model_kwargs)):
            if value:
                raise UserError(f"{flag} goes with --model MODULE:FACTORY; {path} holds its "
                                "own network and weights")
        data = path.read_bytes()
        net, kind = _program(path, data)
        return net, {"model": spec, "model_kind": kind, "model_file": str(path.resolve()),
                     "model_sha256": hashlib.sha256(data).hexdigest()}
    if not is_factory(spec):
        raise UserError(f"--model {spec}: no such file, and not MODULE:FACTORY")
    try:
        check_kwargs(options.model_kwargs, ("in_shape", "num_classes"))  # (what it is given)
    except UserError as err:
        raise flagged(err) from None
    with torch.random.fork_rng(devices=[]):  # (the weights it builds: the same each time)
        torch.manual_seed(seed)
        net = build_factory(spec, in_shape=info.shape, num_classes=info.num_classes,
                            **options.model_kwargs)
    record: dict[str, Any] = {"model": spec, "model_kind": "factory", "model_file": None,
                              "model_sha256": None, "code_sha256": source_sha256(spec)}
    if options.weights is None:
        warnings.warn(f"no --weights: evaluating the weights {spec} builds by itself",
                      stacklevel=2)
        return net, record
    wpath = Path(options.weights).expanduser()
    blob, sha = load_file_and_digest(wpath, "cpu", "state dict (torch.save(model.state_dict(), "
                                                   "FILE))")
    npz = " (an npz file's `classes` names them all)" \
        if str(options.dataset).startswith("npz:") else ""
    _load_state(net, blob, wpath, spec, shapes_hint=f"; {spec} was built for "
                f"{info.num_classes} classes, as the data counts them{npz}")
    return net, record | {"model_file": str(wpath.resolve()), "model_sha256": sha}


def _load_state(net: nn.Module, blob: Any, path: Path, spec: str, shapes_hint: str = ""
                ) -> None:
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors "
                        "(torch.save(model.state_dict(), FILE))")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing from the file", missing),
                                    ("in the file, not in the model", unexpected),
                                    ("shapes differ", shapes)) if keys]
        raise UserError(f"the weights in {path} do not fit {spec} ({'; '.join(parts)})"
                        + (shapes_hint if shapes else ""))
    net.load_state_dict(state)


def _program(path: Path, data: bytes) -> tuple[nn.Module, str]:
    """A TorchScript or ``torch.export`` file, told apart by the records of its archive."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        names = []
    if any(n.endswith("/constants.pkl") for n in names) or \
            any("/code/__torch__" in n for n in names):
        with warnings.catch_warnings():  # (torch.jit's own deprecation note; its category
            warnings.simplefilter("ignore", FutureWarning)  # differs between torch releases)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return torch.jit.load(io.BytesIO(data), map_location="cpu"), "torchscript"
            except Exception as e:
                raise UserError(f"cannot read TorchScript file {path}: {first_line(e)}") from e
    if any(n.endswith("archive_format") or n.endswith("models/model.json") for n in names):
        try:
            with _weights_only_unpickling():
                program = torch.export.load(io.BytesIO(data))
        except Exception as e:
            raise UserError(f"cannot read torch.export file {path}: "
                            f"{type(e).__name__}: {first_line(e)}") from e
        return program.module(), "torch.export"
    hint = ("a torch.save file: an erat run's model.pt is evaluated as erat eval RUN_OR_FILE "
            "without --model; a state dict goes as --weights with --model MODULE:FACTORY"
            if any(n.endswith("data.pkl") for n in names) else "not a zip archive")
    raise UserError(f"{path} is not a TorchScript or torch.export (.pt2) file ({hint})")


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True``, whatever it asks for."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = "1"
    os.environ.pop(keys[1], None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _probe(model: nn.Module, x: Tensor, spec: str, num_classes: int, kind: str) -> None:
    """Forward passes on one and on three test images: logits ``[B, K]`` with
    ``K >= num_classes`` (labels index the logits), for more than one batch size."""
    for batch in sorted({1, min(3, len(x))}):
        try:
            with torch.no_grad():
                out = model(x[:batch])
        except Exception as e:  # the user's network: any error is theirs to read
            batchwise = batch > 1 or ".size()[0]" in str(e)  # (else the image's shape)
            hint = " (export it with a dynamic batch dimension)" \
                if kind == "torch.export" and batchwise else ""
            lines = str(e).strip().splitlines()  # (TorchScript's cause is its last line)
            why = re.sub(r"^\w+(Error|Exception): ", "", lines[-1].strip()) \
                if kind == "torchscript" and lines else first_line(e)
            raise UserError(f"--model {spec} fails on {batch} test image(s) "
                            f"{list(x[:batch].shape)}: {type(e).__name__}: {why}{hint}") from e
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != batch:
            shown = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserError(f"--model {spec} gives {shown} for {batch} image(s); erat needs "
                            f"logits [{batch}, classes]")
        if out.shape[1] < num_classes:
            raise UserError(f"--model {spec} gives {out.shape[1]} logits; the test data has "
                            f"{num_classes} classes")
