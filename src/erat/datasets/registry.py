"""The dataset registry: static facts (:class:`DatasetInfo`) and a loader per name, and the
file helpers the loaders share. A module of this package registers its datasets by being
here (:func:`register_dataset`).

Every loader returns ``x`` ``[N, C, H, W]`` (uint8 0..255 or float in ``[0, 1]``) and ``y``
int64 ``[N]``; :func:`load_dataset` turns ``x`` into float32 in ``[0, 1]`` (pixel space,
where every eps is measured; mean/std live inside the model) and checks shapes and labels.
Problems raise :class:`DataError` with a one-line message naming the file or folder.

Beside the registered names, a name ``SCHEME:PATH`` is your own data (``folder:PATH``, a
torchvision ImageFolder tree; ``npz:PATH``, numpy arrays): :data:`SCHEMES` maps each scheme
to its loader (``datasets/folder.py``, ``datasets/npz.py``, sharing ``datasets/own.py``),
whose :class:`DatasetInfo` is computed from the data's training split and carries
``details`` (classes, layout, where the test split came from) for the run folder. Those
datasets take two options, ``test_split`` (a fraction held out when the data has no test
split) and ``resize``; a registered dataset takes neither.

Example::

    train = load_dataset("mnist", "train", data_dir="~/data")
    mine = load_dataset("folder:photos", "train", test_split=0.2, resize=32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

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
    ``files``: whether it is read from ``data_dir`` (False: embedded); ``downloadable``:
    whether its loader fetches missing files with ``download``; ``details``: for your
    own data (``folder:``, ``npz:``), what was read and how (recorded in ``model.pt``)."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = "none"
    files: bool = True
    details: dict[str, Any] | None = field(default=None, compare=False)
    downloadable: bool = True


class OwnData(NamedTuple):
    """What a scheme's loader returns: the facts (computed from the training split) and
    each split's ``(x, y)``; ``train`` is None for data that can be evaluated only."""

    info: DatasetInfo
    train: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor]


DATASETS = Registry("dataset")
LOADERS: dict[str, Loader] = {}
# scheme -> loader (name, path, test_split, resize) -> OwnData, for names SCHEME:PATH
SCHEMES: dict[str, Callable[[str, Path, float | None, int | None], OwnData]] = {}


def register_dataset(*infos: DatasetInfo) -> Callable[[Callable], Callable]:
    """Decorator: ``loader(info, root, split, download) -> (x, y)`` serves these datasets."""

    def add(loader: Callable) -> Callable:
        for info in infos:
            DATASETS.add(info.name, info)
            LOADERS[info.name] = lambda root, split, download, info=info: loader(
                info, root, split, download)
        return loader

    return add


def register_scheme(scheme: str) -> Callable[[Callable], Callable]:
    """Decorator: ``loader(name, path, test_split, resize) -> OwnData`` serves the names
    ``scheme:PATH``."""

    def add(loader: Callable) -> Callable:
        if scheme in SCHEMES:
            raise ValueError(f"dataset scheme {scheme!r} is registered twice")
        SCHEMES[scheme] = loader
        return loader

    return add


def dataset_names() -> list[str]:
    """Embedded datasets first (no files needed), then by name."""
    return sorted(DATASETS, key=lambda n: (DATASETS[n].files, n))


def own_scheme(name: str) -> str | None:
    """The scheme of a name ``SCHEME:PATH`` (your own data), None for a registered name."""
    scheme, colon, _ = name.partition(":")
    return scheme if colon and scheme.isidentifier() else None


def is_embedded(name: str) -> bool:
    """Whether a registered dataset is built in (it reads no files, downloads nothing)."""
    return name in DATASETS and not DATASETS[name].files


def dataset_info(name: str, data_dir: str | Path | None = None, *,
                 test_split: float | None = None, resize: int | None = None) -> DatasetInfo:
    """A dataset's facts; for your own data (``SCHEME:PATH``) they are computed from its
    training split, which is read (and every check run) here."""
    own = _own(name, data_dir, test_split, resize)
    if own is not None:
        return own.info
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}"
                        f", or your own: {', '.join(f'{s}:PATH' for s in sorted(SCHEMES))}")
    for flag, value in (("--test-split", test_split), ("--resize", resize)):
        if value is not None:
            raise DataError(f"{flag} is for your own data "
                            f"({' or '.join(f'{s}:PATH' for s in sorted(SCHEMES))}); {name} "
                            "has its own test split and image size")
    return DATASETS.lookup(name)


def _own(name: str, data_dir: str | Path | None, test_split: float | None,
         resize: int | None) -> OwnData | None:
    """Your own data named ``SCHEME:PATH`` (PATH relative to ``data_dir`` when given)."""
    scheme = own_scheme(name)
    if scheme is None:
        return None
    if scheme not in SCHEMES:
        raise DataError(f"unknown kind of dataset {scheme!r} in {name!r}; your own data is "
                        f"{' or '.join(f'{s}:PATH' for s in sorted(SCHEMES))}")
    if not name.partition(":")[2]:
        raise DataError(f"{name!r}: give the path after the colon, e.g. {scheme}:my-data")
    path = Path(name.partition(":")[2]).expanduser()
    if data_dir is not None and not path.is_absolute():
        path = Path(data_dir).expanduser() / path
    return SCHEMES[scheme](name, path, test_split, resize)


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    test_split: float | None = None,
    resize: int | None = None,
) -> TensorDataset:
    """Load one split (``"train"`` or ``"test"``) of a dataset into memory (your own data:
    ``folder:PATH`` or ``npz:PATH``, with its ``test_split`` and ``resize``)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    own = _own(name, data_dir, test_split, resize)
    if own is not None:
        pair = own.train if split == "train" else own.test
        if pair is None:
            raise DataError(f"{name} has no training images (no x_train, no train/): it can "
                            "be evaluated, not trained on")
        x, y = pair
        _check(own.info, x, y, split, None)
        return TensorDataset(x.float().div_(255.0) if x.dtype == torch.uint8 else x.clone(),
                             y.clone())
    info = dataset_info(name, test_split=test_split, resize=resize)
    root = None
    if info.files:
        if download and not info.downloadable:
            raise DataError(f"{name} cannot be downloaded: put its files in --data-dir")
        if data_dir is None:
            raise DataError(f"{name}: --data-dir is required (a folder with the official "
                            f"files{_or_download(info.downloadable)})")
        root = Path(data_dir).expanduser()
    x, y = LOADERS[name](root, split, download)
    _check(info, x, y, split, root)
    return TensorDataset(x.float().div_(255.0) if x.dtype == torch.uint8 else x, y)


def recorded_options(meta: dict[str, Any], data_dir: str | Path | None,
                     moved_to: str | Path | None = None) -> dict[str, Any]:
    """The keywords of :func:`load_dataset` that re-read the data a model file's metadata
    records: the dataset's name, and for your own data its options and, unless ``data_dir``
    is given, the absolute path it was read from at training (so ``erat eval`` works from
    any folder), or ``moved_to``, where that folder or file is now."""
    details = meta.get("data") or {}
    name = meta["dataset"]
    if own_scheme(name) and moved_to is not None:
        name, data_dir = f"{own_scheme(name)}:{moved_to}", None
    elif own_scheme(name) and details.get("path") and data_dir is None:
        name = f"{own_scheme(name)}:{details['path']}"
    return {"name": name, "data_dir": data_dir, "test_split": details.get("test_split"),
            "resize": details.get("resize")}


def recorded_test_set(meta: dict[str, Any], data_dir: str | Path | None,
                      moved_to: str | Path | None = None, *, model: object = "the model"
                      ) -> tuple[Tensor, Tensor]:
    """The test split a model file's metadata (``meta``) records, read as
    :func:`recorded_options` says, refused when it is not the one ``model`` was trained
    beside (``meta``'s ``test_sha256``: another dataset or version in ``data_dir``; your own
    data changed or moved)."""
    where = recorded_options(meta, data_dir, moved_to)
    name, dataset = where.pop("name"), meta["dataset"]
    own = own_scheme(dataset) is not None
    try:
        x, y = load_dataset(name, "test", **where).tensors
    except UserError as err:
        if not own or moved_to is not None:
            raise
        raise UserError(f"{err}; if the data moved, pass --data-dir with where its folder or "
                        "file is now") from err
    check_test_set(meta, x, y, model=model, data_dir=data_dir, name=name,
                   moved=moved_to is not None)
    return x, y


def check_test_set(meta: dict[str, Any], x: Tensor, y: Tensor, *, model: object = "the model",
                   data_dir: str | Path | None = None, name: str | None = None,
                   moved: bool = False) -> None:
    """Refuse test images and labels that are not the ones ``model`` was trained beside
    (``meta``'s ``test_sha256``, when recorded): another dataset or version in
    ``data_dir``, your own data (``name``) changed or moved (``moved``: read where the
    user said it is now)."""
    from erat.files import tensor_sha256

    if meta.get("test_sha256") in (None, tensor_sha256([x, y])):
        return
    dataset = meta["dataset"]
    if own_scheme(dataset) is not None:
        raise UserError(f"the test images of {name or dataset} are not the ones {model} was "
                        "trained beside (changed since?); " + (
                            "give the --data-dir of the images it was trained beside" if moved
                            else "if the data moved, pass --data-dir with where its folder or "
                            "file is now"))
    raise UserError(f"the {dataset} test set{f' in {data_dir}' if data_dir else ''} is "
                    f"not the one {model} was trained beside (another dataset or version "
                    f"there?); pass the --data-dir of the run's own {dataset} files")


def _check(info: DatasetInfo, x: Tensor, y: Tensor, split: str, root: Path | None) -> None:
    where = f"{info.name} {split} split" + (f" in {root}" if root is not None else "")
    if tuple(x.shape[1:]) != info.shape:
        raise DataError(f"{where}: images of shape {tuple(x.shape[1:])}, expected {info.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DataError(f"{where}: labels {int(y.min())}..{int(y.max())} outside "
                        f"0..{info.num_classes - 1}")


# --- file helpers shared by the loaders --------------------------------------------------


def find(dataset: str, folders: Sequence[Path], filename: str, gz: bool = False,
         downloadable: bool = True) -> Path:
    """The first existing ``folder/filename`` (or ``filename.gz`` when ``gz``); the error
    suggests ``--download`` only for a ``downloadable`` dataset."""
    for folder in folders:
        for suffix in ("", ".gz") if gz else ("",):
            if (folder / (filename + suffix)).is_file():
                return folder / (filename + suffix)
    where = " or ".join(str(f) for f in folders)
    shown = filename + ("[.gz]" if gz else "")
    raise DataError(
        f"{dataset}: cannot find {shown} in {where} (pass --data-dir with the official "
        f"files{_or_download(downloadable)})")


def _or_download(downloadable: bool) -> str:
    """The hint that ``--download`` fetches the files, for a dataset whose loader can."""
    return ", or --download to fetch them there" if downloadable else ""


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
