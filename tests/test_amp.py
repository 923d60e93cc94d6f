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
