"""Data entering the library (erat.inputs): images in [0, 1] and integer labels, checked
where they enter (fit, evaluate, energy_report, a method's Batch), one error naming the
argument. Each case was found by a user of the Python API: silently wrong, or a torch
traceback."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from erat.evaluate import evaluate
from erat.fit import FitData, FitOptions, fit
from erat.measure import energy_report
from erat.methods import Batch, build_method


@pytest.fixture()
def data():
    torch.manual_seed(0)
    return torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))


def linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize("make, message", [
    (lambda x, y: ((x - 0.5) / 0.5, y), "must lie in [0, 1] (pixel space; normalise inside"),
    (lambda x, y: (x * 255, y), "must lie in [0, 1]"),
    (lambda x, y: ((x * 255).byte(), y), "(8-bit images: x.float() / 255)"),
    (lambda x, y: (x, y[:5]), "must hold one class label per image, labels [12]; got shape (5,)"),
    (lambda x, y: (x, y.float()), "must be integer class labels, got torch.float32 ("),
    (lambda x, y: (x, y - 100), "must be class indices 0, 1, ..., got -100"),
    (lambda x, y: (x.numpy(), y), "must be a torch.Tensor of images"),
])
def test_every_entry_refuses_what_is_not_pixels_and_labels(data, make, message):
    """Out-of-range images were trained on and measured without a word (PGD's ball then
    clipped to the box: a perturbation of l2 size 1,500 at eps 1.5); short labels were
    repeated or dropped."""
    x, y = make(*data)
    model, method = linear(), build_method("pgd", eps=1.0, steps=1)
    calls = {
        "Batch": lambda: method(model.train(), Batch(x, y)),
        "fit": lambda: fit(model, method, FitData(x, y), FitOptions(epochs=1, progress=False),
                           log=lambda _: None),
        "evaluate": lambda: evaluate(model, x, y, eps=0.5, steps=1, sanity_n=0),
        "energy_report": lambda: energy_report(model, x, y, eps=0.5, T=1, M=1, S=0),
    }
    for name, call in calls.items():
        with pytest.raises((ValueError, TypeError)) as err:
            call()
        assert message in str(err.value), (name, str(err.value))


class _Outputs(nn.Module):
    """A linear model whose outputs are passed through ``make``."""

    def __init__(self, make):
        super().__init__()
        self.net, self.make = linear(), make

    def forward(self, x):
        return self.make(self.net(x))


@pytest.mark.parametrize("make, message", [
    (lambda out: (out, out), r"it returned a tuple \(return the logits alone"),
    (lambda out: out[:, 0], r"logits \[batch, classes\]; at \d+ .* returned shape \(\d+,\)"),
    (lambda out: out * torch.nan, r"outputs are not finite \(NaN or inf\) at \d+ of \d+"),
    (lambda out: torch.where(torch.arange(len(out))[:, None] == 9, torch.inf, out),
     r"not finite \(NaN or inf\) at 1 of 12 test images"),  # (past the first 8)
])
def test_outputs_that_are_not_logits_are_refused(data, make, message):
    """A model returning NaN was scored 0.094 (argmax of NaN is class 0: that class's share)
    and pyautoattack's Square crashed on it; a tuple or 1-D output failed deep in erat."""
    from erat.errors import UserError

    x, y = data
    for call in (lambda: evaluate(_Outputs(make), x, y, eps=0.5, steps=1, sanity_n=0),
                 lambda: energy_report(_Outputs(make), x, y, eps=0.5, T=1, M=1, S=0)):
        with pytest.raises(UserError, match=message):
            call()


def test_a_log_softmax_with_minus_inf_for_some_classes_is_a_model(data):
    """-inf for classes whose probability underflows still names a class; it was refused."""
    x, y = data
    model = _Outputs(lambda out: torch.where(torch.arange(10) == 9, -torch.inf, out))
    assert evaluate(model, x, y, eps=0.5, steps=1, sanity_n=0)["clean_acc"] >= 0


def test_a_run_whose_outputs_turn_nan_stops_as_diverged(data):
    """Validation and test accuracy on a model whose outputs became NaN: one line saying the
    training diverged (clean_accuracy counted NaN rows as class 0)."""
    from erat.errors import UserError

    x, y = data
    class Diverged(nn.Module):  # (trains on logits; eval mode, after the first look: NaN)
        def __init__(self):
            super().__init__()
            self.net, self.looks = linear(), 0

        def forward(self, x):
            self.looks += not self.training
            return self.net(x) * (torch.nan if self.looks > 1 else 1.0)

    for given in (dict(val=(x, y)), dict(test=(x, y))):
        model = Diverged()
        with pytest.raises(UserError, match=r"training diverged by epoch 1: the model's outputs "
                                            r"are not finite at \d+ of \d+ held-out images"):
            fit(model, build_method("erm"), FitData(x, y, **given),
                FitOptions(epochs=1, progress=False, val_eps=0.5), log=lambda _: None)


def test_outputs_an_attack_drives_to_nan_count_as_wrong():
    from erat.attacks.base import correct

    model = _Outputs(lambda out: torch.where(out.sum(1, keepdim=True) > 1e9, torch.nan, out))
    x = torch.zeros(2, 1, 8, 8)
    y = model(x).argmax(1)
    assert correct(model, x, y).tolist() == [True, True]
    assert correct(model, x + 1e12, y).tolist() == [False, False]


def test_labels_past_the_outputs_are_refused_not_counted_wrong(data):
    """evaluate counted a label the model cannot output as misclassified (clean 0.70 for
    0.74); energy_report failed inside cross-entropy."""
    x, y = data
    y = torch.where(y == 0, 10, y)
    y[0] = 10
    for call in (lambda: evaluate(linear(), x, y, eps=0.5, steps=1, sanity_n=0),
                 lambda: energy_report(linear(), x, y, eps=0.5, T=1, M=1, S=0)):
        with pytest.raises(ValueError, match=r"y holds label 10, but the model has 10 outputs"):
            call()


def test_int32_labels_and_numpy_or_text_radii_are_taken(data):
    x, y = data
    model = linear()
    out = build_method("er", eps=1.0)(model.train(), Batch(x, y.int()))
    assert out.loss.isfinite()
    a = evaluate(model, x, y.int(), eps=np.float32(0.5), steps=2, sanity_n=0)
    b = evaluate(model, x, y, eps="1/2", steps=2, sanity_n=0)
    assert a["robust_acc"] == b["robust_acc"] and list(a["robust_acc"]) == ["pgd-l2-eps0.5"]
    for eps in (["1/2"], torch.tensor([0.5]), torch.tensor(0.5)):  # (a list of texts was refused)
        assert evaluate(model, x, y, eps=eps, steps=2, sanity_n=0)["robust_acc"] == \
            b["robust_acc"]
    assert a["clean_acc"] == int(a["clean_acc"] * 12 + 0.5) / 12  # (a fraction, not float32's)


def test_linf_evaluation_without_radii_is_refused(data):
    """The l2 defaults 0.5 and 1.0 were used as l-inf radii (1.0 holds the whole box)."""
    from erat.errors import UserError

    with pytest.raises(UserError, match="an l-inf evaluation needs its radii, e.g. eps=8/255"):
        evaluate(linear(), *data, norm="linf")


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: DataLoader(TensorDataset(x, y)), "got DataLoader"),
    (lambda x, y: TensorDataset(x, y), "got TensorDataset (a TensorDataset's: ds.tensors"),
    (lambda x, y: (x, y, y), "an (x, y) pair of tensors, got tuple"),
])
def test_fit_names_what_it_takes(data, bad, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        fit(linear(), build_method("erm"), bad(*data))
    with pytest.raises(TypeError, match="method must be a training method"):
        fit(linear(), "pgd", data)


def test_a_method_on_an_eval_mode_model_warns_once(data, monkeypatch):
    """In eval mode a method's clean pass keeps BatchNorm's statistics and drops dropout: it
    trains another model than the user meant, silently."""
    from erat.methods import base

    monkeypatch.setattr(base, "_SAID_EVAL", [])
    model, method = linear().eval(), build_method("vat", eps=1.0)
    with pytest.warns(UserWarning, match="vat: the model is in eval mode"):
        method(model, Batch(*data))
    monkeypatch.setattr(base, "_SAID_EVAL", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():  # (no gradients: no training step, nothing to say)
            method(model, Batch(*data))
    with pytest.warns(UserWarning):
        method(model, Batch(*data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method(model, Batch(*data))  # (once)
    with pytest.raises(TypeError, match=r"a method takes \(model, Batch\(x, y\)\), got tuple"):
        method(model, data)


def test_float64_models_get_float64_losses(data):
    x, y = data
    model = linear().double()
    for name, params in [("erm", {}), ("er", {"eps": 1.0}), ("vat", {"eps": 1.0}),
                         ("trades", {"eps": 1.0, "steps": 1})]:
        out = build_method(name, **params)(model.train(), Batch(x.double(), y))
        assert out.loss.dtype == torch.float64, name


def test_fit_without_train_points_to_model_pt(tmp_path, data):
    import erat
    from erat.errors import UserError
    from erat.rundir import RunDir

    fit(linear(), build_method("erm"), data, FitOptions(epochs=1, progress=False),
        RunDir(tmp_path), log=lambda _: None)
    with pytest.raises(UserError, match="erat.fit.fit keeps its training state only"):
        erat.load_model(tmp_path)
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        erat.load_model(tmp_path, device="gpu")


def test_resolve_names_what_it_takes():
    from erat.config import resolve

    with pytest.raises(TypeError, match=r"a list of \(settings, source\) pairs"):
        resolve({"method": "er"})


def test_evaluate_warns_of_an_option_no_attack_takes(data):
    """restarts=5 beside attacks='fgsm' was dropped without a word (the CLI refuses it)."""
    with pytest.warns(UserWarning, match="restarts: no attack of fgsm takes it; ignored"):
        evaluate(linear(), *data, attacks="fgsm", restarts=5, eps=0.5, sanity_n=0)


def test_fit_refuses_labels_past_the_outputs(data):
    x, y = data
    y = y.clone()
    y[0] = 10
    with pytest.raises(ValueError, match="FitData.y holds label 10, but the model has 10"):
        fit(linear(), build_method("erm"), (x, y), FitOptions(epochs=1, progress=False))


def test_unlabeled_images_of_another_shape_are_refused(data):
    x, y = data
    for call, message in [
        (lambda: FitData(x, y, torch.rand(4, 1, 6, 6)), "FitData.x_unlabeled's images "
                                                       "(1, 6, 6) are not shaped as FitData.x's"),
        (lambda: Batch(x, y, torch.rand(4, 1, 6, 6)), "Batch.x_unlabeled's images (1, 6, 6) "
                                                     "are not shaped as Batch.x's (1, 8, 8)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_the_first_n_of_a_set_stored_class_by_class_are_said_to_miss_classes():
    """--n 10 of a folder of images stored class by class evaluated the first class alone,
    and said only 'first 10 of 30'."""

    from erat.errors import UserError
    from erat.inputs import first_n

    x, y = torch.rand(30, 1, 2, 2), torch.arange(3).repeat_interleave(10)
    with pytest.warns(UserWarning, match="the first 10 test images hold 1 of the test set's 3 "
                                         "classes"):
        xs, ys = first_n(x, y, 10)
    assert torch.equal(xs, x[:10]) and torch.equal(ys, y[:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert first_n(x, y, 21)[1].tolist() == y[:21].tolist()  # (every class: no word)
        assert first_n(x, y, None)[0] is x
        shuffled = y[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
        first_n(x, shuffled, 4)  # (too few to tell an order: no word)
        first_n(x, shuffled, 9)  # (in no order: no word)
    for n in (0, 31):
        with pytest.raises(UserError, match=f"--n must be between 1 and 30 .*got {n}"):
            first_n(x, y, n)


def test_an_l2_radius_past_the_images_diameter_is_refused_by_the_library(data):
    """``eps=255`` (pixels of 0..255 in mind) trained and measured without a word; the
    command line refused it, the library did not. 8x8 images: the diameter is 8."""
    from erat.errors import UserError

    x, y = data
    calls = [lambda: evaluate(linear(), x, y, eps=[0.5, 255], steps=1, sanity_n=0),
             lambda: energy_report(linear(), x, y, eps=9, T=1, M=1, S=0),
             lambda: fit(linear(), build_method("pgd", eps=255), FitData(x, y),
                         FitOptions(epochs=1, progress=False), log=lambda _: None),
             lambda: fit(linear(), build_method("erm"), FitData(x, y, val=(x, y)),
                         FitOptions(epochs=1, progress=False, val_eps=9.0), log=lambda _: None)]
    for call in calls:
        with pytest.raises(UserError, match=r"is above 8, the l2 diameter of 1x8x8 images"):
            call()
    assert evaluate(linear(), x, y, eps=8, steps=1, sanity_n=0)["robust_acc"]  # (at it: taken)


def test_a_model_without_trainable_parameters_and_a_zero_batch_are_one_line(data):
    from erat.errors import UserError

    x, y = data
    with pytest.raises(UserError, match="the model has no trainable parameters"):
        fit(linear().requires_grad_(False), build_method("erm"), FitData(x, y),
            FitOptions(epochs=1, progress=False), log=lambda _: None)
    with pytest.raises(UserError, match="batch_size must be an integer >= 1, got 0"):
        energy_report(linear(), x, y, eps=0.5, T=1, M=1, S=0, batch_size=0)


def test_normalize_takes_one_number_for_every_channel_and_refuses_other_channels():
    from erat.models import Normalize

    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(Normalize(0.5, 0.25)(x), Normalize([0.5] * 3, [0.25] * 3)(x))
    with pytest.raises(ValueError, match=r"holds 3 channel\(s\)' mean and std, but the "
                                         r"images are shaped \(1, 4, 4\)"):
        Normalize([0.5] * 3, [0.25] * 3)(x[:, :1])  # (broadcast to 3 channels before)
    with pytest.raises(ValueError, match="holds 1 channel"):
        Normalize([0.5], [0.25])(x)  # (one channel's, given per channel: as refused)
    assert torch.equal(Normalize(np.float32(0.5), torch.tensor(0.25))(x), Normalize(0.5, 0.25)(x))


def test_erat_models_still_compile_to_torchscript():
    """The channel check made every erat model fail torch.jit.script (erat eval --model
    takes TorchScript files)."""
    from erat.models import build_model

    model = build_model("cnn", in_shape=(3, 8, 8), num_classes=10, mean=[0.5] * 3,
                        std=[0.25] * 3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (torch.jit.script is deprecated)
        scripted = torch.jit.script(model)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(scripted(x), model(x))
