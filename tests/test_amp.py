"""Mixed precision: every method trains under bf16 autocast on the CPU with finite losses."""

from __future__ import annotations

import json
import math

import pytest

from erat.config import TrainConfig
from erat.methods import method_names
from erat.train import train


@pytest.mark.parametrize("method", method_names())
def test_bf16_autocast_trains(tmp_path, method):
    cfg = TrainConfig.from_dict(dict(
        dataset="digits",
        model="cnn",
        method=method,
        epochs=1,
        batch_size=32,
        epoch_updates=2,
        amp="bf16",
        progress=False,
        channels_last=True,
    ))
    train(cfg, tmp_path / "run", log=lambda *_: None)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for k, v in row.items() if k.startswith("train_"))


def test_shared_statistics_give_the_clean_pass_its_own_function_under_bf16():
    """A later pass inside shared_statistics normalises with the clean pass's statistics;
    under bf16 autocast it took them (and normalised) in bf16 where BatchNorm's own kernel
    works in float32, so the same input came out 1.6 % apart (VAT's xi-sized probe is of
    that size). Now in float32: the same output."""
    import torch
    from torch import nn

    from erat.passes import shared_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 14 * 14, 10)).train()
    x = torch.rand(32, 3, 16, 16) * 3 + 5  # (a large mean: bf16 statistics lose most)
    with torch.autocast("cpu", dtype=torch.bfloat16), shared_statistics(model):
        clean, later = model(x), model(x)
    assert later.dtype == clean.dtype == torch.bfloat16
    assert torch.allclose(later.float(), clean.float(), atol=1e-2, rtol=0)
    model.double()  # (and a float64 model keeps float64, not float32)
    with shared_statistics(model):
        clean, later = model(x.double()), model(x.double())
    assert later.dtype == torch.float64 and torch.allclose(later, clean, atol=1e-12, rtol=0)
