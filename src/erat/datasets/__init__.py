"""Datasets by name (info + loader), label and validation splits, augmentation; a module of
this package registers its datasets by being here (:mod:`erat.datasets.registry`)."""

import importlib
import pkgutil

from erat.datasets.augment import AUGMENTS, augment_batch
from erat.datasets.registry import (
    DATASETS,
    DataError,
    DatasetInfo,
    dataset_info,
    dataset_names,
    load_dataset,
    register_dataset,
)
from erat.datasets.splits import balanced_split, labeled_split, validation_split

_HELPERS = {"registry", "augment", "splits"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _HELPERS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "augment_batch",
    "balanced_split",
    "dataset_info",
    "dataset_names",
    "labeled_split",
    "load_dataset",
    "register_dataset",
    "validation_split",
]
