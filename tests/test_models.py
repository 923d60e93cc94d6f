"""Every registered model: shapes, gradients, normalisation as the first layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erat.models import Normalize, build_model, model_names, model_params, register_model

# Small inputs and widths keep the whole file at a few seconds on a CPU.
CASES = {
    "mlp": [((1, 28, 28), {"hidden": (32, 16)}), ((1, 8, 8), {})],
    "cnn": [((1, 28, 28), {}), ((1, 8, 8), {})],
    "conv-large": [((3, 32, 32), {"width": 8}), ((1, 8, 8), {"width": 8})],
    "preact-resnet18": [((3, 32, 32), {"width": 4})],
    "wrn-28-10": [((3, 32, 32), {"depth": 10, "widen": 1, "dropout": 0.1})],
}




def _build(name, shape, kwargs, mean=None):
    torch.manual_seed(0)
    c = shape[0]
    mean = (0.0,) * c if mean is None else mean
    return build_model(name, in_shape=shape, num_classes=7, mean=mean, std=(0.5,) * c, **kwargs)


DEFAULT_CASES = [((3, 32, 32), {}), ((1, 8, 8), {})]  # a newly registered model's first test


def cases(name: str) -> list:
    return CASES.get(name, DEFAULT_CASES)


@pytest.mark.parametrize("name", model_names())
def test_forward_backward(name):
    for shape, kwargs in cases(name):
        model = _build(name, shape, kwargs).train()
        x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
        out = model(x)
        assert out.shape == (4, 7) and out.dtype == torch.float32
        out.logsumexp(1).sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no grad for {pname}"


@pytest.mark.parametrize("name", model_names())
def test_normalize_is_first_and_applied(name):
    shape, kwargs = cases(name)[0]
    model = _build(name, shape, kwargs).eval()  # eval: train-mode BN would undo a shift
    shifted = _build(name, shape, kwargs, mean=(0.3,) * shape[0]).eval()
    assert isinstance(model[0], Normalize) and isinstance(next(iter(model.children())), Normalize)
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.allclose(model(x), shifted(x))
        expected = model[1]((x - 0.3) / 0.5)
        assert torch.allclose(shifted(x), expected, atol=1e-5)


def test_unknown_name_and_parameter():
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of .*cnn"):
        build_model("nope", in_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="takes no parameter"):
        build_model("cnn", in_shape=(1, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,), depth=3)
    with pytest.raises(ValueError, match="C means"):
        build_model("cnn", in_shape=(3, 8, 8), num_classes=10, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="6n"):
        _build("wrn-28-10", (3, 32, 32), {"depth": 12})
    assert {"depth": 28, "widen": 10}.items() <= model_params("wrn-28-10").items()


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn")(lambda **kw: nn.Identity())


def test_normalize_rejects_bad_std():
    with pytest.raises(ValueError):
        Normalize((0.0,), (0.0,))


def test_paper_sizes():
    """The defaults are the papers' networks (parameter counts of the reference code)."""
    kw = {"in_shape": (3, 32, 32), "num_classes": 10, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    n = {name: sum(p.numel() for p in build_model(name, **kw).parameters()) for name in CASES}
    assert n["preact-resnet18"] == 11_172_170  # Rice et al. 2020's PreActResNet18
    assert n["wrn-28-10"] == 36_479_194  # 36.5M, Zagoruyko & Komodakis 2016
    assert n["cnn"] == 545_098 and n["mlp"] == 4_639_660  # at 32x32x3


def test_model_options_in_the_help_show_required_ones_bare():
    """``--model-kwargs``' help listed a parameter without a default as
    ``width=<class 'inspect._empty'>``."""
    from erat.config import model_options
    from erat.models import MODELS

    @register_model("needy")
    def needy(in_shape, num_classes, width, scale=0.5):
        return nn.Identity()

    try:
        assert "needy width, scale=0.5" in model_options()[0]
    finally:
        MODELS.pop("needy")
