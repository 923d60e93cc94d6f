"""Datasets by name (info + loader), label and validation splits, augmentation; a module of
this package registers its datasets by being here (:mod:`erat.datasets.registry`)."""

from erat.datasets.augment import AUGMENTS, augment_batch
from erat.datasets.registry import (
    DATASETS,
    DataError,
    DatasetInfo,
    check_test_set,
    dataset_info,
    dataset_names,
    is_embedded,
    load_dataset,
    own_scheme,
    recorded_options,
    recorded_test_set,
    register_dataset,
    register_scheme,
)
from erat.datasets.splits import balanced_split, labeled_split, validation_split
from erat.registry import import_package

import_package(__name__, __path__, helpers={"registry", "augment", "splits", "own"})

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "augment_batch",
    "check_test_set",
    "balanced_split",
    "dataset_info",
    "dataset_names",
    "is_embedded",
    "labeled_split",
    "load_dataset",
    "own_scheme",
    "recorded_options",
    "recorded_test_set",
    "register_dataset",
    "register_scheme",
    "validation_split",
]
