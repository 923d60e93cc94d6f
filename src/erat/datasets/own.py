"""Your own data, what every scheme shares (``folder:PATH``, ``npz:PATH``): a scheme reads
a :class:`Source` (the splits the data holds, as stored) and :func:`own_data` turns it into
:class:`~erat.datasets.registry.OwnData`, the same for every scheme:

- the test split is the data's own (``test/``, ``x_test``), or, with ``test_split=F``, a
  fraction ``F`` of each class's training images held out with a fixed seed
  (:data:`HOLD_OUT_SEED`), so every run of the same data holds out the same images;
- every check that can be made before training: at least two classes, each with training
  images; as many labels as images; labels in ``0..C-1``; one image shape across splits;
  pixels uint8 or finite floats in ``[0, 1]``; each failure one :class:`DataError` line;
- the facts of the :class:`~erat.datasets.registry.DatasetInfo`, computed from the training
  split: shape ``(C, H, W)``, the number of classes, per-channel mean and standard
  deviation of the ``[0, 1]`` pixels (a constant channel gets std 1, so that ``Normalize``
  stays finite), augmentation ``none``; and ``details`` (path, class names, the layout the
  images were stored in, where the test split came from, sizes) for ``model.pt``.

What was read is kept for the process (keyed by the path, the options and the files' sizes
and modification times), so reading the facts and then each split reads the files once.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from erat.datasets.registry import DataError, DatasetInfo, OwnData

HOLD_OUT_SEED = 0  # the seed of --test-split's hold-out (not --seed: the same images always)
_CACHE: OrderedDict[tuple, OwnData] = OrderedDict()
_CACHE_SIZE = 2


@dataclass
class Source:
    """What a scheme read: each split it holds as ``(x, y)`` (``x`` uint8 or float
    ``[N, C, H, W]``, ``y`` int64 ``[N]``; None for a split it does not hold), the class
    names (their number is the number of classes) and how the images were stored."""

    train: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor] | None
    classes: list[str]
    layout: str
    test_source: str = "test split"  # where the data's own test split is (test/, x_test)


Reader = Callable[[Path, int | None], Source]


def own_data(read: Reader) -> Callable[[str, Path, float | None, int | None], OwnData]:
    """A scheme's loader from its reader ``read(path, resize) -> Source``."""

    @functools.wraps(read)
    def load(name: str, path: Path, test_split: float | None, resize: int | None) -> OwnData:
        check_options(test_split, resize)
        key = (name, str(path.resolve()), test_split, resize, _signature(path))
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        source = read(path, resize)
        own = _prepare(name, path, source, test_split, resize)
        _CACHE[key] = own
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return own

    return load


def check_options(test_split: float | None, resize: int | None) -> None:
    if test_split is not None and not 0 < test_split < 1:
        raise DataError(f"--test-split must be a fraction between 0 and 1, got {test_split}")
    if resize is not None and resize < 1:
        raise DataError(f"--resize must be a positive number of pixels, got {resize}")


def _signature(path: Path) -> tuple:
    """Sizes and modification times of the files under ``path``: what was read is reused
    only while they are unchanged."""
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    out = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(folder, f))
            except OSError:
                continue
            out.append((os.path.join(folder, f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _prepare(name: str, path: Path, source: Source, test_split: float | None,
             resize: int | None) -> OwnData:
    """Checks, the held-out test split, and the facts of the training split."""
    classes = source.classes
    for split, pair in (("training", source.train), ("test", source.test)):
        if pair is not None:  # (first: a label -1 is not a class of its own)
            _check_split(name, split, pair, len(classes))
    if len(classes) < 2:
        raise DataError(f"{name}: one class only ({', '.join(classes) or 'none'}); a "
                        "classifier needs at least two")
    train, test, held_out = source.train, source.test, None
    if test is None and test_split is None:
        raise DataError(f"{name} has no test split (no test/, no x_test): hold out a fraction "
                        "of the training images with --test-split F (e.g. 0.2)")
    if test is not None and test_split is not None:
        raise DataError(f"{name} has its own {source.test_source}; --test-split is for data "
                        "without one")
    if train is None and test_split is not None:
        raise DataError(f"{name} has no training images to hold out a test split from")
    if test is None:
        train, test, held_out = _hold_out(name, train, test_split)
    if train is not None:
        counts = torch.bincount(train[1], minlength=len(classes))
        empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
        if empty:
            one_based = empty == [classes[0]] and str(classes[0]) == "0"
            raise DataError(f"{name}: class(es) {', '.join(map(str, empty[:5]))} have no "
                            "training images" + ("; labels 1..K? erat counts classes from 0"
                                                 " (subtract 1, or name them: classes)"
                                                 if one_based else ""))
        if tuple(train[0].shape[1:]) != tuple(test[0].shape[1:]):
            hint = "" if resize or train[0].shape[1] != test[0].shape[1] else \
                "; pass --resize N to give every image N x N pixels"  # (not the channels)
            raise DataError(f"{name}: training images are {_shape(train[0])} but test images "
                            f"{_shape(test[0])}{hint}")
    info = _info(name, path, source, train, test, held_out, test_split, resize)
    return OwnData(info, train, test)


def _check_split(name: str, split: str, pair: tuple[Tensor, Tensor], num_classes: int) -> None:
    x, y = pair
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} {split} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{name}: no {split} images")
    if x.dtype != torch.uint8:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also NaN
            raise DataError(f"{name}: {split} pixels in [{lo:.8g}, {hi:.8g}]; erat reads uint8 "
                            "0..255 or floats in [0, 1]")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{name}: {split} labels {lo}..{hi} outside 0..{num_classes - 1} "
                        f"({num_classes} classes)")


def _hold_out(name: str, train: tuple[Tensor, Tensor], fraction: float
              ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], list[int]]:
    """A fraction of each class's images (rounded; at least one image of every class stays
    for training), drawn with :data:`HOLD_OUT_SEED`: ``(train, test, test indices)``."""
    x, y = train
    gen = torch.Generator().manual_seed(HOLD_OUT_SEED)
    held: list[Tensor] = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = min(round(fraction * len(idx)), len(idx) - 1)
        held.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    test_idx = torch.cat(held).sort().values
    if len(test_idx) == 0:
        raise DataError(f"{name}: --test-split {fraction} of {len(y)} images holds out none; "
                        "use a larger fraction")
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test_idx] = False
    return (x[keep], y[keep]), (x[test_idx], y[test_idx]), test_idx.tolist()


def _info(name: str, path: Path, source: Source, train: tuple[Tensor, Tensor] | None,
          test: tuple[Tensor, Tensor], held_out: list[int] | None, test_split: float | None,
          resize: int | None) -> DatasetInfo:
    """Shape, classes and per-channel mean/std of the ``[0, 1]`` training pixels (of the
    test split when the data holds no training images: then it is evaluated only)."""
    x = (train if train is not None else test)[0]
    mean = torch.zeros(x.shape[1], dtype=torch.float64)
    sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.split(1024):
        c = chunk.double().div_(255.0) if chunk.dtype == torch.uint8 else chunk.double()
        mean += c.sum((0, 2, 3))
        sq += c.pow(2).sum((0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean /= count
    std = (sq / count - mean**2).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    details: dict[str, Any] = {
        "path": str(path.resolve()), "classes": list(source.classes), "layout": source.layout,
        "test": (f"held out: {test_split} of each class's training images (seed "
                 f"{HOLD_OUT_SEED})") if held_out is not None else source.test_source,
        "test_split": test_split, "resize": resize,
        "n_train": 0 if train is None else len(train[1]), "n_test": len(test[1]),
        "stats_from": "training split" if train is not None else "test split (no training "
                                                                  "images)",
    }
    return DatasetInfo(name, tuple(x.shape[1:]), len(source.classes),
                       tuple(round(v, 6) for v in mean.tolist()),
                       tuple(round(v, 6) for v in std.tolist()), "none", True, details)


def _shape(x: Tensor) -> str:
    return "x".join(map(str, x.shape[1:]))


def describe(info: DatasetInfo) -> str:
    """One line on what was read: the line training prints and ``erat eval`` shows."""
    d = info.details or {}
    names = ", ".join(map(str, d.get("classes", [])[:6]))
    more = ", ..." if len(d.get("classes", [])) > 6 else ""
    return (f"{info.name}: {d.get('n_train')} training and {d.get('n_test')} test images of "
            f"{'x'.join(map(str, info.shape))} ({d.get('layout')}), {info.num_classes} "
            f"classes ({names}{more}); test split: {d.get('test')}")
