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


def test_a_semi_supervised_step_is_timed_with_its_unlabeled_batch():
    """``--unlabeled N``: the methods that read unlabeled images are timed on their
    semi-supervised step (the bench had only the labeled one); the others as before."""
    rows = bench_training("mlp", (1, 8, 8), ["erm", "vat", "pgd"], batch_size=8, unlabeled=24,
                          steps=1, warmup=0, max_seconds=5.0)
    by = {r["method"]: r for r in rows}
    assert [by[m]["unlabeled"] for m in ("erm", "vat", "pgd")] == [0, 24, 0]
    alone = bench_training("mlp", (1, 8, 8), ["vat"], batch_size=8, steps=1, warmup=0)
    # counted per labeled image: VAT's step over 8 + 24 images costs 4x its 8 alone
    assert by["vat"]["passes_per_example"] == pytest.approx(4 * alone[0]["passes_per_example"])


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
    from erat.bench import _attack_line  # the console's line (it printed the raw JSON)

    assert _attack_line(out).startswith("PGD-2 ") and "{" not in _attack_line(out)


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
    from erat.bench import _variants

    assert [v[2] for v in _variants(BenchOptions(fast="on,off"))] == [True, False]  # as given
    with pytest.raises(ValueError, match="--fast takes off, on"):
        run_bench(BenchOptions(fast="maybe"), torch.device("cpu"))


def test_a_method_that_fails_is_one_row_and_the_others_run(monkeypatch):
    """A failed capture or compilation on the GPU (a RuntimeError in a step, or another
    error: Inductor's and the CUDA-graph trees' assertions are not RuntimeErrors) is an error
    row; the bench goes on with the other methods."""
    import erat.bench

    timer, calls = erat.bench._time, []

    def fails_for_at(*args):  # the methods run in the order given: erm, at, pgd, trades
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten")
        if len(calls) == 4:
            raise AssertionError()  # (no message: the row names the error's type)
        return timer(*args)

    monkeypatch.setattr(erat.bench, "_time", fails_for_at)
    rows = bench_training("mlp", (1, 8, 8), ["erm", "at", "pgd", "trades"], batch_size=8,
                          steps=1, warmup=0)
    errors = {r["method"]: r.get("error") for r in rows}
    assert errors["at"].startswith("accessing tensor output") and errors["erm"] is None
    assert errors["pgd"] is None and rows[2]["ms_per_step"] > 0
    assert errors["trades"] == "AssertionError" and rows[1]["passes_per_example"] > 0


def test_bench_json_holds_each_row_as_it_is_measured(tmp_path, monkeypatch):
    """--json is rewritten after every measured row: a bench cut short by a time limit keeps
    what it measured."""
    import json

    import erat.bench
    from erat.cli import main

    timer, seen = erat.bench._time, []
    path = tmp_path / "bench.json"

    def peek(*args):  # the file as it stands when the next row starts
        so_far = json.loads(path.read_text()) if path.exists() else None
        seen.append((len(so_far["models"]["mlp"]["rows"]), so_far["complete"]) if so_far
                    else 0)
        if so_far:  # a row's figures are whole when it is written (a cut run keeps them)
            assert {"ratio_to_erm", "rate_fraction", "epoch_50k_s"} <= set(
                so_far["models"]["mlp"]["rows"][0])
        return timer(*args)

    monkeypatch.setattr(erat.bench, "_time", peek)
    assert main(["bench", "--models", "mlp:1x8x8", "--methods", "erm,at", "--steps", "1",
                 "--warmup", "0", "--no-attacks", "--batch-size", "8", "--chip", "--json",
                 str(path)]) == 0
    assert seen == [0, 0, (1, False)]  # (the matrix rate, ERM, AT); a partial file says so
    final = json.loads(path.read_text())
    assert [r["method"] for r in final["models"]["mlp"]["rows"]] == ["erm", "at"]
    assert final["complete"] is True and final["models"]["mlp"]["rows"][1]["ratio_to_erm"] > 0


@pytest.mark.parametrize("rows_before", [0, 1])
def test_an_interrupted_bench_says_what_its_json_holds(tmp_path, monkeypatch, capsys,
                                                       rows_before):
    """Ctrl-C mid-bench: exit 130, one line; once a row is written the line names the --json
    file as holding the rows measured so far, and the file says it is incomplete."""
    import json

    import erat.bench
    from erat.cli import main

    timer, calls = erat.bench._time, []
    path = tmp_path / "bench.json"

    def interrupted(*args):
        calls.append(1)
        if len(calls) > rows_before:
            raise KeyboardInterrupt
        return timer(*args)

    monkeypatch.setattr(erat.bench, "_time", interrupted)
    code = main(["bench", "--models", "mlp:1x8x8", "--methods", "erm,at", "--steps", "1",
                 "--warmup", "0", "--no-attacks", "--batch-size", "8", "--json", str(path)])
    err = capsys.readouterr().err
    assert code == 130 and err.startswith("erat: interrupted") and err.count("\n") == 1
    if rows_before == 0:
        assert not path.exists() and str(path) not in err
        return
    assert f"--json {path} holds the rows measured so far" in err
    so_far = json.loads(path.read_text())
    assert so_far["complete"] is False
    assert [r["method"] for r in so_far["models"]["mlp"]["rows"]] == ["erm"]


def test_no_profiler_off_cuda(capfd):
    """--profile on a CPU: no device kernels to count, so no profiler is started (kineto's
    probe for a GPU printed 'gpuGetDeviceCount failed' there)."""
    from erat.bench import kernel_profile

    calls = []
    assert kernel_profile(lambda: calls.append(1), torch.device("cpu"), 1.0) == {
        "kernels_per_step": None, "device_busy": None}
    assert not calls and capfd.readouterr().err == ""


def test_fast_rows_say_which_passes_left_the_graphs(monkeypatch):
    """On the fast path each row counts its step's model calls replayed as graphs and run
    eager (erat.graphs.Cloned's routing, here around the eager model itself): ERM and PGD-AT
    replay every pass; AT and ER run only their clean pass eager, their searches replayed."""
    import erat.graphs
    from erat.graphs import Cloned

    monkeypatch.setattr(erat.graphs, "compiled",
                        lambda model, graphs, overlaps: Cloned(model, model, overlaps=overlaps))
    rows = bench_training("mlp", (1, 8, 8), ["erm", "at", "pgd", "er:S=3"], batch_size=8,
                          steps=2, warmup=1, fast=True)
    passes = {r["method"]: (r["graph_passes"], r["eager_passes"]) for r in rows}
    assert passes == {"erm": (1, 0), "at": (2, 1), "pgd": (passes["pgd"][0], 0),
                      "er:S=3": (4, 1)}
    assert passes["pgd"][0] > 1


def test_a_double_backward_method_is_benched_on_the_model_itself(monkeypatch):
    """ER's gradient estimator differentiates twice, which no compiled graph can: on the fast
    path its row runs on the model itself (not an error row, no graph passes counted)."""
    import erat.graphs
    from erat.graphs import Cloned

    monkeypatch.setattr(erat.graphs, "compiled",
                        lambda model, graphs, overlaps: Cloned(model, model, overlaps=overlaps))
    rows = bench_training("mlp", (1, 8, 8), ["er:estimator=gradient"], batch_size=4, steps=1,
                          warmup=0, fast=True)
    assert "error" not in rows[0] and "graph_passes" not in rows[0]
    assert rows[0]["ms_per_step"] > 0


def test_a_factory_model_is_benched_by_its_module_and_factory():
    from erat.bench import parse_setups

    assert parse_setups("mynet:build:3x8x8,mlp:1x8x8") == [("mynet:build", (3, 8, 8)),
                                                          ("mlp", (1, 8, 8))]
