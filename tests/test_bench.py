"""`erat bench` building blocks on a tiny model: every row has its fields and ratios."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erat.bench import bench_attacks, bench_training


def test_training_rows_have_ratio_to_erm():
    rows = bench_training("mlp", (1, 8, 8), ["erm", "er"], batch_size=8, steps=3, warmup=1,
                          max_seconds=5.0)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"erm", "er"}
    er, erm = by["er"], by["erm"]
    assert er["ratio_to_erm"] == pytest.approx(er["ms_per_step"] / erm["ms_per_step"])
    # counted: ER (S=1, T=1, M=1) makes 3 forward-backwards per example to ERM's 1
    assert er["counted_ratio_to_erm"] == pytest.approx(3.0)


def test_attack_throughput_and_peer_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    out = bench_attacks(model, (1, 8, 8), batch_size=8, steps=2, repeats=3, autoattack_n=0,
                        max_seconds=5.0)
    assert out["pgd_images_per_s"] > 0
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        assert "not installed" in out["torchattacks"]
    else:
        assert out["pgd_speedup_vs_torchattacks"] > 0


def test_method_specs_with_parameters():
    from erat.bench import parse_method

    assert parse_method("er:S=3;estimator=gradient") == ("er", {"S": 3,
                                                                "estimator": "gradient"})
    assert parse_method("pgd") == ("pgd", {})
    rows = bench_training("cnn", (1, 8, 8), ["er:S=2"], batch_size=4, steps=1, warmup=0)
    assert rows[0]["method"] == "er:S=2" and rows[0]["counted_ratio_to_erm"] == 4.0


def test_chip_figures_and_variants():
    from erat.bench import BenchOptions, flops_per_image, matrix_rate, run_bench

    flops = flops_per_image("mlp", (1, 8, 8), torch.device("cpu"))
    assert flops["train_step"] > 2 * flops["forward"] > 0  # a backward costs about two
    assert matrix_rate(torch.device("cpu"), seconds=0.2) > 0
    out = run_bench(BenchOptions(models="mlp:1x8x8", methods="erm,er", steps=2, warmup=0,
                                 max_seconds=1.0, amp="none,bf16", attacks=False, chip=True),
                    torch.device("cpu"), log=lambda *_: None)
    rows = out["models"]["mlp"]["rows"]
    assert {(r["method"], r["amp"]) for r in rows} == {("erm", "none"), ("er", "none"),
                                                       ("erm", "bf16"), ("er", "bf16")}
    assert all(r["rate_fraction"] > 0 and r["epoch_50k_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="--fast off, on"):
        run_bench(BenchOptions(fast="maybe"), torch.device("cpu"))
