"""The dataset registry: static facts (:class:`DatasetInfo`) and a loader per name, and the
file helpers the loaders share. A module of this package registers its datasets by being
here (:func:`register_dataset`).

Every loader returns ``x`` ``[N, C, H, W]`` (uint8 0..255 or float in ``[0, 1]``) and ``y``
int64 ``[N]``; :func:`load_dataset` turns ``x`` into float32 in ``[0, 1]`` (pixel space,
where every eps is measured; mean/std live inside the model) and checks shapes and labels.
Problems raise :class:`DataError` with a one-line message naming the file or folder.

Example::

    train = load_dataset("mnist", "train", data_dir="~/data")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from erat.errors import UserError
from erat.registry import Registry

Augment = Literal["none", "crop", "crop-flip"]
SPLITS = ("train", "test")
Loader = Callable[[Path | None, str, bool], tuple[Tensor, Tensor]]


class DataError(UserError):
    """A dataset cannot be loaded: unknown name, missing or corrupt files."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: ``shape`` is ``(C, H, W)``; ``mean``/``std`` are per
    channel, of the ``[0, 1]`` training pixels; ``augment`` is the train-time augmentation;
    ``files``: whether it is read from ``data_dir`` (False: embedded)."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = "none"
    files: bool = True


DATASETS = Registry("dataset")
LOADERS: dict[str, Loader] = {}


def register_dataset(*infos: DatasetInfo) -> Callable[[Callable], Callable]:
    """Decorator: ``loader(info, root, split, download) -> (x, y)`` serves these datasets."""

    def add(loader: Callable) -> Callable:
        for info in infos:
            DATASETS.add(info.name, info)
            LOADERS[info.name] = lambda root, split, download, info=info: loader(
                info, root, split, download)
        return loader

    return add


def dataset_names() -> list[str]:
    """Embedded datasets first (no files needed), then by name."""
    return sorted(DATASETS, key=lambda n: (DATASETS[n].files, n))


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    return DATASETS.lookup(name)


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
    root = None
    if info.files:
        if data_dir is None:
            raise DataError(
                f"{name}: --data-dir is required (a folder with the official files; "
                "add --download to fetch them there)"
            )
        root = Path(data_dir).expanduser()
    x, y = LOADERS[name](root, split, download)
    _check(info, x, y, split, root)
    return TensorDataset(x.float().div_(255.0) if x.dtype == torch.uint8 else x, y)


def _check(info: DatasetInfo, x: Tensor, y: Tensor, split: str, root: Path | None) -> None:
    where = f"{info.name} {split} split" + (f" in {root}" if root is not None else "")
    if tuple(x.shape[1:]) != info.shape:
        raise DataError(f"{where}: images of shape {tuple(x.shape[1:])}, expected {info.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{where}: labels {int(y.min())}..{int(y.max())} outside "
                        f"0..{info.num_classes - 1}")


# --- file helpers shared by the loaders --------------------------------------------------


def find(dataset: str, folders: Sequence[Path], filename: str, gz: bool = False) -> Path:
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


def find_or_download(
    dataset: str,
    folders: Sequence[Path],
    names: Sequence[str],
    download: Callable[[], None] | None,
    gz: bool = False,
) -> list[Path]:
    """Locate all ``names``; when some are missing and ``download`` is given, fetch first."""
    try:
        return [find(dataset, folders, n, gz) for n in names]
    except DataError:
        if download is None:
            raise
    try:
        download()
    except Exception as e:  # torchvision raises many types (URLError, RuntimeError, ...)
        raise DataError(f"{dataset}: download into {folders[0]} failed: {one_line(e)}") from None
    return [find(dataset, folders, n, gz) for n in names]


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def torchvision_download(cls_name: str, root: Path, **kwargs: object) -> Callable[[], None]:
    def fetch() -> None:
        from torchvision import datasets

        getattr(datasets, cls_name)(root=str(root), download=True, **kwargs)

    return fetch
