"""``folder:PATH``: your own images in a torchvision ImageFolder tree, one folder of images
per class (the labels are the class folders' indices in sorted order, as
``torchvision.datasets.ImageFolder`` gives them):

- ``PATH/train/<class>/*.png`` and ``PATH/test/<class>/*.png`` (the same class folders), or
- ``PATH/<class>/*.png`` with ``--test-split F`` (the test images held out from these), or
- ``PATH/test/<class>/...`` only: images that can be evaluated, not trained on.

The class folders are torchvision's (``find_classes``), their files are listed as its
``make_dataset`` lists them (its image extensions, its order), and every one is decoded by
PIL when the data is read: an unreadable image is named then. Images whose files are all
grayscale stay one channel, otherwise every image is RGB. Every image must have the same
size unless ``--resize N`` gives each N x N pixels (bilinear with antialiasing,
``torchvision.transforms.functional.resize``). The checks and facts shared with ``npz:``
are :mod:`erat.datasets.own`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from erat.datasets.own import Source, own_data
from erat.datasets.registry import DataError, one_line, register_scheme

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"}  # read as one channel
DEEP_MODES = {"I", "I;16", "I;16L", "I;16B", "F"}  # 16-bit, 32-bit and float gray


@register_scheme("folder")
@own_data
def read_folder(path: Path, resize: int | None) -> Source:
    if not path.is_dir():
        raise DataError(f"folder:{path}: " + ("a file, not a folder of images" if path.exists()
                                               else "no such folder"))
    train_dir, test_dir = path / "train", path / "test"
    if not (train_dir.is_dir() or test_dir.is_dir()):
        x, y, classes, as_is = _read_tree(path, resize)
        return Source((x, y), None, classes, _layout(x) + _deep(as_is) + _skipped(path))
    dirs = [d for d in (train_dir, test_dir) if d.is_dir()]
    read = [_read_tree(d, resize) for d in dirs]
    if read[0][2] != read[-1][2]:
        only = sorted(set(read[0][2]) ^ set(read[-1][2]))
        raise DataError(f"folder:{path}: train/ and test/ must hold the same class folders; "
                        f"only in one of them: {', '.join(only[:5])}")
    if {r[3] for r in read} >= {True, False}:  # 16-bit images of 0..255 in one tree only:
        read = [_read_tree(d, resize, as_is=False) if r[3] else r  # over 65535 in both
                for d, r in zip(dirs, read, strict=True)]
    xs = _same_channels([x for x, _, _, _ in read])
    pairs = [(x, y) for x, (_, y, _, _) in zip(xs, read, strict=True)]
    deep = max((r[3] for r in read if r[3] is not None), default=None)
    return Source(pairs[0] if train_dir.is_dir() else None,
                  pairs[-1] if test_dir.is_dir() else None, read[0][2],
                  _layout(xs[0]) + _deep(deep) + _skipped(path), test_source="test/")


def _read_tree(root: Path, resize: int | None, as_is: bool | None = None
               ) -> tuple[Tensor, Tensor, list[str], bool | None]:
    """The images below ``root``'s class folders, ``[N, C, H, W]`` uint8, their labels and
    classes, and how its 16- or 32-bit integer images were read (None: it has none). When
    every one holds values of 0..255 only (8-bit images saved in a 16-bit file: over 65535
    they would read near black), they are read as 8-bit values (True), else over 65535
    (``as_is=False``: over 65535 whatever they hold)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    try:
        classes, index = find_classes(root)
    except FileNotFoundError:
        raise DataError(f"folder: no class folders in {root} (one folder of images per "
                        "class)") from None
    samples = [(file, index[name]) for name in classes for file in _files(root / name)]
    counts = Counter(label for _, label in samples)
    empty = [c for c in classes if counts[index[c]] == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(f"class folder {root / empty[0]} holds no images{more} "
                        f"({', '.join(IMG_EXTENSIONS)})")
    read = [_read_image(Path(file), resize) for file, _ in samples]
    deep = [i for i, (_, fits) in enumerate(read) if fits is not None]
    as_is = (all(read[i][1] for i in deep) and as_is is not False) if deep else None
    for i in deep if as_is else ():
        read[i] = _read_image(Path(samples[i][0]), resize, as_is=True)
    images = [image for image, _ in read]
    sizes = {tuple(im.shape[1:]) for im in images}
    if len(sizes) > 1:
        first = tuple(images[0].shape[1:])
        other = next(i for i, im in enumerate(images) if tuple(im.shape[1:]) != first)
        raise DataError(f"images of different sizes in {root}: {samples[0][0]} is "
                        f"{_hw(images[0])}, {samples[other][0]} is {_hw(images[other])}; pass "
                        "--resize N to give every image N x N pixels")
    x = torch.stack(_same_channels(images))
    y = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return x, y, classes, as_is


def _files(folder: Path) -> list[str]:
    """The image files below a class folder in ImageFolder's order (``make_dataset``'s
    walk, without its refusal of an empty folder, which is said here with the path)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return [os.path.join(top, f) for top, _, files in sorted(os.walk(folder, followlinks=True))
            for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]


def _deep(as_is: bool | None) -> str:
    """The layout's note of how 16- or 32-bit integer images were read (:func:`_read_tree`;
    one reading for train/ and test/)."""
    return {None: "", False: "; 16- or 32-bit integer images scaled from 0..65535",
            True: "; 16- or 32-bit integer images holding 0..255 only, read as 8-bit "
                  "values"}[as_is]


def _skipped(root: Path) -> str:
    """The layout's note of the files below ``root`` that are not images (hidden ones aside),
    which are not read: ``; 2 other files not read (notes.txt, ...)``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    others = []
    for _, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # (.git and the like)
        others += [f for f in files
                   if not f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
    others.sort()
    if not others:
        return ""
    return (f"; {len(others)} other file{'s' if len(others) > 1 else ''} not read "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})")


def _read_image(file: Path, resize: int | None, as_is: bool = False
                ) -> tuple[Tensor, bool | None]:
    """One image, decoded now (a truncated file fails here), ``[C, H, W]`` uint8; and, for a
    16- or 32-bit integer image, whether its values all fit 0..255 (None for other images).
    ``as_is``: such an image's values are taken as 8-bit values."""
    from PIL import Image
    from torchvision.transforms import functional

    try:
        with Image.open(file) as img:
            img.load()
            fits = (img.getextrema()[1] or 0) <= 255 if img.mode in DEEP_MODES - {"F"} else None
            img = _eight_bit(img, as_is and bool(fits)) if img.mode in DEEP_MODES else \
                img.convert("L" if img.mode in GRAY_MODES else "RGB")
        if resize is not None:
            img = functional.resize(img, [resize, resize], antialias=True)
        return functional.pil_to_tensor(img), fits
    except Exception as e:  # PIL raises many types for a damaged file (OSError, SyntaxError..)
        raise DataError(f"cannot read image {file}: {one_line(e)}") from None


def _eight_bit(img, as_is: bool = False):
    """A 16-bit, 32-bit integer or float grayscale image as 8 bits: integers over 65535
    (``as_is``: integers of 0..255 as they are), floats over [0, 1] (PIL's ``convert("L")``
    clips them: a 16-bit 51400 became 255, a float 0.78 became 0); other ranges are
    refused."""
    import numpy as np
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not np.isfinite(a).all() or low < 0 or high > (1 if img.mode == "F" else 65535):
        raise ValueError(f"an image of PIL mode {img.mode} must hold values in "
                         f"{'[0, 1]' if img.mode == 'F' else '0..65535'}, got {low:g}..{high:g}")
    scaled = a * 255 if img.mode == "F" else a if as_is else a / 257
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _same_channels(xs: list[Tensor]) -> list[Tensor]:
    """Grayscale images (``[1, H, W]``) or splits (``[N, 1, H, W]``) made RGB when any
    other is RGB."""
    if not any(x.shape[-3] == 3 for x in xs):
        return xs
    return [x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous() if x.shape[-3] == 1 else x
            for x in xs]


def _layout(x: Tensor) -> str:
    return f"image files, {'RGB' if x.shape[1] == 3 else 'grayscale'}"


def _hw(image: Tensor) -> str:
    return f"{image.shape[1]}x{image.shape[2]} (HxW)"
