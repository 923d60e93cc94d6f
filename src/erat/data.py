"""Datasets as in-memory tensors, label splits for semi-supervised learning, augmentation.

Every loader returns ``TensorDataset(x, y)``: ``x`` float32 ``[N, C, H, W]`` in ``[0, 1]``
(pixel space, where every eps is measured; mean/std live inside the model) and ``y`` int64
``[N]``. Files are read from the official offline formats and nothing is cached on disk:

- ``digits``: scikit-learn's 8x8 digits, embedded, no files; a fixed stratified 80/20 split.
- ``mnist``, ``fashion-mnist``: IDX files (``train-images-idx3-ubyte[.gz]`` ...), in
  ``data_dir`` or torchvision's ``data_dir/MNIST/raw`` (``FashionMNIST/raw``).
- ``cifar10``: the python batches (``data_batch_1..5``, ``test_batch``), in
  ``data_dir/cifar-10-batches-py`` or ``data_dir``.
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 is digit 0).

``download=True`` fetches missing files with torchvision into ``data_dir`` and then reads
them the same way. Problems raise :class:`DataError` with a one-line message.

Example::

    train = load_dataset("mnist", "train", data_dir="~/data")
    lab, unlab = labeled_split(train.tensors[1], n_labels=100, seed=0)
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

Augment = Literal["none", "crop", "crop-flip"]
AUGMENTS: tuple[Augment, ...] = ("none", "crop", "crop-flip")
SPLITS = ("train", "test")


class DataError(ValueError):
    """A dataset cannot be loaded: unknown name, missing or corrupt files."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: ``shape`` is ``(C, H, W)``; ``mean``/``std`` are per
    channel, of the ``[0, 1]`` training pixels; ``augment`` is the train-time augmentation."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3761,), "none"),
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), "none"),
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), "none"),
        DatasetInfo(
            "cifar10",
            (3, 32, 32),
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "crop-flip",  # translation + flip, as in VAT's CIFAR-10 experiments
        ),
        DatasetInfo(
            "svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop"
        ),
    )
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
) -> TensorDataset:
    """Load one split (``"train"`` or ``"test"``) of a dataset into memory."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "digits":
        x, y = _load_digits(split)
    else:
        if data_dir is None:
            raise DataError(
                f"{name}: --data-dir is required (a folder with the official files; "
                "add --download to fetch them there)"
            )
        root = Path(data_dir).expanduser()
        x, y = _LOADERS[name](name, root, split, download)
    _check(info, x, y)
    return TensorDataset(x.float().div_(255.0) if x.dtype == torch.uint8 else x, y)


# --- digits ------------------------------------------------------------------------------


def _load_digits(split: str) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    parts = train_test_split(d.data, d.target, test_size=0.2, stratify=d.target, random_state=0)
    x, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    x = torch.from_numpy(x / 16.0).float().reshape(-1, 1, 8, 8)  # values 0..16
    return x, torch.from_numpy(y).long()


# --- files -------------------------------------------------------------------------------


def _find(dataset: str, folders: Sequence[Path], filename: str, gz: bool = False) -> Path:
    """The first existing ``folder/filename`` (or ``filename.gz`` when ``gz``)."""
    for folder in folders:
        for suffix in ("", ".gz") if gz else ("",):
            if (folder / (filename + suffix)).is_file():
                return folder / (filename + suffix)
    where = " or ".join(str(f) for f in folders)
    shown = filename + ("[.gz]" if gz else "")
    raise DataError(
        f"{dataset}: cannot find {shown} in {where} "
        "(pass --data-dir with the official files, or --download)"
    )


def _find_or_download(
    dataset: str,
    folders: Sequence[Path],
    names: Sequence[str],
    download: Callable[[], None] | None,
    gz: bool = False,
) -> list[Path]:
    """Locate all ``names``; when some are missing and ``download`` is given, fetch first."""
    try:
        return [_find(dataset, folders, n, gz) for n in names]
    except DataError:
        if download is None:
            raise
    try:
        download()
    except Exception as e:  # torchvision raises many types (URLError, RuntimeError, ...)
        raise DataError(f"{dataset}: download into {folders[0]} failed: {_one_line(e)}") from None
    return [_find(dataset, folders, n, gz) for n in names]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _tv_download(cls_name: str, root: Path, **kwargs: object) -> Callable[[], None]:
    def fetch() -> None:
        from torchvision import datasets

        getattr(datasets, cls_name)(root=str(root), download=True, **kwargs)

    return fetch


# --- MNIST / Fashion-MNIST (IDX) ---------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's MNIST format), gzip-compressed or not."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # truncated gzip: EOFError
        raise DataError(f"corrupt IDX file {path}: {_one_line(e)}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        magic = raw[:4].hex() or "empty file"
        raise DataError(f"corrupt IDX file {path}: bad magic number {magic}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"corrupt IDX file {path}: shape {dims} needs {math.prod(dims)} bytes, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, root: Path, split: str, download: bool) -> tuple[Tensor, Tensor]:
    raw_dir = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    prefix = "train" if split == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    fetch = _tv_download(raw_dir, root) if download else None
    images, labels = _find_or_download(name, [root, root / raw_dir / "raw"], files, fetch, gz=True)
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{name}: {images} has {len(x)} images but {labels} has {len(y)} labels")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# --- CIFAR-10 (python batches) -----------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only: a CIFAR batch, never arbitrary code."""

    _NUMPY = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str) -> object:
        numpy_array = module.split(".")[0] == "numpy" and name in self._NUMPY
        if numpy_array or (module, name) == ("_codecs", "encode"):  # _codecs: bytes, protocol 2
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
        data = d["data"] if "data" in d else d[b"data"]
        labels = d["labels"] if "labels" in d else d[b"labels"]
        x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except Exception as e:  # unpickling a corrupt file can raise almost any type
        raise DataError(f"corrupt CIFAR-10 batch {path}: {_one_line(e)}") from None
    if len(x) != len(y):
        raise DataError(f"corrupt CIFAR-10 batch {path}: {len(x)} images, {len(y)} labels")
    return x, y


def _load_cifar10(name: str, root: Path, split: str, download: bool) -> tuple[Tensor, Tensor]:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    fetch = _tv_download("CIFAR10", root, train=split == "train") if download else None
    paths = _find_or_download(name, [root, root / "cifar-10-batches-py"], files, fetch)
    xs, ys = zip(*(_read_cifar_batch(p) for p in paths), strict=True)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


# --- SVHN (.mat) -------------------------------------------------------------------------


def _load_svhn(name: str, root: Path, split: str, download: bool) -> tuple[Tensor, Tensor]:
    from scipy.io import loadmat

    fetch = _tv_download("SVHN", root, split=split) if download else None
    (path,) = _find_or_download(name, [root], [f"{split}_32x32.mat"], fetch)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
        x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1), dtype=np.uint8)  # [N,3,32,32]
        y = mat["y"].astype(np.int64).reshape(-1)
    except Exception as e:  # scipy raises many types on corrupt files
        raise DataError(f"corrupt SVHN file {path}: {_one_line(e)}") from None
    if len(x) != len(y):
        raise DataError(f"corrupt SVHN file {path}: {len(x)} images, {len(y)} labels")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return torch.from_numpy(x), torch.from_numpy(y)


_LOADERS = {
    "mnist": _load_idx,
    "fashion-mnist": _load_idx,
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
}


def _check(info: DatasetInfo, x: Tensor, y: Tensor) -> None:
    if tuple(x.shape[1:]) != info.shape:
        raise DataError(f"{info.name}: images of shape {tuple(x.shape[1:])}, expected {info.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{info.name}: labels outside 0..{info.num_classes - 1}")


# --- label splits and augmentation -------------------------------------------------------


def labeled_split(y: Tensor, n_labels: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(labeled, unlabeled)`` with exactly ``n_labels`` labeled, balanced across the
    classes present in ``y`` (the standard protocol of Miyato et al. 2018, arXiv 1704.03976).

    When ``n_labels`` is not a multiple of the number of classes, the lowest class labels get
    one extra example each. Both index tensors are sorted, disjoint, and cover ``y``.
    """
    y = torch.as_tensor(y).reshape(-1).cpu()
    if not 0 <= n_labels <= len(y):
        raise DataError(f"n_labels must be in 0..{len(y)}, got {n_labels}")
    classes, counts = torch.unique(y, return_counts=True)
    base, extra = divmod(n_labels, len(classes))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for i, (c, count) in enumerate(zip(classes.tolist(), counts.tolist(), strict=True)):
        quota = base + (i < extra)
        if quota > count:
            raise DataError(f"class {c} has {count} examples, fewer than the {quota} to label")
        idx = torch.nonzero(y == c).flatten()
        chosen.append(idx[torch.randperm(count, generator=gen)[:quota]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(chosen)] = True
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def augment_batch(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Train-time augmentation of a batch ``[B, C, H, W]`` in ``[0, 1]``, on its own device.

    ``"crop"``: random translation by up to 4 pixels, i.e. a random crop of the zero-padded
    image (the standard CIFAR-10/SVHN recipe), one offset per sample. ``"crop-flip"`` adds a
    random horizontal flip. ``generator`` (on any device) makes the draws reproducible.
    """
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTS)}")
    if kind == "none":
        return x
    pad, (b, _, h, w) = 4, x.shape
    dev = generator.device if generator is not None else x.device
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H+8, W+8], zeros
    rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # [B,H,W,C]
    out = out.permute(0, 3, 1, 2).contiguous()
    if kind == "crop-flip":
        flip = torch.rand(b, generator=generator, device=dev).to(x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
