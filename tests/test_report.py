"""Figures (erat.plots) are written as PNG and SVG, tables (erat.tables) have a header,
landscapes make sense; erat report (erat.report) reads and checks run folders."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from erat.plots import accuracy_vs_radius, landscape, landscape_data, plotted, radius_curve
from erat.tables import result_row, results_table, write_csv


def fake_result(clean: float, accs: dict[float, float], attack: str = "pgd") -> dict:
    return {"clean_acc": clean,
            "robust_acc": {f"{attack}-l2-eps{e:g}": a for e, a in accs.items()},
            "threat": {"n": 100, "subset_note": None}, "checks_failed": 0}




@pytest.fixture
def tiny_models():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    return {"linear": lin, "mlp": mlp}


def test_radius_curve_adds_clean_point():
    res = fake_result(0.9, {1.0: 0.5, 0.5: 0.7})
    assert radius_curve(res) == [(0.0, 0.9), (0.5, 0.7), (1.0, 0.5)]
    assert radius_curve(res, attack="all") == []


def test_plotted_attack_is_the_one_most_runs_have():
    """A run evaluated with another attack than the first run's stays in the plot: `erat
    report` and a suite both draw the attack most runs hold (PGD is in every chain)."""
    chain = fake_result(0.9, {0.5: 0.6}, attack="all") | {
        "threat": {"attack": "all", "norm": "l2"}}
    chain["robust_acc"]["pgd-l2-eps0.5"] = 0.65
    pgd = fake_result(0.9, {0.5: 0.7}) | {"threat": {"attack": "pgd", "norm": "l2"}}
    assert plotted({"a": chain, "b": pgd}) == ("pgd", "l2")
    assert plotted({"a": chain, "b": dict(chain)}) == ("all", "l2")


def test_accuracy_vs_radius_writes_png_and_svg(tmp_path):
    results = {"ERM": fake_result(0.95, {0.5: 0.4, 1.0: 0.1}),
               "ER": fake_result(0.9, {0.5: 0.7, 1.0: 0.5})}
    paths = accuracy_vs_radius(results, tmp_path / "figs" / "acc.png")
    assert [p.name for p in paths] == ["acc.png", "acc.svg"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    with pytest.raises(ValueError, match="no pgd-linf"):
        accuracy_vs_radius(results, tmp_path / "x", norm="linf")


def test_accuracy_plot_counts_the_test_images_of_the_runs_it_draws(tmp_path):
    """A run left out of the plot (no figures in its norm) still put its image count in the
    title ("100 or 200 test images (the runs differ)", all lines on 200)."""
    import matplotlib

    drawn = fake_result(0.9, {0.5: 0.7}) | {"threat": {"n": 200}}
    other = fake_result(0.9, {}) | {"threat": {"n": 100}}
    other["robust_acc"] = {"pgd-linf-eps0.1": 0.5}
    with matplotlib.rc_context({"svg.fonttype": "none"}), pytest.warns(UserWarning,
                                                                        match="left out"):
        svg = accuracy_vs_radius({"a": drawn, "b": other}, tmp_path / "acc")[1].read_text()
    assert "200 test images" in svg and "100 or 200" not in svg and "differ" not in svg


def test_landscape_writes_figures(tmp_path, tiny_models):
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([1, 2, 3])
    paths = landscape(tiny_models, x, y, eps=1.0, out=tmp_path / "land", n_random=2, points=9,
                      grid=7)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_landscape_of_a_constant_model_is_drawn_flat(tmp_path):
    """A model that predicts one class everywhere (a stalled run) has a flat surface: drawn
    as one level, titled with its loss (contourf's 20 levels made a colour bar of offsets)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    paths = landscape({"stalled": model}, x, y, eps=0.5, out=tmp_path / "flat", n_random=1,
                      points=5, grid=5)
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "flat: loss" in paths[1].read_text()


def test_landscape_adversarial_direction_rises_fastest(tiny_models):
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([4, 5])
    model = tiny_models["mlp"]
    d = landscape_data(model, x, y, eps=2.0, n_random=3, points=11, grid=5)
    assert d["adv"].shape == (11,) and d["random"].shape == (3, 11)
    assert d["surface"].shape == (5, 5)
    base = nn.functional.cross_entropy(model(x[:1]), y[:1]).item()
    assert d["adv"][0].item() == pytest.approx(base, rel=1e-5)  # t = 0 is the image itself
    assert torch.allclose(d["random"][:, 0], d["adv"][0].expand(3))
    assert d["adv"][-1] > d["random"][:, -1].max()  # PGD beats random directions
    assert d["surface"][2, 2].item() == pytest.approx(base, rel=1e-5)  # grid centre
    same = landscape_data(tiny_models["linear"], x, y, eps=2.0, n_random=3, points=11, grid=5)
    assert same["random"].shape == (3, 11)  # same seed: same random directions for all models


def test_landscape_in_linf_stays_in_the_cube(tiny_models):
    """In l-inf, the directions have largest entry 1 (random ones are the cube's vertices), so
    the point at ``t`` lies in the l-inf ball of radius ``t``; PGD-l-inf's direction rises
    above the random ones."""
    from erat.passes import supervised_search
    from erat.search import adversarial_direction

    x, y = torch.rand(2, 1, 8, 8) * 0.5 + 0.25, torch.tensor([4, 5])
    model = tiny_models["mlp"]
    with supervised_search(model):
        adv = adversarial_direction(model, x[:1], y[:1], eps=0.1, norm="linf")
    assert adv.abs().max().item() == pytest.approx(1.0)
    d = landscape_data(model, x, y, eps=0.1, n_random=3, points=11, grid=5, norm="linf")
    assert d["adv"][-1] > d["random"][:, -1].max()
    base = nn.functional.cross_entropy(model(x[:1]), y[:1]).item()
    assert d["surface"][2, 2].item() == pytest.approx(base, rel=1e-5)


def test_results_table_has_header_and_rows():
    rows = [result_row(fake_result(0.9, {1.0: 0.5}), "ER"),
            result_row(fake_result(0.95, {1.0: 0.1}), "ERM | baseline")]
    rows[1]["note"] = "x"  # (a row without a column's key: an empty cell)
    md = results_table(rows, ["label", "clean_acc", "pgd-l2-eps1", "note"])
    lines = md.strip().splitlines()
    assert lines[0] == "| label | clean_acc | pgd-l2-eps1 | note |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| ER | 0.9000 | 0.5000 |  |"
    assert "ERM \\| baseline" in lines[3] and lines[3].endswith("| x |")
    assert len(lines) == 4


def test_write_csv_round_trip(tmp_path):
    rows = [{"label": "a", "acc": 0.5, "extra": {"k": 1}}, {"label": "b", "acc": 0.25, "n": 3}]
    path = write_csv(rows, tmp_path / "out" / "table.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["label", "acc", "extra", "n"]
    assert back[0]["extra"] == '{"k": 1}' and back[1]["n"] == "3" and back[0]["n"] == ""


def test_frontier_draws_the_best_on_validation_of_a_family_at_each_budget(tmp_path):
    from erat.plots import frontier, frontier_points

    rows = [{"name": "er1", "family": "er", "budget": 8, "cost_erm_epochs": 8.0, "rob": 0.60,
             "clean_acc": 0.83, "val_robust_acc": 0.618},
            {"name": "er3", "family": "er", "budget": 8, "cost_erm_epochs": 7.99, "rob": 0.59,
             "clean_acc": 0.80, "val_robust_acc": 0.634},
            {"name": "er3-4", "family": "er", "budget": 4, "cost_erm_epochs": 4.0, "rob": 0.58,
             "clean_acc": 0.79, "val_robust_acc": 0.62},
            {"name": "pgd", "family": "pgd-at", "budget": 8, "cost_erm_epochs": 8.0,
             "rob": 0.61, "clean_acc": 0.81},
            {"name": "no-eval", "family": "at", "budget": 8, "cost_erm_epochs": 8.0}]
    points = frontier_points(rows, robust="rob")
    assert points == {"er": [(4.0, 0.58, 0.79), (7.99, 0.59, 0.80)],
                      "pgd-at": [(8.0, 0.61, 0.81)]}
    assert (tmp_path / "f.png") in frontier(rows, tmp_path / "f", robust="rob")


def test_short_tables_name_their_columns_for_people_and_drop_empty_ones():
    from erat.tables import column_name, readable_columns

    rows = [{"name": "er", "method": "er", "dataset": "digits", "labels": "", "clean_acc": 0.9,
             "clean_err": 0.1, "pgd-l2-eps0.5": 0.7, "last_pgd-l2-eps0.5": 0.6, "aa_n": 500,
             "aa_all-linf-eps0.1": 0.5, "cost_erm_epochs": 30.0, "energy-l2-eps0.5": None,
             "train_s_per_epoch": 0.3, "checks_failed": 0}]
    keys, names = readable_columns(rows)
    assert names == ["run", "method", "clean", "PGD-l2 0.5", "PGD+AutoAttack-l-inf 0.1 (500)",
                     "s/epoch", "failed checks"]
    assert keys[:3] == ["name", "method", "clean_acc"] and "energy-l2-eps0.5" not in keys
    assert column_name("pgd+autoattack-l2-eps1.5") == "PGD+AutoAttack-l2 1.5"
    assert column_name("cost_erm_epochs") is None  # left to the CSV
    mixed = [{"val_robust_acc": 0.5, "val_ball": "l2 0.1"},
             {"val_robust_acc": 0.4, "val_ball": "l-inf 0.1"}]  # (it was a bare "val. robust")
    assert column_name("val_robust_acc", mixed) == \
        "val. robust (l-inf 0.1, l2 0.1; by run: val_ball)"
    assert column_name("pgd+rs-fgsm-linf-eps0.1") == "PGD+rs-fgsm-l-inf 0.1"  # (a hyphenated
    assert readable_columns([{"rs-fgsm-l2-eps0.5": 0.4}])[0] == ["rs-fgsm-l2-eps0.5"]  # name)


def test_report_names_run_folders_of_one_name_by_the_folders_above(tmp_path, capsys):
    """Rows are keyed by the folder's name: two folders named alike lost a row, then were
    refused ('rename one'); now each is named by as many folders above it as tell them
    apart, and one folder given twice is one line, exit 2."""
    import csv

    from erat.cli import main
    from erat.report import run_names

    result = {"clean_acc": 0.9, "robust_acc": {"pgd-l2-eps0.5": 0.5},
              "threat": {"attack": "pgd", "norm": "l2"}, "checks_failed": 0}
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "b" / "other"]
    for run in runs:
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps(result))
    assert run_names(runs) == ["a/run", "b/run", "other"]
    (tmp_path / "latest").symlink_to(runs[2])  # (a link is named as given)
    assert run_names([runs[0], tmp_path / "latest"]) == ["run", "latest"]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "results.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["a/run", "b/run", "other"]
    capsys.readouterr()
    assert main(["report", str(runs[0]), str(tmp_path / "a" / ".." / "a" / "run"), "--out",
                 str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a/run is given twice: name each run folder once" in err
    assert not (tmp_path / "rep2").exists()


def test_l_inf_radii_of_whole_levels_are_named_so_and_columns_go_by_radius():
    """``--eps 8/255`` showed as ``0.0313725``, and a report's columns followed the first
    run's order (8/255 before 4/255)."""
    from erat.tables import readable_columns, table_columns
    from erat.threat import ball_name, radius_name

    assert radius_name("linf", "0.0313725") == "8/255" and radius_name("linf", "0.1") == "0.1"
    assert radius_name("l2", "0.2") == "0.2" and ball_name("linf", 4 / 255) == "l-inf 4/255"
    for eps in ("0.2", "0.4", "0.03137", "0.5", "1e-05"):  # (decimals as written stay so)
        assert radius_name("linf", eps) == eps
    assert radius_name("linf", f"{1 / 255:g}") == "1/255" and \
        radius_name("linf", f"{254 / 255:g}") == "254/255"
    row = {"run": "a", "clean_acc": 0.9, "pgd-linf-eps0.0313725": 0.5, "pgd-l2-eps1": 0.2,
           "pgd-linf-eps0.0156863": 0.6, "pgd-l2-eps0.5": 0.4}
    keys, names = readable_columns([row])
    assert names == ["run", "clean", "PGD-l-inf 4/255", "PGD-l-inf 8/255", "PGD-l2 0.5",
                     "PGD-l2 1"]
    assert table_columns([row]) == keys


def _evaluated_run(tmp_path):
    """A tiny trained digits run with a PGD-l2 result at 0.5 in its eval.json."""
    from erat.cli import main

    run = tmp_path / "erm"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs",
                 '{"hidden": [8]}', "--epochs", "1", "--epoch-updates", "1", "--no-progress",
                 "--out", str(run)]) == 0
    (run / "eval.json").write_text(json.dumps(
        {"clean_acc": 0.9, "robust_acc": {"pgd-l2-eps0.5": 0.5},
         "threat": {"attack": "pgd", "norm": "l2"}, "checks_failed": 0}))
    return run


@pytest.mark.parametrize("flags, says", [
    (["--landscape-eps", "-1"], "--landscape-eps must be a finite number >= 0"),
    (["--landscape-eps", "nan"], "--landscape-eps must be a finite number >= 0"),
    (["--landscape-eps", "1", "--index", "-5"], "--index must be a test image's position"),
    (["--landscape-eps", "1", "--index", "99999"], "--index must be in 0..359"),
    (["--index", "3"], "--index picks the landscape's test image: give --landscape-eps too"),
    (["--landscape-eps", "0"], "--landscape-eps must be > 0"),
])
def test_report_checks_every_option_before_writing_anything(tmp_path, capsys, flags, says):
    """A bad landscape radius or image index was refused only after results.md, results.csv
    and the accuracy plot were written into --out; now one line, exit 2, and no --out."""
    from erat.cli import main

    run = _evaluated_run(tmp_path)
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err
    assert not out.exists()


def test_the_landscape_refuses_runs_trained_beside_other_test_data(tmp_path, capsys):
    """Every model is drawn on one test image of the first run's data: a run trained beside
    other test data (its recorded digest) is one line, and nothing is written."""
    import shutil

    import torch

    from erat.cli import main

    run = _evaluated_run(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    blob = torch.load(other / "model.pt", weights_only=True)
    blob["meta"]["test_sha256"] = "0" * 64
    torch.save(blob, other / "model.pt")
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["report", str(run), str(other), "--out", str(out),
                 "--landscape-eps", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained beside other test data" in err
    assert not out.exists()


def test_report_without_a_curve_to_draw_is_one_line_and_writes_nothing(tmp_path, capsys):
    from erat.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(
        {"clean_acc": 0.9, "robust_acc": {}, "threat": {"attack": "pgd", "norm": "l2"}}))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pgd-l2 robust accuracies" in err
    assert not (tmp_path / "rep").exists()


def test_runs_evaluated_on_different_numbers_of_images_are_said(tmp_path, capsys):
    """The number of test images each run was attacked on is a column, and a report that
    mixes numbers says so."""
    from erat.cli import main

    runs = []
    for name, n, steps, method in (("a", 40, 20, []), ("b", 50, 5, ["--method", "er", "--S",
                                                                   "2", "--eps", "1.0"])):
        run = tmp_path / name
        assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs",
                     '{"hidden": [8]}', "--epochs", "1", "--epoch-updates", "1",
                     "--no-progress", "--out", str(run), *method]) == 0
        (run / "eval.json").write_text(json.dumps(
            {"clean_acc": 0.9, "robust_acc": {"pgd-l2-eps0.5": 0.5}, "checks_failed": 0,
             "threat": {"attack": "pgd", "norm": "l2", "n": n, "steps": steps,
                        "worst_case": "per example over: PGD (1 restart)"}}))
        norm, eps = ("l2", 0.3) if name == "a" else ("linf", 1.0)  # (energies of two balls)
        (run / "energy.json").write_text(json.dumps(
            {"energy_mean": 0.1, "settings": {"norm": norm, "eps": eps, "n": 20}}))
        runs.append(str(run))
    capsys.readouterr()
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "evaluated on different numbers of test images (40, 50" in out
    assert "attacked with different settings (2 kinds; the attack_settings column" in out
    assert "| run | method | settings | trained at | n | clean | PGD-l2 0.5 | energy l2 0.3 | " \
        "energy l-inf 1 | failed checks | cost (ERM epochs) |\n" in out  # (each once: the energy
    # keys once matched the robust ones too; the cost: erat report had none, which every
    # comparison needs)
    text = (tmp_path / "rep" / "results.md").read_text()  # the same names as reproduce's
    assert text.startswith("| run | method | settings | trained at | n | clean |")
    assert "| er | S 2 | l2 1 |" in text and "## Every column" in text
    # how each run was evaluated, and what mixes, in the file too (it was said on the console)
    assert "## Evaluation\n\n- l2, worst case per example over: PGD (1 restart), on 40 test " \
        "images (a)\n- l2, worst case per example over: PGD (1 restart), on 50 test images " \
        "(b)\n" in text
    assert "- Note: the runs were evaluated on different numbers of test images (40, 50" in text
    with (tmp_path / "rep" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["n"] for r in rows] == ["40", "50"] and float(rows[0]["train_seconds"]) > 0
    assert [r["attack_settings"] for r in rows] == [
        "per example over: PGD (1 restart); 20 steps", "per example over: PGD (1 restart); 5 steps"]


def test_a_result_of_other_weights_is_refused(tmp_path, capsys):
    """After `erat train --overwrite`, an evaluation JSON of the old weights (a name of the
    user's, which --overwrite does not know) was reported as the new model's; its
    checkpoint_sha256 now has to be model.pt's."""
    from erat.cli import main

    run = tmp_path / "run"
    train = ["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs",
             '{"hidden": [8]}', "--epochs", "1", "--epoch-updates", "1", "--no-progress",
             "--out", str(run)]
    assert main(train) == 0
    assert main(["eval", str(run), "--eps", "0.5", "--steps", "1", "--n", "20",
                 "--no-checks", "--json", str(run / "eval-pgd.json")]) == 0
    assert main(["report", str(run), "--eval-name", "eval-pgd.json", "--out",
                 str(tmp_path / "rep")]) == 0
    assert main([*train, "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--eval-name", "eval-pgd.json", "--out",
                 str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval-pgd.json was computed on another model file" in err
    # an energy.json of the old weights too (it was reported as the new model's)
    assert main(["eval", str(run), "--eps", "0.5", "--steps", "1", "--n", "20",
                 "--no-checks", "--json", str(run / "eval-pgd.json")]) == 0
    (run / "energy.json").write_text(json.dumps(
        {"energy_mean": 0.1, "settings": {"norm": "l2", "eps": 0.5, "checkpoint_sha256": "0"}}))
    capsys.readouterr()
    assert main(["report", str(run), "--eval-name", "eval-pgd.json", "--out",
                 str(tmp_path / "rep3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "energy.json was computed on another model file" in err, err
    (run / "model-last.pt").write_bytes(b"the last epoch's weights")  # (its SHA-256 named)
    from erat.files import sha256

    (run / "energy.json").write_text(json.dumps(
        {"energy_mean": 0.1, "settings": {"norm": "l2", "eps": 0.5,
                                          "checkpoint_sha256": sha256(run / "model-last.pt")}}))
    assert main(["report", str(run), "--eval-name", "eval-pgd.json", "--out",
                 str(tmp_path / "rep4")]) == 2
    assert "energy.json was computed on model-last.pt, the last epoch's, not on" in \
        capsys.readouterr().err


def test_the_plot_draws_the_attack_every_run_has(tmp_path):
    """The plot took the first run's attack: a first run evaluated with --attack all left
    every PGD-only run out of the plot (and the order of the runs decided it). Now the
    attack with curves for the most runs: PGD, which `all` includes."""
    import warnings

    from erat.report import report_runs

    results = {"a": {"all-l2-eps0.5": 0.3, "pgd-l2-eps0.5": 0.4},
               "b": {"pgd-l2-eps0.5": 0.5}}
    for name, robust in results.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"clean_acc": 0.9, "robust_acc": robust, "checks_failed": 0,
             "threat": {"attack": "all" if name == "a" else "pgd", "norm": "l2"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a run left out of the plot warns)
        report_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "rep", log=lambda *_: None)


def test_seed_table_gives_the_spread_over_seeds():
    from erat.tables import seed_table

    rows = [{"name": f"er-eps1-s{s}", "clean_acc": c, "pgd-l2-eps1": r}
            for s, c, r in ((0, 0.9, 0.5), (1, 0.8, 0.7), (2, 0.7, None))]
    rows.append({"name": "erm", "clean_acc": 0.99})
    table = seed_table(rows, ["name", "clean_acc", "pgd-l2-eps1"], ["run", "clean", "PGD"])
    assert "| runs | seeds | clean | PGD |" in table
    assert "| er-eps1 | 0, 1, 2 | 0.800 ± 0.100 | 0.600 ± 0.141 (2) |" in table
    assert "erm" not in table
    assert seed_table(rows[3:], ["name", "clean_acc"], ["run", "clean"]) is None


def test_a_landscape_left_from_an_earlier_report_is_said(tmp_path, capsys):
    """A report without --landscape-eps into a folder where an earlier one drew the
    landscape left that plot beside the new table without a word."""
    from erat.cli import main

    run = _evaluated_run(tmp_path)
    rep = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(rep), "--landscape-eps", "0.5"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(rep)]) == 0
    assert "landscape.png is an earlier report's" in capsys.readouterr().out


def test_a_result_rows_label_names_it_in_the_short_table():
    """result_row's "label" was not among the short table's first columns: the rows of the
    README's example lost their names."""
    from erat.tables import readable_columns

    rows = [result_row(fake_result(0.9, {1.0: 0.5}), "ER")]
    keys, names = readable_columns(rows)
    assert keys[0] == "label" and names[0] == "run"


def test_a_folder_without_a_run_or_its_evaluation_is_told_apart(tmp_path, capsys):
    """A folder that holds no run was answered with an erat eval command for it."""
    from erat.cli import main

    run = _evaluated_run(tmp_path)
    (run / "eval.json").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    assert f"eval.json not found: run `erat eval {run} --json" in capsys.readouterr().err
    assert main(["report", str(empty), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{empty} is not a run folder" in err
    assert not (tmp_path / "rep").exists()
    # --skip-unevaluated: a glob over runs, some not evaluated yet, reports the others
    done = _evaluated_run(tmp_path / "b")
    assert main(["report", str(run), "--skip-unevaluated", "--out", str(tmp_path / "rep")]) == 2
    assert "no run given holds eval.json" in capsys.readouterr().err
    assert main(["report", str(run), str(done), "--skip-unevaluated", "--out",
                 str(tmp_path / "rep")]) == 0
    assert f"note: left out, not evaluated (no eval.json): {run}" in capsys.readouterr().out
    assert f"left out, not evaluated (no eval.json): {run}" in \
        (tmp_path / "rep" / "results.md").read_text()


def test_a_table_of_a_column_no_row_holds_or_of_another_result_is_refused():
    """A column key mistyped (``pgd-l2-eps1.0`` for ``%g``'s ``pgd-l2-eps1``) printed an
    empty column; an energy report made a row without its figures."""
    rows = [result_row(fake_result(0.9, {1.0: 0.5}), "ER")]
    with pytest.raises(ValueError, match=r"no row holds column 'pgd-l2-eps1.0' \(did you "
                                         r"mean 'pgd-l2-eps1'\?\)"):
        results_table(rows, ["label", "pgd-l2-eps1.0"])
    with pytest.raises(ValueError, match="result_row takes what erat.evaluate returns"):
        result_row({"clean_acc": 0.2, "energy_mean": 0.1}, "E")


def test_attack_settings_say_what_sets_an_evaluations_strength():
    from erat.tables import attack_settings

    one = {"worst_case": "per example over: PGD (1 restart)", "steps": 20,
           "step_size_rule": "fixed", "step_size": {"0.5": 0.1}}
    two = one | {"worst_case": one["worst_case"] + "; and over the smaller radii",
                 "step_size": {"0.5": 0.1, "1": 0.1}}
    assert attack_settings(one) == attack_settings(two) == \
        "per example over: PGD (1 restart); 20 steps; step 0.1"  # (one run, two radii: alike)
    assert attack_settings(one | {"step_size_rule": "max(2.5*eps/steps, eps/4)"}).endswith(
        "; step max(2.5*eps/steps, eps/4)")


def test_the_evaluation_section_says_upper_bounds_and_each_check_not_passed():
    """A suite's results.md had neither: PGD-only columns unlabelled, and the AutoAttack
    against PGD note of a run's eval-autoattack.json nowhere (``erat eval`` prints both)."""
    from erat.tables import check_lines, evaluation_section

    checks = [{"name": "monotone_in_eps", "passed": True, "severity": "failure", "detail": "ok"},
              {"name": "square_vs_whitebox", "passed": False, "severity": "failure",
               "detail": "square fooled 3"},
              {"name": "autoattack_vs_pgd", "passed": False, "severity": "note",
               "detail": "AutoAttack lowers PGD by 22.0 points"}]
    lines = evaluation_section(
        [("a", "", {"norm": "l2", "eps": [0.5], "attacks": ["pgd"], "steps": 50}),
         ("a", "AutoAttack columns: ", {"norm": "l2", "eps": [0.5], "steps": 50,
                                        "attacks": ["pgd", "autoattack"]})],
        check_lines([("a", {"checks": checks})]))
    assert lines[2] == "- l2 at 0.5, PGD of 50 steps, upper bounds of robust accuracy (no " \
        "AutoAttack: a stronger attack may find more) (a)"
    assert "upper bound" not in lines[3]
    assert lines[4:6] == ["- a: square_vs_whitebox failed: square fooled 3",
                          "- a: autoattack_vs_pgd (a note): AutoAttack lowers PGD by 22.0 points"]
