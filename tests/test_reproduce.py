"""``erat reproduce``: a tiny suite runs end to end, writes its report, and resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from erat.cli import main
from erat.errors import UserError
from erat.reproduce import reproduce
from erat.suites import load_suite

SUITE = """
suite: tiny
description: two runs on digits
defaults: {dataset: digits, model: mlp, model_kwargs: {hidden: [16]}, epochs: 1, epoch_updates: 2,
           batch_size: 32, progress: false}
runs:
  - {name: erm, method: erm}
  - {name: er, method: er, eps: 0.5, energy: {eps: 0.5, T: 2, M: 2, S: 1, n: 20}}
eval: {attack: pgd, norm: l2, eps: [0.25, 0.5], steps: 2, n: 40, sanity_n: 10}
plots: {landscape_eps: 0.5}
"""


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE)
    return path


def test_suite_runs_reports_and_resumes(suite_file, tmp_path):
    out = tmp_path / "report"
    lines: list[str] = []
    rows = reproduce(str(suite_file), out, log=lines.append)
    assert [r["name"] for r in rows] == ["erm", "er"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {"method", "dataset", "clean_acc", "pgd-l2-eps0.25", "pgd-l2-eps0.5",
            "cost_erm_epochs", "train_seconds", "at_term_mean"} <= set(table[0])  # complete
    assert table[1]["energy-l2-eps0.5"] and table[0].get("energy-l2-eps0.5", "") == ""
    assert table[1]["energy_settings"] == "n 20, T 2, M 2, S 1"  # (erat report's columns)
    assert "labels" not in table[0]  # a supervised suite has no labels column
    text = (out / "results.md").read_text()
    assert "erat train" in text and "--method er" in text and "torch" in text
    assert "PGD of 2 steps, on 40 of 360 test images, upper bounds of robust accuracy (no " \
        "AutoAttack: a stronger attack may find more) (erm, er)" in text  # how, on how many
    assert "- energy: l2 at 0.5, T 2, M 2, S 1, on the first 20 test images (er)" in text
    short = ("| run | method | clean | PGD-l2 0.25 | PGD-l2 0.5 | energy l2 0.5 | s/epoch | "
             "failed checks |")  # (the energy's ball, as erat report names it)
    assert text.count(short) == 1 and lines[-1].startswith(short)  # printed and in results.md
    assert "| labels" not in text and " , " not in "".join(lines) and ",," not in "".join(lines)
    progress = [line for line in lines if line.startswith("[1/2 erm] ")]
    assert len(progress) == 1 and "elapsed, about " in progress[0] and " left)" in progress[0]
    assert "clean " in progress[0] and "PGD-l2 0.5 " in progress[0]
    for name in ("accuracy_vs_radius.png", "landscape.png"):
        assert (out / name).stat().st_size > 0 and f"]({name})" in text  # drawn and linked
    kept = [p.name for p in (out / "runs" / "er").glob(".*.state.pt")]
    assert kept == [".eval.state.pt"]  # the README names it (it once said .eval-pgd-l2...)
    assert "`.eval.state.pt`" in (Path(__file__).parents[1] / "README.md").read_text()
    model = out / "runs" / "er" / "model.pt"
    stamp = model.stat().st_mtime_ns
    again = reproduce(str(suite_file), out, log=lambda *_: None)
    assert model.stat().st_mtime_ns == stamp  # finished runs are not trained again
    assert again[1]["clean_acc"] == rows[1]["clean_acc"]
    # another suite's --out: refused before anything is trained or its report replaced
    other = suite_file.with_name("other.yaml")
    other.write_text(SUITE.replace("suite: tiny", "suite: other"))
    report = (out / "results.md").read_text()
    with pytest.raises(UserError, match="holds the runs and report of suite 'tiny', not "
                                        "'other': choose another --out"):
        reproduce(str(other), out, log=lambda *_: None)
    (out / "suite.txt").unlink()  # (a folder written before the marker: its report's title)
    with pytest.raises(UserError, match="suite 'tiny', not 'other'"):
        reproduce(str(other), out, report_only=True, log=lambda *_: None)
    assert (out / "results.md").read_text() == report and not (out / "suite.txt").exists()


def one_run_suite(tmp_path: Path, run: str, rest: str) -> str:
    """A suite file of one tiny digits run (``run``: its mapping's items after the name) and
    the top-level keys ``rest``; its path."""
    path = tmp_path / "s.yaml"
    path.write_text("suite: s\ndefaults: {dataset: digits, model: mlp, model_kwargs: {hidden: "
                    "[8]}, epochs: 1, epoch_updates: 1, progress: false}\nruns:\n  - {name: a, "
                    f"{run}}}\n{rest}")
    return str(path)


def test_a_report_links_only_the_plots_it_drew(tmp_path):
    """A suite whose runs are not evaluated draws no plot, and its results.md linked one."""
    suite = one_run_suite(tmp_path, "method: erm, eval: false",
                          "eval: {eps: [0.5], steps: 2, n: 10}\n")
    reproduce(suite, tmp_path / "out", log=lambda *_: None)
    assert ".png" not in (tmp_path / "out" / "results.md").read_text()
    assert not list((tmp_path / "out").glob("*.png"))


def test_an_n_above_the_test_set_is_said(tmp_path):
    """A suite's eval.n above the test set was clipped without a word."""
    suite = one_run_suite(tmp_path, "method: erm", "eval: {eps: [0.5], steps: 1, n: 100000, "
                          "sanity_n: 0}\nplots: {landscape: false}\n")
    lines: list[str] = []
    reproduce(suite, tmp_path / "out", log=lines.append)
    assert "[a] eval: n 100000 is more than the 360 test images: all 360" in lines


def test_the_time_left_says_autoattack_is_not_in_it():
    """The time left counted the runs only, and AutoAttack after them took most of a suite's
    time: the line says so when the suite has an AutoAttack stage."""
    from erat.reproduce import SuiteClock

    clock = SuiteClock(2, then=" before AutoAttack")
    clock.start()
    assert clock.line("a", True, "x").endswith(" left before AutoAttack)")


def test_the_time_left_counts_only_the_runs_still_to_train(monkeypatch):
    """A resumed suite counted its finished runs (read back in no time) as runs left at the
    mean time of the trained ones: 40 finished runs ahead of one to train said hours."""
    from erat import reproduce
    from erat.reproduce import SuiteClock

    now = iter([0.0, 0.0, 100.0, 100.0, 100.5, 100.5, 101.0])
    monkeypatch.setattr(reproduce.time, "perf_counter", lambda: next(now))
    clock = SuiteClock(3, to_train={"a", "c"})
    clock.start()
    assert clock.line("a", True, "x").endswith("about 1 min 40 s left)")  # c, at a's 100 s
    clock.start()
    assert clock.line("b", True, "x").endswith("about 1 min 40 s left)")  # b: evaluated only
    clock.start()
    assert "left" not in clock.line("c", True, "x").split("elapsed")[1]


def test_unknown_suite_is_one_line(capsys, tmp_path):
    assert main(["reproduce", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "nope.yaml"]) == 2  # a file's name: the file is missing
    assert "no such suite file: nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", "a\\\\b", "..", ".hidden",
                                  "''", "' '"])
def test_a_run_name_that_is_not_one_plain_folder_is_refused(tmp_path, capsys, name):
    """A run named ../../escape was trained into a folder outside --out; now one line naming
    the suite file and the run, exit 2, and nothing written."""
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "bad.yaml"
    path.write_text(SUITE.replace("{name: erm,", "{name: " + name + ","))
    out = tmp_path / "work" / "a" / "b"
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: run name" in err
    assert "must be a plain folder name" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.yaml", "work"]


def test_bundled_suites_load():
    for name in ("digits", "mnist-subset", "mnist", "cifar10", "svhn"):
        assert load_suite(name)["runs"]


FRONTIER = """
suite: frontier
defaults: {dataset: digits, model: mlp, model_kwargs: {hidden: [16]}, batch_size: 64,
           val: 200, val_n: 50, val_steps: 2, val_eps: 0.5, select: best-robust,
           budget_epochs: 2, progress: false}
runs:
  - {name: er-val, method: er, eps: 0.5, budget: 1, eval: false, grid: {lam: [1.0, 0.5]}}
  - {name: erm, method: erm, family: erm, budget: 2}
  - {name: pgd, method: pgd, eps: 0.5, steps: 2, family: pgd-at, grid: {budget: [1, 2]}}
  - {name: at, method: at, eps: 0.5, family: at, budget: 2, eval_last: true}
eval: {attack: pgd, eps: [0.5], steps: 2, n: 30, sanity_n: 0}
autoattack: {n: 8, eval: {attack: all, eps: [0.5], steps: 2, sanity_n: 0},
             group: [family, budget]}
report:
  frontiers: {frontier: {robust: aa_all-l2-eps0.5, clean: aa_clean_acc}}
plots: {landscape: false}
"""


@pytest.mark.filterwarnings("ignore::erat.sanity.EvaluationWarning")
def test_frontier_suite_selects_on_validation_and_draws(tmp_path):
    path = tmp_path / "frontier.yaml"
    path.write_text(FRONTIER)
    rows = {r["name"]: r for r in reproduce(str(path), tmp_path / "out", log=lambda *_: None)}
    assert "clean_acc" not in rows["er-val-lam1"] and "val_robust_acc" in rows["er-val-lam1"]
    assert not (tmp_path / "out" / "runs" / "er-val-lam1" / "eval.json").exists()
    assert all(rows[n]["cost_erm_epochs"] <= b + 1e-9 for n, b in
               [("erm", 2), ("pgd-budget1", 1), ("pgd-budget2", 2), ("at", 2)])
    attacked = {n for n, r in rows.items() if "aa_all-l2-eps0.5" in r}
    assert attacked == {"erm", "pgd-budget1", "pgd-budget2", "at"}  # one per family, budget
    assert "last_clean_acc" in rows["at"] or rows["at"]["selected_epoch"] == 2
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "- AutoAttack columns: l2 at 0.5, worst case per example over: PGD" in text
    assert "PGD of 2 steps, on 8 of 360 test images (erm, pgd-budget1, pgd-budget2, at)" in text
    assert "| val. robust l2 0.5 |" in text  # (the validation PGD's ball, once unnamed)


def test_report_only_reports_what_is_finished_and_computes_nothing(suite_file, tmp_path):
    out = tmp_path / "report"
    reproduce(str(suite_file), out, only=["erm"], log=lambda *_: None)
    (out / "runs" / "erm" / "eval.json").rename(out / "runs" / "erm" / "kept.json")
    lines: list[str] = []
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(UserError, match="no run of suite 'tiny' is finished"):
        reproduce(str(suite_file), out, report_only=True, log=lines.append)
    assert not (out / "runs" / "erm" / "eval.json").exists()  # nothing evaluated
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nor written
    (out / "runs" / "erm" / "kept.json").rename(out / "runs" / "erm" / "eval.json")
    rows = reproduce(str(suite_file), out, report_only=True, log=lines.append)
    assert [r["name"] for r in rows] == ["erm"]
    assert not (out / "runs" / "er").exists()  # nothing trained
    from erat.rundir import RunDir

    with RunDir(out / "runs" / "erm").lock():  # another process at work: reading still works
        assert len(reproduce(str(suite_file), out, report_only=True, log=lines.append)) == 1
    assert "er (not trained)" in lines[-2] and "Left out" in (out / "results.md").read_text()


def test_eval_at_the_training_radius():
    from erat.config import resolve
    from erat.errors import UserError
    from erat.suites import eval_at_radii

    cfg = resolve([({"method": "pgd", "norm": "linf", "eps": 0.1}, "test")])
    assert eval_at_radii({"attack": "all", "eps": "train"}, cfg) == {
        "attack": "all", "eps": [0.1], "norm": "linf"}  # (its ball, the norm too)
    assert eval_at_radii({"eps": [0.5]}, cfg) == {"eps": [0.5]}
    with pytest.raises(UserError, match="eps: train"):
        eval_at_radii({"eps": "train"}, resolve([({"method": "erm"}, "test")]))
    with pytest.raises(UserError, match="method pgd's linf radius; the eval's norm l2"):
        eval_at_radii({"eps": "train", "norm": "l2"}, cfg)
    # a method at its default radius (ER, Fast-AT: none in method_params) has one too
    for method, norm in (("er", "l2"), ("fast-at", "linf")):
        got = eval_at_radii({"eps": "train"}, resolve([({"method": method}, "test")]))
        assert got["norm"] == norm and got["eps"][0] > 0


def test_an_evaluation_by_earlier_rules_is_recomputed_not_reused(suite_file, tmp_path):
    """A suite's cached evaluation from an erat whose evaluation had other rules (PGD's
    step, the radii carried upward: stages.STATE_VERSION) was read back as if current. Now
    a run recomputes it (the old kept beside); a report that computes nothing, or a run
    whose weights were dropped, keeps the old figures and says so."""
    import json

    from erat.rundir import RunDir

    out = tmp_path / "report"
    reproduce(str(suite_file), out, only=["erm"], log=lambda *_: None)
    file = out / "runs" / "erm" / "eval.json"
    saved = json.loads(file.read_text())
    saved["cache_key"]["settings"]["rules"] = 2  # (as the earlier erat wrote it)
    saved["clean_acc"] = 0.123456  # (a mark: the figures reported are these)
    file.write_text(json.dumps(saved))
    lines: list[str] = []
    rows = reproduce(str(suite_file), out, report_only=True, log=lines.append)
    assert rows[0]["clean_acc"] == 0.123456
    assert any("eval.json: figures by an earlier erat's evaluation rules" in line
               and "--report-only computes nothing" in line for line in lines)
    keep = file.read_text()
    RunDir(out / "runs" / "erm").drop_weights()
    lines.clear()
    rows = reproduce(str(suite_file), out, only=["erm"], log=lines.append)
    assert rows[0]["clean_acc"] == 0.123456 and file.read_text() == keep
    assert any("kept: its weights were dropped" in line for line in lines)
    out2 = tmp_path / "again"  # (weights kept: recomputed, the old one beside)
    reproduce(str(suite_file), out2, only=["erm"], log=lambda *_: None)
    file2 = out2 / "runs" / "erm" / "eval.json"
    saved = json.loads(file2.read_text())
    saved["cache_key"]["settings"]["rules"] = 2
    file2.write_text(json.dumps(saved))
    reproduce(str(suite_file), out2, only=["erm"], log=lambda *_: None)
    assert json.loads(file2.read_text())["cache_key"]["settings"]["rules"] == 3
    assert (file2.parent / "eval.previous.json").exists()


def test_a_suite_refuses_a_test_set_its_runs_were_not_trained_beside(suite_file, tmp_path,
                                                                     monkeypatch):
    """Another --data-dir (other files of the dataset) reused the finished runs and evaluated
    them on whatever test set was there; erat eval refuses that, and now a suite does."""
    import erat.reproduce as registry  # (where the suite reads its test set)

    out = tmp_path / "report"
    reproduce(str(suite_file), out, only=["erm"], log=lambda *_: None)
    real = registry.load_dataset

    def other_files(name, split, *a, **k):
        data = real(name, split, *a, **k)
        return torch.utils.data.TensorDataset(data.tensors[0].flip(0), data.tensors[1].flip(0))

    monkeypatch.setattr(registry, "load_dataset", other_files)
    with pytest.raises(UserError, match=r"the digits test set is not the one .*erm "
                                        r"was trained beside"):
        reproduce(str(suite_file), out, only=["erm"], log=lambda *_: None)
    # a run without test figures of its own (eval: false) attacked by the AutoAttack stage
    monkeypatch.setattr(registry, "load_dataset", real)
    path = tmp_path / "aa.yaml"
    path.write_text(SUITE.replace("{name: erm, method: erm}", "{name: erm, method: erm, "
                                  "eval: false}").replace(
        "plots:", "autoattack: {n: 8, eval: {attack: pgd, eps: [0.5], steps: 2, sanity_n: 0}, "
                  "also: [erm]}\nplots:"))
    lines: list[str] = []
    reproduce(str(path), tmp_path / "aa", only=["erm"], log=lines.append)
    assert "[erm] PGD on the first 8 test images (the autoattack stage)" in lines
    assert "- aa_ columns: l2 at 0.5" in (tmp_path / "aa" / "results.md").read_text()
    (tmp_path / "aa" / "runs" / "erm" / "eval-autoattack.json").unlink()
    monkeypatch.setattr(registry, "load_dataset", other_files)
    with pytest.raises(UserError, match=r"is not the one .*erm was trained beside"):
        reproduce(str(path), tmp_path / "aa", only=["erm"], log=lambda *_: None)


LINF_TRAIN = """
suite: linf-train
defaults: {dataset: digits, model: mlp, model_kwargs: {hidden: [16]}, epochs: 1, epoch_updates: 2,
           batch_size: 32, progress: false}
runs:
  - {name: a, method: pgd, norm: linf, eps: 0.1, steps: 1}
eval: {attack: pgd, eps: train, steps: 2, n: 20, sanity_n: 0}
"""


def test_eval_at_the_training_radius_reports_in_the_training_norm(tmp_path):
    """eps: train evaluated an l-inf run in l-inf, but the table and plots took the suite's
    eval.norm, l2 by default: no pgd-l2 figures, a traceback after all the work."""
    path = tmp_path / "s.yaml"
    path.write_text(LINF_TRAIN)
    rows = reproduce(str(path), tmp_path / "out", log=lambda *_: None)
    assert "pgd-linf-eps0.1" in rows[0] and (tmp_path / "out" / "accuracy_vs_radius.png").exists()
    path.write_text(LINF_TRAIN.replace("runs:\n", "runs:\n  - {name: b, method: pgd, eps: 0.5, "
                                                  "steps: 1}\n"))  # (and an l2 run)
    with pytest.raises(UserError, match="eval eps: train on runs trained in l2 and linf: give "
                                        "eval.norm"):
        reproduce(str(path), tmp_path / "mixed", log=lambda *_: None)


def test_report_only_of_an_empty_folder_is_one_line_and_writes_nothing(suite_file, tmp_path,
                                                                        capsys):
    out = tmp_path / "empty"
    assert main(["reproduce", str(suite_file), "--out", str(out), "--report-only"]) == 2
    got = capsys.readouterr()
    assert got.out == "" and got.err.count("\n") == 1
    assert "no run of suite 'tiny' is finished" in got.err and "no report written" in got.err
    assert not out.exists()
    assert main(["reproduce", "fashion-mnist", "--out", str(out), "--report-only",
                 "--data-dir", str(tmp_path)]) == 2  # 45 runs: six named, the rest counted
    assert "(not trained), and 39 more); no report written" in capsys.readouterr().err


def test_the_landscape_draws_every_method_and_names_the_runs_left_out(tmp_path, monkeypatch):
    import erat.plots

    drawn = []
    monkeypatch.setattr(erat.plots, "landscape", lambda models, *a, **k: drawn.append(
        list(models)))
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("  - {name: er, method: er, eps: 0.5, energy",
                                  "  - {name: er2, method: er, eps: 0.5, seed: 1}\n"
                                  "  - {name: er, method: er, eps: 0.5, energy"))
    lines: list[str] = []
    reproduce(str(path), tmp_path / "out", log=lines.append)
    assert drawn == [["erm", "er2"]]
    assert any(line.startswith("landscape: one run per method; left out er ") for line in lines)


def test_the_recorded_command_parses_back_to_the_configuration(tmp_path):
    """results.md's ``erat train`` line of a run: switches on by default (the fast path's,
    augmentation) are written as ``--no-NAME``, not ``--fast-graph False``, which the parser
    refuses; the line parses back to the same configuration."""
    import shlex

    from erat.cli import TRAIN_ONLY, build_parser
    from erat.config import resolve
    from erat.reproduce import command

    cfg = resolve([({"dataset": "digits", "method": "er", "eps": 1.0, "epochs": 2,
                     "fast_graph": False, "fast_bf16": False, "augment": False,
                     "compile": True, "entmin": False, "S": None}, "test")])
    line = command(cfg, tmp_path / "run")
    assert "--no-fast-graph" in line and "False" not in line and "None" not in line
    args = build_parser(["train"]).parse_args(shlex.split(line)[1:])
    flags = {k: v for k, v in vars(args).items() if k not in TRAIN_ONLY}
    assert resolve([(flags, "flags")]).to_dict() == {**cfg.to_dict(), "method_params":
                                                     {"eps": 1.0}}


GROUPS = """
suite: groups
defaults: {dataset: digits, model: mlp, model_kwargs: {hidden: [16]}, batch_size: 64,
           val: 200, val_n: 50, val_steps: 2, val_eps: 0.5, select: best-robust,
           budget_epochs: 2, budget: 1, progress: false}
runs:
  - {name: a, method: erm, family: f}
  - {name: b, method: erm, family: f, lr: 0.03}
  - {name: c, method: erm, family: g}
eval: {attack: pgd, eps: [0.5], steps: 2, n: 30, sanity_n: 0}
autoattack: {n: 8, eval: {attack: all, eps: [0.5], steps: 2, sanity_n: 0}, group: [family]}
plots: {landscape: false}
"""


@pytest.mark.filterwarnings("ignore::erat.sanity.EvaluationWarning")
def test_only_lists_split_a_suite_and_autoattack_waits_for_the_group(tmp_path):
    path, out = tmp_path / "groups.yaml", tmp_path / "out"
    path.write_text(GROUPS)
    lines: list[str] = []
    rows = reproduce(str(path), out, only=["a"], log=lines.append)
    assert [r["name"] for r in rows] == ["a"]
    assert any("AutoAttack waits for b" in line for line in lines)
    assert not (out / "runs" / "a" / "eval-autoattack.json").exists()
    rows = reproduce(str(path), out, only=["c"], log=lines.append)  # a second worker
    assert [r["name"] for r in rows] == ["a", "c"]  # the report covers every finished run
    assert "aa_clean_acc" in rows[1] and not (out / "runs" / "b").exists()
    assert "| c " in (out / "results.md").read_text() and "| a " in (out / "results.md").read_text()
    reproduce(str(path), out, only=["b"], log=lambda *_: None)
    rows = {r["name"]: r for r in reproduce(str(path), out, log=lambda *_: None)}
    best = max(("a", "b"), key=lambda n: rows[n]["val_robust_acc"])
    assert {n for n, r in rows.items() if "aa_clean_acc" in r} == {best, "c"}


@pytest.mark.slow
def test_a_suite_reports_runs_whose_weights_were_dropped(suite_file, tmp_path, capsys):
    """A GPU session brings back no model file (16 MiB a file): its run folders travel with
    their weights dropped (RunDir.drop_weights: model-meta.json keeps model.pt's metadata
    and the file's SHA-256). Such runs are finished and report their cached results,
    training and evaluating nothing (the landscape, which needs weights, leaves them out);
    a result not computed yet says what it needs."""
    from erat.rundir import RunDir

    out = tmp_path / "out"
    rows = reproduce(str(suite_file), out, log=lambda *_: None)
    folders = [RunDir(out / "runs" / name) for name in ("erm", "er")]
    kept = [(f.read_meta(), f.weights_sha256()) for f in folders]
    for f in folders:
        assert RunDir.MODEL in [p.name for p in f.drop_weights()]
        assert not list(f.path.glob("*.pt")) and f.finished() and f.drop_weights() == []
    assert [(f.read_meta(), f.weights_sha256()) for f in folders] == kept
    lines: list[str] = []
    assert reproduce(str(suite_file), out, log=lines.append) == rows
    assert "landscape: left out erm, er (weights dropped)" in lines
    assert not [line for line in lines if "training" in line or "evaluating" in line]
    assert "landscape.png" not in (out / "results.md").read_text()
    suite_file.write_text(SUITE.replace("n: 40", "n: 30"))  # a result not computed yet
    with pytest.raises(UserError, match="its weights were dropped .* trained again"):
        reproduce(str(suite_file), out, log=lambda *_: None)
    capsys.readouterr()
    assert main(["eval", str(out / "runs" / "er"), "--eps", "0.5"]) == 2
    assert "er: its weights were dropped" in capsys.readouterr().err
    assert main(["train", "--config", str(out / "runs" / "er" / "config.yaml"), "--resume",
                 "--out", str(out / "runs" / "er")]) == 0
    assert "is finished: its weights were dropped; nothing to do" in capsys.readouterr().out


def test_a_failed_sanity_check_exits_3_after_the_whole_suite(suite_file, tmp_path, capsys,
                                                             monkeypatch):
    """A run whose sanity check failed was shown only in the table and reproduce exited 0;
    now, as `erat eval`, exit 3 after every run and the report, and a last line naming it
    (also when the evaluation is read back; --only counts its own runs)."""
    import erat.evaluate

    real = erat.evaluate.evaluate

    def failing(model, x, y, **kw):
        result = real(model, x, y, **kw)
        if kw["extra_info"]["run"] == "erm":
            result["checks_failed"] = 1
        return result

    monkeypatch.setattr(erat.evaluate, "evaluate", failing)
    out = tmp_path / "report"
    assert main(["reproduce", str(suite_file), "--out", str(out)]) == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("sanity checks failed in 1 run(s): erm (")
    assert lines[-2].startswith("wrote ") and (out / "results.md").is_file()
    assert (out / "runs" / "er" / "eval.json").is_file()  # the suite went on after erm
    assert main(["reproduce", str(suite_file), "--out", str(out), "--report-only"]) == 3
    assert "sanity checks failed in 1 run(s): erm" in capsys.readouterr().out
    assert main(["reproduce", str(suite_file), "--out", str(out), "--only", "er"]) == 0
    assert "sanity checks failed" not in capsys.readouterr().out


@pytest.mark.parametrize("plots, says", [
    ("{landscape_eps: -1}", "plots.landscape_eps must be a finite number >= 0"),
    ("{landscape_index: -2}", "plots.landscape_index must be a test image's position"),
    ("{landscape_eps: 0}", "plots.landscape_eps must be > 0"),
])
def test_landscape_settings_are_checked_before_any_training(tmp_path, capsys, plots, says):
    """A bad plots setting was met only after every run had trained and the tables were
    written; now one line naming the suite file, exit 2, nothing written."""
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.replace("plots: {landscape_eps: 0.5}", f"plots: {plots}"))
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {says}" in err
    assert not out.exists()


@pytest.mark.parametrize("old, new, says", [
    ("{name: er, method: er,", "{name: er, method: er, grid: {S: 1},", "run er: grid must map"),
    ("{name: er, method: er,", "{name: er, method: er, seeds: 3,", "run er: seeds must be a"),
    ("{name: er, method: er,", "{name: er, method: er, seeds: [],", "run er: seeds must be a"),
    ("{name: erm, method: erm}", "{name: erm, method: erm, eps: 1.0}",
     "run erm: method 'erm' takes no eps"),
    ("S: 1, n: 20}", "S: 1, TT: 2}", "run er: energy must be a mapping with eps"),
    ("{name: erm, method: erm}", "{name: erm, method: erm, energy: {eps: 1, T: 0}}",
     "energy: T must be an integer >= 1, got 0"),
    ("plots: {landscape_eps: 0.5}", "plots: {landscape_epss: 0.5}", "plots must be a mapping"),
    ("{name: er, method: er,", "{name: er, method: er, entmin: 'no',",
     "entmin must be true or false"),
    ("plots:", "autoattack: {n: 5, also: [er], bogus: 1}\nplots:", "autoattack must be a mapping"),
    ("plots:", "autoattack: {n: 0}\nplots:", "autoattack.n must be a number of test images"),
    ("plots:", "autoattack: {also: [err]}\nplots:", "autoattack.also must list runs"),
    ("plots:", "autoattack: {group: [method]}\nplots:", "autoattack.group must be a list of"),
    ("plots:", "autoatack: {n: 5}\nplots:", "unknown key(s) 'autoatack'; a suite holds"),
    ("plots:", "autoattack: {group: [{family: 1}]}\nplots:", "autoattack.group must be a list"),
    ("plots:", "autoattack: {also: er}\nplots:", "autoattack.also must be a list of run names"),
    ("plots:", "autoattack: {n: 5}\nplots:", "autoattack attacks no run: give group"),
    ("sanity_n: 10}", "sanity_n: 10, restart: 2}\nx:", "bad.yaml: unknown key(s) 'x'"),
    ("epochs: 1,", "epoch: 1,", "bad.yaml defaults: unknown setting 'epoch'; did you mean"),
    ("sanity_n: 10}", "sanity_n: 10, restart: 2}", "bad.yaml: eval: unknown evaluation setting"),
    ("steps: 2, n: 40", "steps: 0, n: 40", "bad.yaml: eval: steps must be an integer >= 1"),
    ("{name: erm, method: erm}", "{name: erm, method: erm, device: foo}", "unknown device 'foo'"),
    ("sanity_n: 10}", "sanity_n: 10, batch_size: 0}", "eval: batch_size must be an integer"),
    # checked by erat train before it reads data, so each was met at the run's turn
    ("{name: erm, method: erm}", "{name: erm, method: erm, val: 100, val_norm: linf, "
     "val_eps: 1.5}", "bad.yaml run erm: an l-inf radius val_eps=1.5"),
    ("{name: erm, method: erm}", "{name: erm, method: erm, val: 100, select: best-robust}",
     "bad.yaml run erm: --select best-robust needs --val-eps for method 'erm'"),
    ("dataset: digits,", "dataset: digit,", "bad.yaml run erm: unknown dataset 'digit'"),
    # a block without norm measured an l-inf run in l2 (labelled l2, but not asked for)
    ("{name: er, method: er, eps: 0.5,", "{name: er, method: er, norm: linf, eps: 0.1,",
     "bad.yaml: energy gives no norm, so it measures in l2, and run er trained in l-inf"),
])
def test_a_malformed_suite_is_one_line_before_any_training(tmp_path, capsys, old, new, says):
    """Suite mistakes were tracebacks (grid, seeds, energy names) or met at the run's turn,
    after the runs before it had trained (a method setting), or ignored (plots, seeds: [],
    autoattack's keys, and a grouped run without validation, which was never attacked)."""
    path = tmp_path / "bad.yaml"
    assert old in SUITE
    path.write_text(SUITE.replace(old, new))
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_grouped_run_without_validation_is_refused(tmp_path, capsys):
    """AutoAttack chooses a group's best on validation; a grouped run without validation
    was never attacked and nothing said so: now one line naming it, nothing trained."""
    path, out = tmp_path / "bad.yaml", tmp_path / "out"
    path.write_text(SUITE.replace("{name: erm, method: erm}", "{name: erm, method: erm, family: a}")
                    .replace("plots:", "autoattack: {group: [family]}\nplots:"))
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "autoattack.group chooses each group's best run by validation robust accuracy, " \
        "which run erm lacks" in err and err.count("\n") == 1
    assert not out.exists()
    path.write_text(path.read_text().replace("group: [family]", "group: [family], also: [erm]"))
    with pytest.raises(UserError, match="no run of suite"):  # in also: attacked as it is
        reproduce(str(path), out, report_only=True)


def test_suite_checks_take_what_the_runs_use(tmp_path, capsys):
    """A grouped run on its method's default eps has a validation robust accuracy (it was
    refused: only a given eps counted); a run's own eval with another attack may leave a
    shared option of the suite's unused; a mistake in the suite's eval block is blamed on the
    block, not on the run that has an eval of its own."""
    path, out = tmp_path / "s.yaml", tmp_path / "out"
    text = SUITE.replace("epochs: 1,", "epochs: 1, val: 50,").replace(
        "{name: erm, method: erm}", "{name: at, method: at, family: a, eval: {attack: fgsm}}"
    ).replace("plots:", "autoattack: {group: [family]}\nplots:")
    path.write_text(text)
    with pytest.raises(UserError, match="no run of suite"):  # (every check passed)
        reproduce(str(path), out, report_only=True)
    path.write_text(text.replace("sanity_n: 10}", "sanity_n: 10, restart: 2}"))
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: eval: unknown evaluation setting(s): restart" in err, err


def test_a_landscape_index_past_the_test_set_is_said_not_drawn(tmp_path):
    import torch

    from erat.reproduce import _landscape

    lines: list[str] = []
    _landscape(tmp_path, [{"name": "a", "method": "erm"}], {"a": {}},
               (torch.zeros(3, 1, 8, 8), torch.zeros(3)), {"landscape_index": 3}, lines.append)
    assert lines == ["landscape not drawn: plots.landscape_index 3 is past the 3 test images"]
    assert not list(tmp_path.iterdir())


def test_a_changed_evaluation_keeps_the_earlier_result(tmp_path, capsys):
    """Changing a suite's eval and running it again replaced eval.json without a word."""
    from erat.cli import main

    text = ("suite: t\ndefaults: {dataset: digits, model: mlp, epochs: 1, epoch_updates: 2, "
            "progress: false}\nruns:\n  - {name: erm, method: erm}\n"
            "eval: {attack: pgd, eps: [0.5], steps: 1, sanity_n: 0, n: %d}\n")
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(text % 20)
    assert main(["reproduce", str(suite), "--out", str(out)]) == 0
    suite.write_text(text % 10)
    capsys.readouterr()
    assert main(["reproduce", str(suite), "--out", str(out)]) == 0
    assert "[erm] eval.json held other settings or weights: replaced, the earlier one kept " \
        "as eval.previous.json" in capsys.readouterr().out
    kept = json.loads((out / "runs" / "erm" / "eval.previous.json").read_text())
    assert kept["threat"]["n"] == 20


def test_an_linf_suite_draws_its_landscape_at_its_largest_radius(tmp_path, capsys):
    """The landscape's default radius, 1.0, is the whole box in l-inf (and warned of as an
    l2 radius the user never gave): an l-inf suite draws it at its largest radius, and a
    given one is read as a fraction and checked in l-inf before any training."""
    from erat.cli import main

    text = ("suite: t\ndefaults: {dataset: digits, model: mlp, epochs: 1, epoch_updates: 2, "
            "progress: false}\nruns:\n  - {name: fat, method: fast-at, eps: 8/255}\n"
            "eval: {attack: pgd, norm: linf, eps: '4/255,8/255', steps: 1, n: 10, "
            "sanity_n: 0}\n")
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(text + "plots: {landscape_eps: 1.5}\n")
    assert main(["reproduce", str(suite), "--out", str(out)]) == 2
    assert "plots.landscape_eps=1.5" in capsys.readouterr().err and not out.exists()
    suite.write_text(text)
    assert main(["reproduce", str(suite), "--out", str(out)]) == 0
    assert "l-inf radius 0.0313725" in (out / "landscape.svg").read_text()


def test_seconds_per_epoch_are_per_full_epoch_without_compiling(tmp_path):
    """A suite's s/epoch: a budget's partial last epoch counts as the part of an epoch it
    is, and the first compiled update's compiling is left out (it is in ``seconds``)."""
    from erat.reproduce import _seconds_per_epoch
    from erat.rundir import RunDir

    folder = RunDir(tmp_path)
    for row in [{"epoch": 1, "updates": 10, "seconds": 7.0, "compile_seconds": 5.0},
                {"epoch": 2, "updates": 20, "seconds": 2.0},
                {"epoch": 3, "updates": 25, "seconds": 1.0}]:
        folder.append_metrics(row)
    assert _seconds_per_epoch(folder) == pytest.approx(5.0 / 25 * 10)
    short = RunDir(tmp_path / "short")  # a budget of less than one epoch: its one row
    short.path.mkdir()
    short.append_metrics({"epoch": 1, "updates": 4, "epoch_updates": 10, "seconds": 2.0})
    assert _seconds_per_epoch(short) == pytest.approx(5.0)


def test_a_suite_measures_its_runs_on_their_training_device(suite_file, tmp_path,
                                                             monkeypatch):
    """A suite's evaluations and energies run where its runs train (``--device``; on a GPU
    machine every PGD of a suite ran on the CPU before), resolved only when computed (a
    report on another machine reads them back)."""
    import erat.reproduce
    from erat.rundir import RunDir

    resolved, asked, given = torch.device("cpu"), [], []
    monkeypatch.setattr(erat.reproduce, "resolve_device",
                        lambda name: asked.append(name) or resolved)
    load = RunDir.load_model
    monkeypatch.setattr(RunDir, "load_model", lambda self, device="cpu", file=None:
                        given.append(device) or load(self, device, file))
    reproduce(str(suite_file), tmp_path / "out", log=lambda *_: None)
    assert set(asked) == {"auto"}  # (the suite's device: its TrainConfig's)
    assert sum(d is resolved for d in given) == 3  # erm's and er's PGD, er's energy
    asked.clear()
    reproduce(str(suite_file), tmp_path / "out", log=lambda *_: None, report_only=True)
    assert asked == []


def test_the_autoattack_stage_runs_autoattack_unless_told_otherwise():
    """An ``autoattack`` section without ``eval.attack`` ran the evaluation's default, PGD,
    and the log and results.md called it AutoAttack."""
    from erat.suites import autoattack_eval

    assert autoattack_eval({"n": 5, "also": ["a"], "eval": {"eps": [0.5]}}) == {
        "attack": "all", "eps": [0.5]}
    assert autoattack_eval({"eval": {"attack": "pgd"}})["attack"] == "pgd"


def test_a_data_dir_an_embedded_suite_never_reads_is_said(tmp_path):
    lines: list[str] = []
    with pytest.raises(UserError):  # (nothing finished to report)
        reproduce("digits", tmp_path / "o", overrides={"data_dir": "/nonexistent"},
                  report_only=True, log=lines.append)
    assert lines[0] == "note: --data-dir has no effect here (digits is embedded, it reads no " \
        "files)"


def test_suite_plot_draws_the_attack_its_runs_were_evaluated_with(tmp_path, monkeypatch):
    """A suite's accuracy plot drew its own eval.attack: runs evaluated otherwise (their own
    eval) dropped out of it. It draws the attack most runs hold, as erat report does."""
    from erat import plots
    from erat.reproduce import write_report

    drawn = []
    monkeypatch.setattr(plots, "accuracy_vs_radius",
                        lambda results, out, attack, norm: drawn.append((attack, norm)))
    chain = {"clean_acc": 0.9, "threat": {"attack": "all", "norm": "l2", "n": 10},
             "robust_acc": {"pgd-l2-eps0.5": 0.7, "all-l2-eps0.5": 0.6}}
    rows = [{"name": n, "clean_acc": 0.9, "all-l2-eps0.5": 0.6} for n in "ab"]
    write_report({"suite": "t", "eval": {"attack": "pgd"}, "plots": {"landscape": False}},
                 tmp_path, rows, {"a": chain, "b": chain}, [], None, ("l2", [0.5]),
                 log=lambda *_: None)
    assert drawn == [("all", "l2")]


def test_the_norm_check_spares_runs_nothing_measures_and_a_named_l2_keeps_figures(tmp_path):
    """The l-inf norm check refused an l-inf run with eval: false and AutoAttack's block for
    an l-inf run it never attacks; naming norm: l2, as it asks, recomputed every figure."""
    from erat.suites import check_suite, run_config

    base = SUITE.replace("{name: erm, method: erm}", "{name: erm, method: erm}\n  - {name: v, "
                         "method: pgd, norm: linf, eps: 0.1, steps: 1, eval: false}")
    for text in (base, base.replace("plots:", "autoattack: {also: [er]}\nplots:")
                 .replace("eval: false}", "eval: {norm: linf, eps: [0.1]}}")):
        path = tmp_path / "ok.yaml"
        path.write_text(text)
        suite = load_suite(str(path))
        check_suite(suite, [run_config(suite, r, {}) for r in suite["runs"]])
    out = tmp_path / "out"
    path.write_text(SUITE.replace("norm: l2, ", ""))
    first = reproduce(str(path), out, log=lambda *_: None)
    path.write_text(SUITE)  # (norm: l2 named: the same figures, nothing computed)
    again = reproduce(str(path), out, report_only=True, log=lambda *_: None)
    assert [r["pgd-l2-eps0.5"] for r in again] == [r["pgd-l2-eps0.5"] for r in first]


@pytest.mark.parametrize("name", ["2024", "tick`", " spaced "])
def test_a_suite_owns_its_folder_whatever_its_name(tmp_path, name):
    from erat.reproduce import _check_owner

    out = tmp_path / "o"
    out.mkdir()
    (out / "results.md").write_text(f"# Suite `{str(name).strip()}`\n")
    _check_owner(out, name, write=True)  # (a folder of before the marker: its title)
    _check_owner(out, name, write=True)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _check_owner(fresh, "a", write=True)  # (a failed first attempt: claimed, no run in it)
    _check_owner(fresh, "b", write=True)
    assert (fresh / "suite.txt").read_text() == "b\n"
