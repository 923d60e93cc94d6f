"""``npz:PATH``: your own images as numpy arrays in one ``.npz`` file (``numpy.savez``):
``x_train``, ``y_train``, ``x_test``, ``y_test`` (a split is both of its arrays or neither;
without ``x_test`` the test split is ``--test-split F`` of the training images; without
``x_train`` the data can be evaluated, not trained on), and optionally ``classes`` (the class
names; their number is the number of classes, otherwise the largest training label + 1).

Images are uint8 (0..255) or floats in ``[0, 1]``, ``[N, C, H, W]``, ``[N, H, W, C]`` or
``[N, H, W]`` (one channel). The layout is detected per array -- the channel axis is the
one of axes 1 and 3 that is shorter than both others -- and stated in the run's
``details``; a shape where that does not decide (``[N, 3, 3, 3]``) is refused. Labels are
integers ``[N]``. The file is read with ``allow_pickle=False``: an object array (a pickle,
which could run code) is refused, never loaded. ``--resize N`` resizes every image to N x N
(bilinear with antialiasing). The checks and facts shared with ``folder:`` are
:mod:`erat.datasets.own`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from erat.datasets.own import Source, own_data
from erat.datasets.registry import DataError, one_line, register_scheme

SPLIT_ARRAYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


@register_scheme("npz")
@own_data
def read_npz(path: Path, resize: int | None) -> Source:
    arrays = _read_arrays(path)
    pairs: dict[str, tuple[Tensor, Tensor] | None] = {}
    layouts = []
    for split, (xk, yk) in SPLIT_ARRAYS.items():
        if (xk in arrays) != (yk in arrays):
            have, miss = (xk, yk) if xk in arrays else (yk, xk)
            raise DataError(f"{path} has {have} but no {miss}")
        if xk not in arrays:
            pairs[split] = None
            continue
        x, layout = _images(path, xk, arrays[xk], resize)
        pairs[split] = (x, _labels(path, yk, arrays[yk]))
        layouts.append(f"{xk} {layout}")
    if not layouts:
        raise DataError(f"{path} holds none of x_train, y_train, x_test, y_test (it holds: "
                        f"{', '.join(arrays) or 'nothing'})")
    labelled = pairs["train"] or pairs["test"]
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1).tolist()]
    else:
        top = int(labelled[1].max()) if len(labelled[1]) else -1
        classes = [str(i) for i in range(top + 1)]
    return Source(pairs["train"], pairs["test"], classes, ", ".join(layouts),
                  test_source="x_test")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz:{path}: no such file")
    if not zipfile.is_zipfile(path):  # np.load would read a text or .npy file as a pickle
        raise DataError(f"{path} is not an .npz archive of x_train, y_train, x_test, y_test "
                        "(numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(f"{path} holds pickled Python objects (which could run code); erat "
                            "loads plain numeric arrays only") from None
        raise DataError(f"cannot read {path}: {one_line(e)}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}: {one_line(e)}") from None


def _images(path: Path, key: str, a: np.ndarray, resize: int | None) -> tuple[Tensor, str]:
    """``[N, C, H, W]`` (uint8, or float32 in [0, 1]) and the layout it was stored in."""
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: {key} has dtype {a.dtype}; erat reads uint8 0..255 or "
                        "floats in [0, 1]")
    if a.ndim == 3:
        layout, a = "NHW", a[:, None]
    elif a.ndim == 4:
        n, d1, d2, d3 = a.shape
        first, last = d1 < min(d2, d3), d3 < min(d1, d2)
        if first == last:
            raise DataError(f"{path}: cannot tell the channel axis of {key} {a.shape} (NCHW or "
                            "NHWC?); store it as [N, C, H, W] with fewer channels than pixels")
        layout = "NCHW" if first else "NHWC"
        a = a if first else a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: {key} has shape {a.shape}; want [N, C, H, W], [N, H, W, C] "
                        "or [N, H, W]")
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x if x.dtype == torch.uint8 else x.float()
    if resize is not None:
        from torchvision.transforms import functional

        inside = x.dtype == torch.uint8 or x.numel() == 0 or bool(x.min() >= 0 and x.max() <= 1)
        x = functional.resize(x, [resize, resize], antialias=True)
        if inside and x.is_floating_point():  # (antialiasing overshoots the box a little)
            x = x.clamp_(0.0, 1.0)
    return x, layout


def _labels(path: Path, key: str, a: np.ndarray) -> Tensor:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"{path}: {key} has shape {a.shape}; want one integer label per image "
                        "(one-hot rows? store their argmax)")
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {a.dtype}; want integer labels")
    return torch.from_numpy(a.astype(np.int64))
