"""scikit-learn's 8x8 digits (1,797 images, values 0..16), embedded, no files: a fixed
stratified 80/20 split (1,437 train / 360 test)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from erat.datasets.registry import DatasetInfo, register_dataset


@register_dataset(DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3761,), files=False))
def load_digits(info: DatasetInfo, root: Path | None, split: str, download: bool
                ) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    d = sklearn_digits()
    parts = train_test_split(d.data, d.target, test_size=0.2, stratify=d.target, random_state=0)
    x, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    x = torch.from_numpy(x / 16.0).float().reshape(-1, 1, 8, 8)  # values 0..16
    return x, torch.from_numpy(y).long()
