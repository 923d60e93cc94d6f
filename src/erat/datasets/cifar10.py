"""CIFAR-10 from the python batches (``data_batch_1..5``, ``test_batch``), in
``data_dir/cifar-10-batches-py`` or ``data_dir``; unpickled without running any code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from erat.datasets.registry import (
    DataError,
    DatasetInfo,
    find_or_download,
    one_line,
    register_dataset,
    torchvision_download,
)


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
        data, y = np.asarray(data), np.asarray(labels, dtype=np.int64).reshape(-1)
    except Exception as e:  # unpickling a corrupt file can raise almost any type
        raise DataError(f"corrupt CIFAR-10 batch {path}: {one_line(e)}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"corrupt CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, "
                        "not uint8 [N, 3072]")
    x = data.reshape(-1, 3, 32, 32)
    if len(x) != len(y):
        raise DataError(f"corrupt CIFAR-10 batch {path}: {len(x)} images, {len(y)} labels")
    return x, y


@register_dataset(DatasetInfo(
    "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    "crop-flip",  # translation by up to 4 pixels + flip (VAT's code translates by up to 2)
))
def load_cifar10(info: DatasetInfo, root: Path, split: str, download: bool
                 ) -> tuple[Tensor, Tensor]:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    fetch = torchvision_download("CIFAR10", root, train=split == "train") if download else None
    paths = find_or_download(info.name, [root, root / "cifar-10-batches-py"], files, fetch)
    xs, ys = zip(*(_read_cifar_batch(p) for p in paths), strict=True)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
