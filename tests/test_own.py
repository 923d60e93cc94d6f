"""Your own model and your own data (docs/own-model-and-data.md): ``folder:`` and ``npz:``
datasets, ``--model MODULE:FACTORY`` in training and evaluation, TorchScript and
``torch.export`` files, the input mapping, the page's two examples, and each bad input as
one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from erat.cli import main
from erat.datasets import dataset_info, load_dataset
from erat.datasets.own import describe
from erat.datasets.registry import DataError
from erat.external import input_layer, parse_normalize
from erat.rundir import open_model

DOC = Path(__file__).parents[1] / "docs" / "own-model-and-data.md"
RNG = np.random.default_rng(0)
NET = '''
import torch
from torch import nn


def build(in_shape, num_classes, hidden=16):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def not_a_module():
    return "a string"


class Fixed(nn.Module):  # a class is a factory too; this one ignores the classes
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_images(folder: Path, n: int, size=(8, 8), mode="RGB", label: int = 0) -> None:
    """``n`` PNG images whose brightness tells their class (a learnable toy)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape = (*size[::-1], 3) if mode == "RGB" else size[::-1]
        base = 60 + 120 * label
        pixels = np.clip(base + RNG.integers(-50, 50, shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"{i:02d}.png")


def image_folder(root: Path, classes=("cat", "dog"), n_train=16, n_test=4, **kw) -> Path:
    """The 40-image ImageFolder tree: train/ and test/, one folder per class."""
    for label, name in enumerate(classes):
        write_images(root / "train" / name, n_train, label=label, **kw)
        write_images(root / "test" / name, n_test, label=label, **kw)
    return root


def npz_file(path: Path, layout="NHWC", dtype=np.uint8, n_train=24, n_test=8, **extra) -> Path:
    x = RNG.integers(0, 256, (n_train + n_test, 8, 8, 3)).astype(np.uint8)
    y = np.arange(n_train + n_test) % 3
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    x = x if dtype == np.uint8 else (x / 255.0).astype(dtype)
    arrays = {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:],
              "y_test": y[n_train:], **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture
def net_module(tmp_path, monkeypatch):
    """``mynet.py`` in the current folder, importable as ``mynet`` (as from a shell)."""
    (tmp_path / "mynet.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield tmp_path
    sys.modules.pop("mynet", None)


# --- data --------------------------------------------------------------------------------


def test_folder_with_train_and_test(tmp_path):
    root = image_folder(tmp_path / "imgs")
    info = dataset_info(f"folder:{root}")
    x, y = load_dataset(f"folder:{root}", "train").tensors
    assert info.shape == (3, 8, 8) and info.num_classes == 2 and x.shape == (32, 3, 8, 8)
    assert y.tolist() == [0] * 16 + [1] * 16 and x.dtype == torch.float32
    assert info.details["classes"] == ["cat", "dog"] and info.details["test"] == "test/"
    assert torch.allclose(torch.tensor(info.mean), x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(torch.tensor(info.std), x.std((0, 2, 3), unbiased=False), atol=1e-4)
    assert len(load_dataset(f"folder:{root}", "test")) == 8
    import erat  # (the top-level API takes the same options: it refused resize)

    assert erat.load_dataset(f"folder:{root}", "test", resize=4).tensors[0].shape == (8, 3, 4, 4)


def test_folder_reads_images_in_imagefolders_order(tmp_path):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    root = image_folder(tmp_path / "imgs", classes=("b", "a", "C"), n_train=3, n_test=1)
    write_images(root / "train" / "a" / "nested", 2)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    x, y = load_dataset(f"folder:{root}", "train").tensors
    reference = ImageFolder(str(root / "train"))
    assert y.tolist() == reference.targets and reference.classes == ["C", "a", "b"]
    assert torch.equal((x[4] * 255).round().byte(), pil_to_tensor(reference[4][0]))


def test_folder_test_split_is_stratified_and_fixed(tmp_path):
    for label, name in enumerate(("a", "b", "c")):
        write_images(tmp_path / "flat" / name, 10, label=min(label, 1))
    name = f"folder:{tmp_path / 'flat'}"
    test = load_dataset(name, "test", test_split=0.2).tensors
    again = load_dataset(name, "test", test_split=0.2).tensors
    train_y = load_dataset(name, "train", test_split=0.2).tensors[1]
    assert test[1].tolist() == [0, 0, 1, 1, 2, 2] and len(train_y) == 24
    assert torch.equal(test[0], again[0])
    assert "held out: 0.2" in dataset_info(name, test_split=0.2).details["test"]


def test_folder_grayscale_and_mixed_channels(tmp_path):
    write_images(tmp_path / "g" / "a", 3, mode="L")
    write_images(tmp_path / "g" / "b", 3, mode="L", label=1)
    assert dataset_info(f"folder:{tmp_path / 'g'}", test_split=0.34).shape == (1, 8, 8)
    write_images(tmp_path / "g" / "c", 3)  # one RGB class: every image is RGB
    assert dataset_info(f"folder:{tmp_path / 'g'}", test_split=0.34).shape == (3, 8, 8)


def test_folder_16_bit_and_float_images_keep_their_values(tmp_path):
    """A 16-bit PNG and a float TIFF were clipped by PIL's convert("L") (51400 of 65535 read
    as 1.0, a float 0.5 as 0); they are scaled to 8 bits now, and a float outside [0, 1] is
    one line naming the file."""
    from PIL import Image

    for label, (name, pixels) in enumerate([("deep.png", np.full((6, 6), 200 * 257, np.uint16)),
                                            ("float.tiff", np.full((6, 6), 0.5, np.float32))]):
        for split in ("train", "test"):
            (tmp_path / split / f"c{label}").mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / split / f"c{label}" / name)
    x, y = load_dataset(f"folder:{tmp_path}", "train").tensors
    assert torch.allclose(x[y == 0], torch.tensor(200 / 255)) and \
        torch.allclose(x[y == 1], torch.tensor(128 / 255))
    assert "; 16- or 32-bit integer images scaled from 0..65535" in \
        describe(dataset_info(f"folder:{tmp_path}"))
    Image.fromarray(np.full((6, 6), 2.5, np.float32)).save(tmp_path / "train" / "c1" / "b.tiff")
    with pytest.raises(DataError, match="b.tiff: an image of PIL mode F must hold values in"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_folder_16_bit_images_of_8_bit_values_are_read_as_such(tmp_path):
    """16-bit PNGs that all hold values of 0..255 (8-bit images saved 16-bit) read near
    black over 65535; they are read as 8-bit values, and said so. A darker 16-bit image among
    brighter ones is read over 65535, in train/ and test/ alike."""
    from PIL import Image

    def save(split, label, value):
        (tmp_path / split / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6), value, np.uint16)).save(
            tmp_path / split / f"c{label}" / f"{value}.png")

    for split in ("train", "test"):
        save(split, 0, 200)
        save(split, 1, 51)
    x, y = load_dataset(f"folder:{tmp_path}", "test").tensors
    assert torch.allclose(x[y == 0], torch.tensor(200 / 255)) and \
        torch.allclose(x[y == 1], torch.tensor(51 / 255))
    assert "; 16- or 32-bit integer images holding 0..255 only, read as 8-bit values" in \
        describe(dataset_info(f"folder:{tmp_path}"))
    save("train", 1, 40000)  # a bright one: the others are dark images, over 65535, in
    for split in ("train", "test"):  # train/ and test/ alike
        x, y = load_dataset(f"folder:{tmp_path}", split).tensors
        assert torch.allclose(x[y == 0], torch.tensor(round(200 / 257) / 255))
    assert "; 16- or 32-bit integer images scaled from 0..65535" in \
        describe(dataset_info(f"folder:{tmp_path}"))


def test_files_that_are_not_images_are_said(tmp_path):
    """A notes.txt in a class folder was skipped without a word."""
    root = image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    assert "; 1 other file not read (notes.txt)" in describe(dataset_info(f"folder:{root}"))
    with pytest.raises(DataError, match=r"notes.txt: a file, not a folder of images$"):
        dataset_info(f"folder:{root / 'train' / 'cat' / 'notes.txt'}")


def test_resize(tmp_path):
    write_images(tmp_path / "r" / "a", 3, size=(10, 6))
    write_images(tmp_path / "r" / "b", 3, size=(7, 9), label=1)
    name = f"folder:{tmp_path / 'r'}"
    x, _ = load_dataset(name, "train", test_split=0.34, resize=5).tensors
    assert x.shape == (4, 3, 5, 5)


def test_one_based_labels_are_named_as_such(tmp_path):
    """Labels 1..K without ``classes`` left class 0 empty: the message said only that."""
    path = tmp_path / "one.npz"
    np.savez(path, x_train=RNG.integers(0, 256, (30, 8, 8), dtype=np.uint8),
             y_train=np.arange(30) % 3 + 1)
    with pytest.raises(DataError, match=r"class\(es\) 0 have no training images; labels "
                                        r"1\.\.K\? erat counts classes from 0"):
        dataset_info(f"npz:{path}", test_split=0.2)


def test_resized_float_images_stay_in_the_box(tmp_path):
    """Antialiased resizing of float pixels in [0, 1] overshoots 1 a little (1.0000002):
    the data were refused with a message that printed their range as [0, 1]."""
    x = np.random.default_rng(0).random((40, 28, 28)).astype(np.float32)
    x[x > 0.7] = 1.0  # (28 -> 24 pixels: 1.0000002 without the clamp)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, y_train=np.arange(40) % 2)
    got, _ = load_dataset(f"npz:{path}", "train", test_split=0.25, resize=24).tensors
    assert got.shape[-2:] == (24, 24) and float(got.min()) >= 0 and float(got.max()) <= 1
    np.savez(path, x_train=x, y_train=np.arange(40) % 2, x_test=x[:0], y_test=np.arange(0))
    with pytest.raises(DataError, match="no test images"):  # (an empty split: said, resized)
        load_dataset(f"npz:{path}", "test", resize=24)
    np.savez(path, x_train=x * 1.000001 + 1e-6, y_train=np.arange(40) % 2)  # (outside)
    with pytest.raises(DataError, match=r"pixels in \[0\.\d+, 1\.000002\d*\]"):
        load_dataset(f"npz:{path}", "train", test_split=0.25, resize=24)


@pytest.mark.parametrize("layout, dtype", [("NHWC", np.uint8), ("NCHW", np.uint8),
                                           ("NHWC", np.float32)])
def test_npz_layouts_are_detected(tmp_path, layout, dtype):
    global RNG
    RNG = np.random.default_rng(1)
    path = npz_file(tmp_path / "d.npz", layout, dtype)
    RNG = np.random.default_rng(1)
    reference = npz_file(tmp_path / "ref.npz", "NCHW")
    x, y = load_dataset(f"npz:{path}", "train").tensors
    x_ref, _ = load_dataset(f"npz:{reference}", "train").tensors
    info = dataset_info(f"npz:{path}")
    assert x.shape == (24, 3, 8, 8) and info.num_classes == 3 and y.tolist()[:4] == [0, 1, 2, 0]
    assert torch.allclose(x, x_ref, atol=1e-6)
    assert info.details["layout"] == f"x_train {layout}, x_test {layout}"


def test_npz_grayscale_classes_and_evaluation_only(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, x_test=RNG.integers(0, 256, (6, 5, 5), dtype=np.uint8),
             y_test=np.array([0, 1, 2, 3, 0, 1]), classes=np.array(["w", "x", "y", "z"]))
    info = dataset_info(f"npz:{path}")
    assert info.shape == (1, 5, 5) and info.num_classes == 4 and info.details["n_train"] == 0
    assert info.details["layout"] == "x_test NHW" and info.details["classes"][-1] == "z"
    with pytest.raises(ValueError, match="can be evaluated, not trained on"):
        load_dataset(f"npz:{path}", "train")


def test_registered_datasets_take_no_own_options():
    with pytest.raises(ValueError, match="--resize is for your own data"):
        dataset_info("digits", resize=16)
    with pytest.raises(ValueError, match="unknown kind of dataset 'zip'"):
        dataset_info("zip:x")


# --- models --------------------------------------------------------------------------------


def test_train_a_factory_model_on_a_folder_and_eval_the_run(net_module, capsys):
    image_folder(net_module / "imgs")
    out = net_module / "runs" / "own"
    code, text, err = run(["train", "--dataset", "folder:imgs", "--model", "mynet:build",
                           "--model-kwargs", '{"hidden": 8}', "--method", "er", "--eps", "0.5",
                           "--epochs", "2", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    assert "folder:imgs: 32 training and 8 test images of 3x8x8 (image files, RGB)" in text
    meta = open_model(out).meta
    assert meta["model"] == "mynet:build" and meta["in_shape"] == [3, 8, 8]
    assert meta["data"]["classes"] == ["cat", "dog"]
    assert meta["data"]["path"] == str((net_module / "imgs").resolve())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["dataset"] == "folder:imgs" and "resize" in cfg and "test_split" in cfg
    code, text, err = run(["eval", out, "--eps", "0.25", "--json", out / "eval.json"], capsys)
    assert code in (0, 3), err
    threat = json.loads((out / "eval.json").read_text())["threat"]
    assert threat["data"]["classes"] == ["cat", "dog"] and threat["n"] == 8
    assert "data: folder:imgs test split (test/)" in text


def test_a_model_file_is_recorded_by_its_absolute_path(net_module, monkeypatch, capsys):
    """``--model mynet.py:build`` was recorded as typed, so `erat eval RUN` failed from any
    other folder (the data's path was already absolute); model.pt records the absolute path
    now, config.yaml the setting as given (a resume or a suite moved elsewhere compares it)."""
    out = net_module / "run"
    assert main(["train", "--dataset", "digits", "--model", "mynet.py:build", "--epochs", "1",
                 "--epoch-updates", "1", "--no-progress", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "mynet.py:build"
    assert open_model(out).meta["model"] == f"{net_module / 'mynet.py'}:build"
    (net_module / "elsewhere").mkdir()
    monkeypatch.chdir(net_module / "elsewhere")
    assert main(["eval", str(out), "--eps", "0.5", "--steps", "1", "--n", "10",
                 "--no-checks"]) == 0, capsys.readouterr().err


def test_a_factory_without_weights_is_built_from_the_seed(net_module):
    """Its weights are the factory's own random ones: the same for the same --seed."""
    from erat.external import ExternalOptions, open_external

    npz_file(net_module / "data.npz")
    options = ExternalOptions(model="mynet:build", dataset="npz:data.npz")

    def weights(seed):
        with pytest.warns(UserWarning, match="no --weights"):
            got = open_external(options, n=None, data_dir=None, device=torch.device("cpu"),
                                seed=seed)
        return torch.cat([p.flatten() for p in got.model.parameters()])

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))


def test_a_factory_changed_since_training_is_one_whole_line(net_module, capsys):
    npz_file(net_module / "data.npz")
    out = net_module / "run"
    assert run(["train", "--dataset", "npz:data.npz", "--model", "mynet:build", "--epochs",
                "1", "--no-progress", "--out", out], capsys)[0] == 0
    (net_module / "mynet.py").write_text(NET.replace("hidden=16", "hidden=12"))
    sys.modules.pop("mynet", None)
    code, text, err = run(["eval", out, "--eps", "0.25", "--no-checks"], capsys)
    assert_one_line_exit_2(code, text, err, r"did its factory change since training\? "
                                            r"\(Error\(s\) in loading state_dict .*size mismatch")


def test_eval_rereads_own_data_from_another_folder_and_refuses_changed_images(
        tmp_path, capsys, monkeypatch):
    image_folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert run(["train", "--dataset", "folder:imgs", "--model", "mlp", "--epochs", "1",
                "--no-progress", "--out", out], capsys)[0] == 0
    monkeypatch.chdir(tmp_path / "imgs")  # the run recorded the absolute path
    code, _, err = run(["eval", out, "--eps", "0.25", "--no-checks"], capsys)
    assert code == 0, err
    (tmp_path / "imgs").rename(tmp_path / "moved")  # the data moved: --data-dir says where
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["eval", out, "--eps", "0.25", "--no-checks"], capsys)
    assert code == 2 and "no such folder" in err and "if the data moved, pass --data-dir" in err
    code, printed, err = run(["eval", out, "--eps", "0.25", "--no-checks", "--data-dir",
                              tmp_path / "moved", "--fresh"], capsys)
    assert code == 0 and f"read from {tmp_path / 'moved'}" in printed, err  # (said the old one)
    write_images(tmp_path / "moved" / "test" / "cat", 1, label=1)  # another 00.png
    code, _, err = run(["eval", out, "--eps", "0.25", "--no-checks", "--data-dir", "moved"],
                       capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "the test images of folder:moved are not the ones" in err and "None" not in err
    assert "if the data moved" not in err  # (--data-dir was given: the images changed)


@pytest.fixture
def weights(net_module):
    """A state dict of ``mynet:build`` for npz data of 3 classes, and the data."""
    npz_file(net_module / "data.npz")
    sys.path.insert(0, str(net_module))
    try:
        import mynet
    finally:
        sys.path.remove(str(net_module))
    torch.manual_seed(0)
    net = mynet.build((3, 8, 8), 3)
    torch.save(net.state_dict(), net_module / "w.pt")
    return net


def test_resume_refuses_data_that_changed_since_the_run_started(tmp_path, capsys):
    """--resume trained on whatever the path held now (an npz rewritten, a relative path
    read from another folder): accuracy fell with no word. The SHA-256s of the training and
    test data are kept in split.json and checked."""
    data, out = npz_file(tmp_path / "d.npz"), tmp_path / "run"
    first = ["train", "--dataset", f"npz:{data}", "--model", "mlp", "--epochs", "2",
             "--batch-size", "8", "--no-progress", "--out", str(out)]
    assert main([*first, "--stop-after", "1"]) == 0
    saved = json.loads((out / "split.json").read_text())
    assert set(saved) == {"train_sha256", "test_sha256"}
    arrays = dict(np.load(data))
    np.savez(data, **arrays | {"x_train": 255 - arrays["x_train"]})
    capsys.readouterr()
    assert main([*first[:-2], "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume: the train data of npz:" in err and "differ from those" in err, err
    np.savez(data, **arrays)  # the same data again: the run goes on
    assert main([*first[:-2], "--resume", "--out", str(out)]) == 0
    assert (out / "model.pt").exists()


def test_eval_a_factory_with_weights_names_the_file_and_its_digest(weights, net_module,
                                                                   capsys):
    out = net_module / "eval.json"
    code, text, err = run(["eval", "--model", "mynet:build", "--weights", "w.pt", "--dataset",
                           "npz:data.npz", "--eps", "0.5", "--json", out], capsys)
    assert code in (0, 3), err
    threat = json.loads(out.read_text())["threat"]
    digest = __import__("hashlib").sha256((net_module / "w.pt").read_bytes()).hexdigest()
    assert threat["model_file"] == str(net_module / "w.pt") and threat["model_sha256"] == digest
    assert threat["dataset"] == "npz:data.npz" and threat["data"]["layout"].endswith("NHWC")
    assert f"model: mynet:build (factory, {net_module / 'w.pt'} sha256 {digest[:12]})" in text
    assert list((net_module / "cache" / "erat").iterdir())  # resumable state, in the cache


def _script(net: torch.nn.Module, path) -> None:
    """Save ``net`` as TorchScript; torch.jit's deprecation note is a FutureWarning in torch
    2.14, a DeprecationWarning in 2.11 (the GPU machines' torch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), path)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_eval_a_torchscript_or_export_file(weights, net_module, capsys, kind):
    weights.eval()
    path = net_module / ("net.ts" if kind == "torchscript" else "net.pt2")
    if kind == "torchscript":
        _script(weights, path)
    else:
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(weights, (torch.rand(2, 3, 8, 8),),
                                              dynamic_shapes=({0: batch},)), path)
    for model in ("--model", path), ("--model", "mynet:build", "--weights", "w.pt"):
        code, _, err = run(["eval", *model, "--dataset", "npz:data.npz", "--eps", "0.5",
                            "--no-checks", "--json", net_module / "e.json"], capsys)
        assert code == 0, err
        result = json.loads((net_module / "e.json").read_text())
        if model[1] == path:
            first = result
            assert result["threat"]["model_kind"] == ("torchscript" if kind == "torchscript"
                                                      else "torch.export")
    assert first["robust_acc"] == result["robust_acc"] and first["clean_acc"] == \
        result["clean_acc"]
    code, text, err = run(["train", "--model", path, "--dataset", "npz:data.npz", "--epochs",
                           "1", "--out", net_module / "run"], capsys)  # (frozen: not trained)
    assert_one_line_exit_2(code, text, err, r"a file; erat trains a network it builds, named "
                                            r"MODULE:FACTORY \(a TorchScript or torch.export")
    assert not (net_module / "run").exists()


def test_a_torchscript_file_is_attacked_eager_inside_its_wrapper(weights, net_module):
    """The fast evaluation (CUDA graphs) leaves TorchScript out; the network comes wrapped in
    ``Sequential(normalize, net)``, so the check looks inside (it looked at the wrapper only,
    which is never a ScriptModule)."""
    from erat.assess import scripted
    from erat.external import ExternalOptions, open_external

    path = net_module / "net.ts"
    _script(weights.eval(), path)
    got = open_external(ExternalOptions(model=str(path), dataset="npz:data.npz"), n=None,
                        data_dir=str(net_module), device=torch.device("cpu"))
    assert not isinstance(got.model, torch.jit.ScriptModule) and scripted(got.model)
    assert not scripted(weights)


def test_normalize_and_input_range_keep_radii_in_pixel_space():
    mean, std = parse_normalize("0.4,0.5,0.6,0.2,0.25,0.5", 3)
    assert mean == (0.4, 0.5, 0.6) and std == (0.2, 0.25, 0.5)
    assert parse_normalize("0.5;0.25", 3) == ((0.5,) * 3, (0.25,) * 3)
    x = torch.rand(2, 3, 4, 4)
    layer = input_layer(0.0, 255.0, (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
    wanted = (255 * x - torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1)) / \
        torch.tensor([60.0, 50.0, 40.0]).view(1, 3, 1, 1)
    assert torch.allclose(layer(x), wanted, atol=1e-4)
    with pytest.raises(ValueError, match="--normalize wants MEAN,STD or 3 means"):
        parse_normalize("0.5,0.5,0.5", 3)


# --- the page's two examples -------------------------------------------------------------


def doc_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", DOC.read_text(), flags=re.S)


def erat_commands(block: str) -> list[list[str]]:
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("erat ")]


@pytest.mark.slow
def test_the_pages_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    blocks = doc_blocks()
    assert [kind for kind, _ in blocks] == ["python", "bash", "bash", "python"]
    lines = [len(block.splitlines()) for _, block in blocks]
    assert lines[0] + lines[1] < 20 and lines[2] < 20  # each example under 20 lines
    # example 1: a ResNet-18 "trained elsewhere" (random weights) and 10 test images
    images = RNG.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    exec(compile(blocks[0][1], str(DOC), "exec"),
         {"images": images, "labels": np.arange(10), "__name__": "doc"})
    for args in erat_commands(blocks[1][1]):
        code, _, err = run(args, capsys)
        assert code in (0, 3), err  # 3: a random network may fail a sanity check
    threat = json.loads((tmp_path / "resnet18-eval.json").read_text())["threat"]
    assert threat["model_file"].endswith("resnet18.pt") and len(threat["model_sha256"]) == 64
    # example 2: 40 photos of different sizes in two classes, brightness telling the class;
    # the test photos of each class look like the other's (no image is classified right, so
    # the attacks have nothing to do: on a robust model Square alone takes minutes here)
    for label, name in enumerate(("daisy", "rose")):
        for split, n in (("train", 16), ("test", 4)):
            for i in range(n):
                write_images(tmp_path / "photos" / split / name / str(i), 1, size=(20 + i, 24),
                             label=label if split == "train" else 1 - label)
    for args in erat_commands(blocks[2][1]):
        code, _, err = run(args, capsys)
        assert code in (0, 3), err
    result = json.loads((tmp_path / "runs" / "photos-er" / "eval.json").read_text())
    assert result["threat"]["data"]["resize"] == 32 and result["threat"]["n"] == 8
    # example 3, from Python: a small network on 24 random 16x16 images, one epoch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 14 * 14, 10))
    x, y = torch.rand(24, 3, 16, 16), torch.arange(24) % 10
    given = {"my_network": net, "MEAN": (0.5,) * 3, "STD": (0.25,) * 3, "x_train": x[:16],
             "y_train": y[:16], "x_test": x[16:], "y_test": y[16:], "__name__": "doc"}
    exec(compile(blocks[3][1].replace("epochs=10", "epochs=1"), str(DOC), "exec"), given)
    assert set(given["result"]["robust_acc"]) >= {"all-l2-eps0.25", "all-l2-eps0.5"}
    assert (tmp_path / "mine.pt").is_file()


# --- bad input: one line, exit 2, nothing written ----------------------------------------


def _empty_class(root: Path) -> str:
    image_folder(root)
    (root / "train" / "emu").mkdir()
    (root / "test" / "emu").mkdir()
    return f"folder:{root}"


def _one_class(root: Path) -> str:
    image_folder(root, classes=("cat",))
    return f"folder:{root}"


def _unreadable(root: Path) -> str:
    image_folder(root)
    (root / "train" / "cat" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return f"folder:{root}"


def _mixed_sizes(root: Path) -> str:
    image_folder(root)
    write_images(root / "train" / "dog" / "big", 1, size=(12, 12), label=1)
    return f"folder:{root}"


def _npz(root: Path, x: np.ndarray, **labels: np.ndarray) -> str:
    """A data folder holding d.npz with ``x`` as the images of every split given labels."""
    root.mkdir()
    images = {f"x_{k.split('_')[1]}": x for k in labels}
    np.savez(root / "d.npz", **images, **labels)
    return f"npz:{root / 'd.npz'}"


def _lengths_differ(root: Path) -> str:
    x = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    return _npz(root, x, y_train=np.arange(9) % 2, y_test=np.arange(10) % 2)


def _labels_outside(root: Path) -> str:
    x = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    return _npz(root, x, y_train=np.arange(10) % 2, y_test=np.arange(10) % 3)


def _negative_labels(root: Path) -> str:  # (said "one class only (0)" before)
    x = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    return _npz(root, x, y_train=np.arange(10) % 2 - 1)


def _float_outside(root: Path) -> str:
    return _npz(root, RNG.normal(size=(10, 3, 8, 8)).astype(np.float32),
                y_train=np.arange(10) % 2)


def _channels_differ(root: Path) -> str:  # (suggested --resize, which cannot mend it)
    root.mkdir()
    np.savez(root / "d.npz", x_train=RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(10) % 2, x_test=RNG.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8),
             y_test=np.arange(10) % 2)
    return f"npz:{root / 'd.npz'}"


class Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _npz_with_code(root: Path) -> str:
    root.mkdir()
    x = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "d.npz", x_train=x, y_train=np.array([Evil(root / "RAN")] * 10, dtype=object),
             allow_pickle=True)
    return f"npz:{root / 'd.npz'}"


BAD_DATA = {
    "empty class folder": (_empty_class, r"class folder .*emu holds no images"),
    "one class only": (_one_class, r"one class only \(cat\)"),
    "unreadable image": (_unreadable, r"cannot read image .*05\.png"),
    "mixed sizes": (_mixed_sizes, r"images of different sizes in .*; pass --resize N"),
    "lengths differ": (_lengths_differ, r"10 training images but 9 labels"),
    "labels outside": (_labels_outside, r"test labels 0\.\.2 outside 0\.\.1 \(2 classes\)"),
    "negative labels": (_negative_labels, r"training labels -1\.\.0 outside 0\.\.0"),
    "pixels outside": (_float_outside, r"pixels in \[-.*\]; erat reads uint8"),
    "pickled code": (_npz_with_code, r"holds pickled Python objects"),
    "channels differ": (_channels_differ, r"training images are 3x8x8 but test images 1x8x8$"),
}


def assert_one_line_exit_2(code: int, out: str, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("erat: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_refused_before_anything_is_written(tmp_path, capsys, case):
    make, pattern = BAD_DATA[case]
    name = make(tmp_path / "data")
    out = tmp_path / "run"
    code, text, err = run(["train", "--dataset", name, "--model", "mlp", "--epochs", "1",
                           "--no-progress", "--out", out], capsys)
    assert_one_line_exit_2(code, text, err, pattern)
    assert not out.exists() and not (tmp_path / "data" / "RAN").exists()
    json_path = tmp_path / "e.json"
    code, text, err = run(["eval", "--model", "torchvision.models:resnet18", "--dataset", name,
                           "--json", json_path], capsys)
    assert_one_line_exit_2(code, text, err, pattern)
    assert not json_path.exists() and not (tmp_path / "data" / "RAN").exists()


def _pickled_code_weights(folder: Path) -> list[str]:
    torch.save({"fc.weight": Evil(folder / "RAN")}, folder / "evil.pt")
    return ["--model", "mynet:build", "--weights", "evil.pt"]


def _raw_pickle_weights(folder: Path) -> list[str]:
    with open(folder / "evil.pkl", "wb") as f:
        pickle.dump(Evil(folder / "RAN"), f)
    return ["--model", "mynet:build", "--weights", "evil.pkl"]


def _weights_that_do_not_fit(folder: Path) -> list[str]:
    torch.save({"1.weight": torch.zeros(16, 192), "3.weight": torch.zeros(5, 16)},
               folder / "w.pt")
    return ["--model", "mynet:build", "--weights", "w.pt"]


def _text_weights(folder: Path) -> list[str]:
    (folder / "w.txt").write_text("garbage\n")
    return ["--model", "mynet:build", "--weights", "w.txt"]


def _whole_model_pickle(folder: Path) -> list[str]:
    torch.save(nn.Linear(2, 2), folder / "whole.pt")
    return ["--model", "whole.pt"]


def _needs_a_missing_package(folder: Path) -> list[str]:
    (folder / "needs.py").write_text("import erat_no_such_package\n\n\ndef build(**k):\n"
                                     "    return None\n")
    return ["--model", "needs.py:build"]


def _scripted_for_other_images(folder: Path) -> list[str]:
    _script(nn.Sequential(nn.Flatten(), nn.Linear(10, 3)), folder / "other.ts")
    return ["--model", "other.ts"]


def _exported_for_other_images(folder: Path) -> list[str]:
    batch = torch.export.Dim("batch")
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 4, 4),),
                                          dynamic_shapes=({0: batch},)), folder / "other.pt2")
    return ["--model", "other.pt2"]


def _exported_for_one_batch_size(folder: Path) -> list[str]:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 8, 8),)), folder / "b2.pt2")
    return ["--model", "b2.pt2"]


def _imports_its_neighbour(folder: Path) -> list[str]:
    (folder / "models").mkdir()
    (folder / "models" / "blocks.py").write_text("WIDTH = 4\n")
    (folder / "models" / "net.py").write_text("import blocks\n\n\ndef build(**k):\n"
                                              "    return None\n")
    return ["--model", "models/net.py:build"]


BAD_MODELS = {
    "a module beside it": (_imports_its_neighbour, r"No module named 'blocks'; blocks is "
                                                   r"beside it: add its folder to PYTHONPATH "
                                                   r"\(PYTHONPATH=\S*models\)$"),
    "no such module": (lambda f: ["--model", "nomodule:build"], r"cannot import nomodule"),
    "a package it imports is missing": (
        _needs_a_missing_package, r"importing needs.py failed: No module named "
                                  r"'erat_no_such_package' \(a module it imports: install it\)$"),
    "a file without its factory": (lambda f: ["--model", "mynet.py"],
                                   r"--model mynet.py: a Python file; .* --model mynet.py:FACTORY|"
                                   r"unknown model 'mynet.py'.* MODULE:FACTORY \(e.g. mynet.py:"),
    "TorchScript for other images": (_scripted_for_other_images,
                                     r"fails on 1 test image\(s\) \[1, 3, 8, 8\]: RuntimeError: "
                                     r"mat1 and mat2 shapes cannot be multiplied"),
    "exported for other images": (_exported_for_other_images,
                                  r"Guard failed: input.size\(\)\[2\] == 4$"),
    "exported for one batch size": (_exported_for_one_batch_size,
                                    r"== 2 \(export it with a dynamic batch dimension\)$"),
    "no such factory": (lambda f: ["--model", "mynet:nope"], r"mynet \(.*mynet.py\) has no 'nope'"),
    "no such file": (lambda f: ["--model", "missing.py:build"], r"no such file \S*missing.py"),
    "not a module": (lambda f: ["--model", "mynet:not_a_module"],
                     r"returned an object of type str, not a torch.nn.Module"),
    "wrong outputs": (lambda f: ["--model", "mynet:Fixed"], r"gives .*5.*3 classes"),
    "weights that do not fit": (_weights_that_do_not_fit,
                                r"weights in w.pt do not fit mynet:build \(missing from the "
                                r"file: 1.bias"),
    "pickled code": (_pickled_code_weights, r"holds the Python object (posix|nt)\.system"),
    "raw pickle": (_raw_pickle_weights, r"cannot read evil.pkl: not a file torch.save wrote"),
    "whole-model pickle": (_whole_model_pickle, r"not a TorchScript or torch.export"),
    "not a torch file": (_text_weights, r"cannot read w.txt: not a file torch.save wrote; "
                                        r"wanted a valid state dict"),
    "kwargs the data sets": (lambda f: ["--model", "mynet:build", "--model-kwargs",
                                        '{"num_classes": 3}'],
                             r"--model-kwargs must not set num_classes: the data sets it"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_are_refused_before_anything_is_written(net_module, capsys, case):
    npz_file(net_module / "data.npz")
    make, pattern = BAD_MODELS[case]
    args = make(net_module)
    json_path = net_module / "e.json"
    code, text, err = run(["eval", *args, "--dataset", "npz:data.npz", "--json", json_path],
                          capsys)
    if case == "wrong outputs":  # labels index the logits: 5 logits for 3 classes evaluate
        assert code in (0, 3), err
    else:
        assert_one_line_exit_2(code, text, err, pattern)
        assert not json_path.exists() and not (net_module / "cache").exists()
    assert not (net_module / "RAN").exists()
    if "--weights" in args or case in ("whole-model pickle", "TorchScript for other images",
                                       "exported for other images",
                                       "exported for one batch size"):  # (evaluation only)
        return
    out = net_module / "run"
    code, text, err = run(["train", "--dataset", "npz:data.npz", *args, "--epochs", "1",
                           "--no-progress", "--out", out], capsys)
    assert_one_line_exit_2(code, text, err, pattern)
    assert not out.exists()


@pytest.mark.parametrize("args, pattern", [
    (["--model", "mynet:build"], r"--model needs --dataset"),
    (["--model", "x", "--dataset", "npz:data.npz"], r"--model x: no such file, and not MODULE"),
    (["--model", "mynet:build", "--dataset", "npz:data.npz", "--normalize", "1,2,3"],
     r"--normalize wants MEAN,STD or 3 means then 3 stds"),
    (["--model", "mynet:build", "--dataset", "npz:data.npz", "--input-range", "255,0"],
     r"--input-range wants finite LO < HI"),
    (["--model", "mynet:build", "--dataset", "npz:data.npz", "--test-split", "0.2"],
     r"has its own x_test; --test-split is for data without one"),
    (["RUN", "--dataset", "npz:data.npz"], r"--dataset: for a model from outside erat"),
    ([], r"give a run folder \(or model.pt\), or a model from outside erat"),
])
def test_eval_flag_errors(net_module, capsys, args, pattern):
    npz_file(net_module / "data.npz")
    code, text, err = run(["eval", *args], capsys)
    assert_one_line_exit_2(code, text, err, pattern)


def test_a_suite_on_own_data_reads_it_where_the_suite_names_it(tmp_path, monkeypatch):
    """A suite names its own data by a path relative to where it runs (or --data-dir): its
    report read the absolute path recorded at training, and failed once the project moved."""
    import shutil

    from erat.reproduce import reproduce

    first = tmp_path / "p1"
    (first / "data").mkdir(parents=True)
    npz_file(first / "data" / "mini.npz")
    (first / "s.yaml").write_text(
        "suite: own\ndefaults: {dataset: 'npz:data/mini.npz', model: mlp, epochs: 1, "
        "batch_size: 8, progress: false}\nruns:\n  - {name: erm, method: erm}\n"
        "eval: {eps: [0.1], steps: 1, sanity_n: 0}\nplots: {landscape: false}\n")
    monkeypatch.chdir(first)
    reproduce("s.yaml", Path("out"), log=lambda *_: None)
    shutil.move(first, tmp_path / "p2")
    monkeypatch.chdir(tmp_path / "p2")
    rows = reproduce("s.yaml", Path("out"), report_only=True, log=lambda *_: None)
    assert rows[0]["name"] == "erm" and rows[0]["clean_acc"] is not None
