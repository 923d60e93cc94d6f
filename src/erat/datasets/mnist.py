"""MNIST and Fashion-MNIST from LeCun's IDX files (``train-images-idx3-ubyte[.gz]``, ...), in
``data_dir`` or torchvision's ``data_dir/MNIST/raw`` (``FashionMNIST/raw``)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
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


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's MNIST format), gzip-compressed or not."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # truncated gzip: EOFError
        raise DataError(f"corrupt IDX file {path}: {one_line(e)}") from None
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


@register_dataset(
    DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
)
def load_idx(info: DatasetInfo, root: Path, split: str, download: bool
             ) -> tuple[Tensor, Tensor]:
    raw_dir = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[info.name]
    prefix = "train" if split == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    fetch = torchvision_download(raw_dir, root) if download else None
    images, labels = find_or_download(info.name, [root, root / raw_dir / "raw"], files, fetch,
                                      gz=True)
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{info.name}: {images} has {len(x)} images but {labels} has "
                        f"{len(y)} labels")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))
