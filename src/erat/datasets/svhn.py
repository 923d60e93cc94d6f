"""SVHN from ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 is digit 0)."""

from __future__ import annotations

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


@register_dataset(DatasetInfo(
    "svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop"
))
def load_svhn(info: DatasetInfo, root: Path, split: str, download: bool
              ) -> tuple[Tensor, Tensor]:
    from scipy.io import loadmat

    fetch = torchvision_download("SVHN", root, split=split) if download else None
    (path,) = find_or_download(info.name, [root], [f"{split}_32x32.mat"], fetch)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
        raw, y = mat["X"], mat["y"].astype(np.int64).reshape(-1)
    except Exception as e:  # scipy raises many types on corrupt files
        raise DataError(f"corrupt SVHN file {path}: {one_line(e)}") from None
    if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[:3] != (32, 32, 3):
        raise DataError(f"corrupt SVHN file {path}: X is {raw.dtype} {raw.shape}, not uint8 "
                        "[32, 32, 3, N]")
    x = np.ascontiguousarray(raw.transpose(3, 2, 0, 1))  # [N, 3, 32, 32]
    if len(x) != len(y):
        raise DataError(f"corrupt SVHN file {path}: {len(x)} images, {len(y)} labels")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return torch.from_numpy(x), torch.from_numpy(y)
