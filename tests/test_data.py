"""Loaders on tiny files written in the real formats; label splits; augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from erat.datasets import (
    DATASETS,
    DataError,
    augment_batch,
    dataset_info,
    dataset_names,
    labeled_split,
    load_dataset,
)

MNIST_10K = Path("/work/shared/data/mnist-10k")
RNG = np.random.default_rng(0)


def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _write_idx(folder: Path, prefix: str, n: int, compress: bool) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    for kind, a in (("images-idx3", x), ("labels-idx1", y)):
        data = _idx_bytes(a)
        path = folder / f"{prefix}-{kind}-ubyte"
        if compress:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
    return x, y


@pytest.mark.parametrize("compress", [True, False])
def test_idx_gzip_and_plain(tmp_path, compress):
    x, y = _write_idx(tmp_path, "t10k", 5, compress)
    xt, yt = load_dataset("mnist", "test", tmp_path).tensors
    assert xt.shape == (5, 1, 28, 28) and xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert torch.equal(xt[:, 0], torch.from_numpy(x).float() / 255)
    assert yt.tolist() == y.tolist() and xt.min() >= 0 and xt.max() <= 1


def test_idx_torchvision_layout(tmp_path):
    _write_idx(tmp_path / "FashionMNIST" / "raw", "train", 3, True)
    assert len(load_dataset("fashion-mnist", "train", tmp_path)) == 3


def test_missing_files_named(tmp_path):
    with pytest.raises(DataError, match=r"mnist: cannot find train-images-idx3-ubyte\[.gz\] in "):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DataError, match="MNIST/raw.*--download"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path)
    with pytest.raises(DataError, match="--data-dir is required"):
        load_dataset("mnist", "test")


def test_unknown_names():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of .*digits"):
        dataset_info("imagenet")
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "val")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-7], "needs 3920 bytes, found 3913"),
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad magic number 00000903"),
        (lambda b: b"", "bad magic number empty file"),
        (lambda b: gzip.compress(b)[:-20], "corrupt IDX file"),  # truncated gzip stream
    ],
)
def test_corrupt_idx(tmp_path, damage, message):
    _write_idx(tmp_path, "t10k", 5, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        load_dataset("mnist", "test", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_idx_count_mismatch(tmp_path):
    _write_idx(tmp_path, "t10k", 5, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_dataset("mnist", "test", tmp_path)


def _write_cifar(folder: Path, n: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": [i] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = data
    return written


def test_cifar10_batches(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    x, y = load_dataset("cifar10", "train", tmp_path).tensors
    assert x.shape == (15, 3, 32, 32) and y.tolist() == [k for k in range(5) for _ in range(3)]
    row = torch.from_numpy(written["data_batch_1"][0]) / 255  # 3072 = 3 planes of 32 x 32
    assert torch.equal(x[0, 1, 0, :5], row[1024:1029])
    xt, yt = load_dataset("cifar10", "test", tmp_path).tensors
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == [5] * 3 and xt.max() <= 1


def test_cifar10_corrupt_and_unsafe(tmp_path):
    _write_cifar(tmp_path)  # directly in data_dir
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch .*test_batch"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(print))  # code, not data
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", tmp_path)
    # images as [N, 32, 32, 3] or as floats loaded as scrambled or black images, no error
    for data, shown in ((RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                         r"uint8 \(3, 32, 32, 3\)"),
                        (RNG.random((3, 3072)), r"float64 \(3, 3072\)")):
        with open(tmp_path / "test_batch", "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 2]}, f, protocol=2)
        with pytest.raises(DataError, match=f"test_batch: data is {shown}, not uint8 \\[N, 3072"):
            load_dataset("cifar10", "test", tmp_path)


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    x = RNG.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10]])})
    xt, yt = load_dataset("svhn", "train", tmp_path).tensors
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == [0, 1, 9, 0]
    assert torch.equal(xt[2, 1], torch.from_numpy(x[:, :, 1, 2]).float() / 255)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB garbage")
    with pytest.raises(DataError, match="corrupt SVHN file"):
        load_dataset("svhn", "test", tmp_path)
    # floats in [0, 1] loaded as black images, uint16 wrapped modulo 256, without an error
    for bad, shown in ((x / 255.0, "float64"), (x.astype(np.uint16) * 200, "uint16")):
        savemat(tmp_path / "test_32x32.mat", {"X": bad, "y": np.array([[1], [2], [3], [4]])})
        with pytest.raises(DataError, match=f"X is {shown} \\(32, 32, 3, 4\\), not uint8"):
            load_dataset("svhn", "test", tmp_path)


def test_digits_embedded():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() == 1
    assert torch.bincount(y).min() >= 139 and set(y.tolist()) == set(range(10))
    info = dataset_info("digits")
    assert abs(x.mean() - info.mean[0]) < 1e-3 and abs(x.std() - info.std[0]) < 1e-3


def test_registry_facts():
    names = dataset_names()  # embedded first (the error message lists them first)
    assert "digits" in names and set(names) == set(DATASETS)
    assert [DATASETS[n].files for n in names] == sorted(DATASETS[n].files for n in names)
    for name, info in DATASETS.items():
        assert info.name == name and len(info.shape) == 3 and info.num_classes >= 2
        assert len(info.mean) == len(info.std) == info.shape[0] and min(info.std) > 0
        assert info.augment in ("none", "crop", "crop-flip")
    assert dataset_info("cifar10").augment == "crop-flip" and dataset_info("svhn").augment == "crop"


@pytest.mark.skipif(not MNIST_10K.is_dir(), reason="mnist-10k subset not present")
def test_mnist_10k_subset():
    x, y = load_dataset("mnist", "train", MNIST_10K).tensors
    assert x.shape == (8000, 1, 28, 28) and len(load_dataset("mnist", "test", MNIST_10K)) == 2000
    assert torch.bincount(y).tolist()[:3] == [801, 902, 793]


def test_labeled_split():
    y = torch.arange(1000) % 10
    lab, unlab = labeled_split(y, 100, seed=0)
    assert len(lab) == 100 and torch.bincount(y[lab]).tolist() == [10] * 10
    assert torch.equal(torch.sort(torch.cat([lab, unlab])).values, torch.arange(1000))
    assert lab.dtype == unlab.dtype == torch.int64
    assert torch.equal(lab, labeled_split(y, 100, seed=0)[0])
    assert not torch.equal(lab, labeled_split(y, 100, seed=1)[0])
    lab, _ = labeled_split(y, 23, seed=0)  # remainder 3 goes to classes 0, 1, 2
    assert torch.bincount(y[lab]).tolist() == [3, 3, 3] + [2] * 7


def test_labeled_split_errors():
    y = torch.tensor([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 1 has 1 examples"):
        labeled_split(y, 4, seed=0)
    with pytest.raises(DataError, match=r"--labels must be between 2 \(one per class\) and 3"):
        labeled_split(y, 5, seed=0)


def test_augment_batch():
    x = torch.rand(64, 3, 12, 12)
    assert augment_batch(x, "none") is x
    for kind in ("crop", "crop-flip"):
        out = augment_batch(x, kind, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
        assert (out != x).any(dim=(1, 2, 3)).float().mean() > 0.8  # most samples moved
        assert (out == 0).any()  # zero padding shows up
    again = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    assert torch.equal(again, augment_batch(x, "crop", torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "rotate")


def test_crop_is_a_translation():
    x = torch.zeros(200, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(200))  # shifts of <= 4 keep it
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert set(rows.tolist()) == set(range(9)) and set(cols.tolist()) == set(range(9))


def test_flip_flips():
    x = torch.zeros(200, 1, 4, 16)
    x[..., :8] = 1.0  # left half bright; a shift of <= 4 keeps most of it on the left
    out = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    flipped = out[..., 8:].sum((1, 2, 3)) > out[..., :8].sum((1, 2, 3))
    assert not (augment_batch(x, "crop")[..., 8:].sum((1, 2, 3)) > 16).any()
    assert 0.3 < flipped.float().mean() < 0.7
