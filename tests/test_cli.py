"""The command line: the contract of ``erat train`` / ``eval`` and one-line errors (exit 2)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from erat.cli import build_parser, main

TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--epoch-updates",
    "3",
    "--no-progress",
]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--epochs", "3", "--epoch-updates", "20", "--out", str(out)]) == 0
    return out


def test_train_writes_resolved_config(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(
        [*TRAIN, "--method", "at", "--eps", "1.5", "--adv-weight", "0.5", "--out", out], capsys
    )
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "at" and cfg["method_params"] == {"eps": 1.5, "adv_weight": 0.5}


def test_yaml_config_then_flags(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("dataset: digits\nmodel: mlp\nepochs: 5\nlr: 0.01\nmethod: er\nT: 3\n")
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--config", conf, "--lr", "0.002", "--out", out], capsys)
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["lr"] == 0.002 and cfg["method_params"] == {"T": 3}


def test_eval_json_contract(digits_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, text, err = run(
        [
            "eval",
            digits_run,
            "--norm",
            "l2",
            "--eps",
            "0.5,1.0",
            "--steps",
            "5",
            "--n",
            "60",
            "--json",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert 0 <= result["clean_acc"] <= 1
    assert set(result["robust_acc"]) == {"pgd-l2-eps0.5", "pgd-l2-eps1"}
    for key in ("norm", "eps", "steps", "restarts", "seed", "n", "checkpoint_sha256"):
        assert key in result["threat"]
    assert "pgd-l2-eps0.5" in text


def test_eval_fast_off_is_the_same_evaluation(digits_run, tmp_path, capsys):
    """``--fast off`` (eager on a GPU too) changes nothing on the CPU, where eval is eager."""
    results = []
    for extra in ([], ["--fast", "off"]):
        out = tmp_path / f"eval{len(extra)}.json"
        code, _, err = run(["eval", digits_run, "--eps", "0.5", "--steps", "3", "--n", "30",
                            "--fresh", "--json", out, *extra], capsys)
        assert code == 0, err
        results.append(json.loads(out.read_text())["robust_acc"])
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--dataset", "nope"], "nope"),
        (["--model", "nope"], "unknown model"),
        (["--method", "erm", "--eps", "1.0"], "takes no eps; it has no parameters"),
        (["--method", "at", "--eps", "-1"], "eps"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "mnist"),
        (["--config", "/nonexistent.yaml"], "no such config file"),
        (["--config", "FOLDER"], "is a folder, not a config file"),
        (["--config", "EMPTY"], "empty.yaml is empty: a config file holds settings"),
        (["--config", "SUITE"], "is a suite (it lists runs), not one run's settings: run it "
         "with erat reproduce"),  # (said "unknown setting 'suite'")
    ],
)
def test_train_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "suite.yaml").write_text("runs: [{name: a, method: erm}]\n")  # (suite: optional)
    args = [{"FOLDER": str(tmp_path), "EMPTY": str(tmp_path / "empty.yaml"),
             "SUITE": str(tmp_path / "suite.yaml")}.get(a, a) for a in args]
    code, _, err = run([*TRAIN, *args, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert err.startswith("erat: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eps", "-0.5"], "--eps must be a finite number >= 0, got -0.5"),  # (as energy's)
        (["--norm", "l3"], "invalid choice"),
        (["--attack", "nope"], "attack"),
        (["--attack", "all,square"], "attack 'all' is a preset (pgd, autoattack) and stands"),
        (["--fast", "on"], "invalid choice"),
        (["--eps", "0.5,100"], "--eps 100 is above 8, the l2 diameter of 1x8x8 images"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),  # (was batch_size)
        (["--square-queries", "10"], "--square-queries is an option of square, which --attack "
         "pgd does not run"),  # (was ignored without a word)
        (["--attack", "fgsm", "--steps", "3", "--no-checks"], "--steps is an option of pgd"),
        (["--attack", "fgsm", "--step-size", "0.1"], "--step-size is an option of pgd"),  # (the
    ],  # checks' PGD takes --steps, not the step: it was accepted and did nothing)
)
def test_eval_errors(digits_run, capsys, args, message):
    try:
        code, _, err = run(["eval", digits_run, "--n", "10", *args], capsys)
    except SystemExit as e:  # argparse rejects bad values itself, also with exit code 2
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and message in err


@pytest.mark.parametrize("args, message", [
    (["--T", "0"], "--T must be an integer >= 1, got 0"),
    (["--S", "-1"], "--S must be an integer >= 0, got -1"),
    (["--eps", "-0.5"], "--eps must be a finite number >= 0, got -0.5"),  # (as eval's)
])
def test_energy_errors_name_the_flags(digits_run, capsys, args, message):
    code, _, err = run(["energy", digits_run, "--eps", "0.5", "--n", "5", *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_energy_defaults_to_the_training_ball(digits_run, tmp_path, capsys):
    """Without --eps, ``erat energy`` measures in the run's training ball and says so; in
    another norm, or for a run or model without a radius, it asks for --eps."""
    er = tmp_path / "er"
    assert main([*TRAIN, "--method", "er", "--eps", "0.75", "--out", str(er)]) == 0
    code, out, err = run(["energy", er, "--n", "4", "--T", "2", "--M", "2", "--S", "1"], capsys)
    assert code == 0 and "ball: l2 radius 0.75 (the run's training ball)" in out, err
    code, out, _ = run(["energy", er, "--eps", "0.5", "--n", "4", "--T", "2", "--M", "2"], capsys)
    assert code == 0 and "ball: l2 radius 0.5, T 2" in out
    for args, message in [
        ([er, "--norm", "linf"], "--eps is needed: the run trained in l2 0.75, not in l-inf"),
        ([digits_run], f"--eps is needed, e.g. --eps 0.5: {digits_run} was trained without a "
                       "radius"),
        ([er / "nothing"], "no such run folder or model file"),
    ]:
        code, _, err = run(["energy", *args], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_eval_missing_run(tmp_path, capsys):
    code, _, err = run(["eval", tmp_path / "nothing"], capsys)
    assert code == 2 and "no such run folder or model file" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps >= 1"),
        (["--warmup", "-1"], "--warmup >= 0"),
        (["--methods", "erm,nope"], "--methods: unknown method(s) nope; choose among at, er"),
        (["--methods", ","], "--methods: an empty name in ','; give names separated by"),
        (["--models", "cnn:28"], "MODEL:CxHxW"),
        (["--models", "mlp:0x8x8", "--methods", "erm"], "--models wants MODEL:CxHxW"),
        (["--models", "mlp:1x-8x8"], "positive integers"),
        (["--models", "nope:1x8x8"], "--models: unknown model 'nope'"),
        (["--methods", "er:Q=3"], "--methods er:Q=3: method 'er' takes no"),
        (["--methods", "pgd:steps=0"], "--methods pgd:steps=0: steps must be an integer >= 1"),
        (["--max-seconds", "-1"], "--max-seconds wants a positive"),
        (["--max-seconds", "nan"], "--max-seconds wants a positive"),
        (["--amp", "fp32"], "--amp takes none, bf16, fp16 (comma-separated), got 'fp32'"),
        (["--compile", "maybe"], "--compile takes off, on (comma-separated), got 'maybe'"),
        (["--fast", "on", "--device", "cpu"], "--fast on needs a CUDA device"),
        (["--fast", "off,on", "--device", "cpu"], "--fast on needs a CUDA device"),
    ],
)
def test_bench_errors_are_one_line(tmp_path, capsys, args, message):
    code, out, err = run(["bench", "--no-attacks", *args, "--json", tmp_path / "b.json"],
                         capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("erat:")
    assert not (tmp_path / "b.json").exists() and out == ""  # refused before any work
    flags = {a for a in args if a.startswith("--") and a != "--device"}
    assert all(f not in err for f in {"--amp", "--compile", "--fast", "--models"} - flags)


@pytest.mark.parametrize(
    "args, start",
    [
        (["train", "--epochs", "abc"], "erat train: error: argument --epochs: invalid int"),
        (["eval", "RUN", "--eps", "abc"], "erat eval: error: argument --eps: radii"),
        (["eval", "RUN", "--eps", "0.5,,1"], "erat eval: error: argument --eps: radii"),
        (["train", "--out", ""], "erat train: error: argument --out: a path, not an empty"),
        (["eval", "--input-range", "-1,1"], "erat eval: error: argument --input-range: expected "
                                            "one argument (if the value starts with '-', "
                                            "write --input-range=VALUE)"),
        (["report", "r", "--out", " "], "erat report: error: argument --out: a path, not an"),
        (["eval", "RUN", "--no-progress"], "erat eval: error: unrecognized arguments: "
                                           "--no-progress"),
        (["bench", "--steps", "x"], "erat bench: error: argument --steps"),
        (["energy", "RUN", "--T", "x"], "erat energy: error: argument --T"),
        (["report", "r", "--out", "o", "--index", "1.5"], "erat report: error: argument"),
        (["reproduce"], "erat reproduce: error: the following arguments are required"),
        (["--nope", "eval", "RUN"], "erat: error: unrecognized arguments: --nope"),
        (["nope"], "erat: error: argument command: invalid choice: 'nope'"),
        ([], "erat: error: the following arguments are required: command"),
    ],
)
def test_argument_errors_are_one_line_of_the_parser_given_them(capsys, args, start):
    """argparse's own errors (a value of the wrong type, a missing or unknown argument) are
    one line naming the (sub)command, not its usage text; an unknown flag after a subcommand
    is that subcommand's (argparse would name the top command)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and err.startswith(start), err
    assert err.count("\n") == 1 and "usage" not in err and err.endswith("--help)\n")


def test_every_help_shows_the_true_defaults_once():
    """Each subcommand's --help against the values the command really uses: the parser's
    own default, the training configuration's (train), the attacks' own (eval options)."""
    import argparse

    from erat.attacks import attack_defaults
    from erat.cli import COMMANDS
    from erat.config import TrainConfig
    from erat.fields import HelpFormatter

    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    assert set(subs) == set(COMMANDS)
    train_defaults, attack = TrainConfig().to_dict(), attack_defaults()
    for name, sub in subs.items():
        formatter = HelpFormatter(prog="erat")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.dest in ("debug", "run"):
                continue
            text = formatter._get_help_string(action) or ""
            assert text.count("(default") <= 1, (name, action.dest, text)
            if action.required or isinstance(action, argparse._StoreTrueAction |
                                              argparse._StoreFalseAction):
                assert "(default" not in text, (name, action.dest, text)
                continue
            if name == "train":
                true = train_defaults.get(action.dest, attack.get(action.dest))
            elif name == "eval" and action.dest in attack:
                true = attack[action.dest]
            else:
                true = action.default
            if isinstance(true, list | tuple):
                true = ",".join(map(str, true))
            if true not in (None, argparse.SUPPRESS, {}) and not (
                    name == "train" and action.dest not in train_defaults):
                assert re.search(rf"\(default: {re.escape(str(true))}[);]", text), \
                    (name, action.dest, text)


def test_a_failed_sanity_check_exits_3_after_writing_the_result(tmp_path, capsys):
    """A model whose first layer is zero has no input gradient (a masked gradient): the
    checks fail, the result is written and printed anyway, and the exit code says so."""
    import torch

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    blob = torch.load(out / "model.pt", weights_only=True)
    blob["state_dict"]["net.1.weight"].zero_()
    torch.save(blob, out / "model.pt")
    code, text, err = run(["eval", out, "--n", "40", "--steps", "2", "--json",
                           tmp_path / "e.json"], capsys)
    result = json.loads((tmp_path / "e.json").read_text())
    assert code == 3 and result["checks_failed"] >= 1
    assert "! input_gradients" in text and "erat: warning: evaluation check" in err


def _idx(folder, prefix, x, y):
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for kind, a in (("images-idx3", x), ("labels-idx1", y)):
        head = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        (folder / f"{prefix}-{kind}-ubyte").write_bytes(head + a.tobytes())


def test_eval_refuses_a_test_set_other_than_the_training_one(tmp_path, capsys):
    """Two MNIST-format folders that differ in their test images: a run trained beside one
    is not evaluated on the other (model.pt records the test set's SHA-256)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), np.arange(64, dtype=np.uint8) % 10
    for name in ("a", "b"):
        _idx(tmp_path / name, "train", x, y)
        _idx(tmp_path / name, "t10k", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y[:20])
    out = tmp_path / "run"
    assert main([*TRAIN, "--dataset", "mnist", "--data-dir", str(tmp_path / "a"),
                 "--model-kwargs", '{"hidden": [8]}', "--batch-size", "16",
                 "--epoch-updates", "2", "--out", str(out)]) == 0
    code, _, err = run(["eval", out, "--data-dir", tmp_path / "b", "--steps", "1",
                        "--no-checks"], capsys)
    assert code == 2 and err.startswith("erat: error: the mnist test set in") and \
        err.count("\n") == 1 and "not the one" in err
    code, _, err = run(["eval", out, "--steps", "1", "--no-checks"], capsys)
    assert code == 0, err  # its own test set (the run's --data-dir)


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """``erat ... | head``: the reader leaving is no error (exit 141, as for SIGPIPE)."""
    import os

    import erat.cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(erat.cli, "run_report", closed)
    saved = os.dup(1)  # (main points a real stdout at /dev/null)
    try:
        assert main(["report", "x", "--out", "y"]) == 141
    finally:
        os.dup2(saved, 1)
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_does_not_cost_the_json(digits_run, tmp_path, monkeypatch, capsys):
    """``erat eval RUN --json F | head``: the reader may leave before the result is printed;
    the file is written first, so the evaluation's work is kept."""
    import builtins
    import os
    import sys

    printed = builtins.print

    def closed(*args, file=None, **kwargs):  # stdout is a closed pipe; stderr is not
        if file is None or file is sys.stdout:
            raise BrokenPipeError(32, "Broken pipe")
        printed(*args, file=file, **kwargs)

    monkeypatch.setattr(builtins, "print", closed)
    saved = os.dup(1)  # (main points a real stdout at /dev/null)
    try:
        out = tmp_path / "eval.json"
        assert main(["eval", str(digits_run), "--n", "20", "--steps", "1", "--no-checks",
                     "--json", str(out)]) == 141
    finally:
        os.dup2(saved, 1)
    assert json.loads(out.read_text())["threat"]["n"] == 20


def test_eval_defaults_follow_the_run(tmp_path, capsys):
    """`erat eval RUN` takes the run's training norm; an l-inf run is evaluated at its own
    training radius when no --eps is given (the l2 defaults are no l-inf radii)."""
    import json

    run = tmp_path / "linf"
    assert main(["train", "--dataset", "digits", "--model-kwargs", '{"hidden": [16]}',
                 "--epochs", "1", "--epoch-updates", "2", "--method", "pgd", "--norm", "linf",
                 "--eps", "0.1", "--steps", "2", "--no-progress", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--n", "20", "--steps", "2", "--no-checks",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert set(json.loads((tmp_path / "e.json").read_text())["robust_acc"]) == {
        "pgd-linf-eps0.1"}
    capsys.readouterr()
    l2 = tmp_path / "l2"
    assert main(["train", "--dataset", "digits", "--model-kwargs", '{"hidden": [16]}',
                 "--epochs", "1", "--epoch-updates", "2", "--no-progress", "--out",
                 str(l2)]) == 0
    assert main(["eval", str(l2), "--norm", "linf", "--n", "20", "--no-checks"]) == 2
    assert "--norm linf needs --eps" in capsys.readouterr().err


def test_eval_keeps_its_progress_in_the_file_the_readme_names(tmp_path, capsys):
    from pathlib import Path

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert run(["eval", out, "--n", "20", "--steps", "1", "--no-checks", "--eps", "0.5"],
               capsys)[0] == 0
    assert [p.name for p in out.glob(".*.state.pt")] == [".eval-pgd-l2.state.pt"]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "`.eval-<attack>-<norm>.state.pt`" in readme


def test_the_attacks_know_every_flag_of_eval():
    """``EVAL_FLAGS``, which an attack's option may not be named like, is the eval parser's
    own flags (an attack registered with one made every ``erat eval`` a traceback)."""
    from erat.attacks import attack_flags
    from erat.attacks.base import EVAL_FLAGS

    sub = next(a for a in build_parser(["eval"])._actions
               if isinstance(getattr(a, "choices", None), dict)).choices["eval"]
    assert {a.dest for a in sub._actions} - set(attack_flags()) == EVAL_FLAGS


def test_report_notes_energies_measured_differently(digits_run, tmp_path, capsys):
    """An energy of T 16 beside one of T 4 looked comparable in one column."""
    import shutil

    runs = [tmp_path / "a", tmp_path / "b"]
    for run, T in zip(runs, ("2", "4"), strict=True):
        shutil.copytree(digits_run, run)
        assert main(["eval", str(run), "--n", "5", "--steps", "1", "--no-checks", "--json",
                     str(run / "eval.json")]) == 0
        assert main(["energy", str(run), "--eps", "0.5", "--n", "5", "--T", T, "--M", "1",
                     "--S", "0", "--json", str(run / "energy.json")]) == 0
    capsys.readouterr()
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep")]) == 0
    assert "note: the energies were measured with different settings (n 5, T 2, M 1, S 0; " \
        "n 5, T 4, M 1, S 0;" in capsys.readouterr().out


def test_energy_at_radius_zero_is_refused(digits_run, capsys):
    code, _, err = run(["energy", digits_run, "--eps", "0"], capsys)
    assert code == 2 and "--eps must be > 0" in err


@pytest.mark.parametrize("command", [
    ["eval", "RUN", "--n", "8", "--steps", "2", "--no-checks"],
    ["energy", "RUN", "--n", "4", "--T", "2", "--M", "1"],
    ["bench", "--models", "mlp:1x8x8", "--methods", "erm", "--steps", "1", "--warmup", "0",
     "--no-attacks"],
])
@pytest.mark.parametrize("record", ["model.pt", "config.yaml", "metrics.jsonl", "other"])
def test_json_never_overwrites_a_runs_own_records(digits_run, capsys, command, record):
    """``--json RUN/model.pt`` replaced the model by a JSON file (the run could no longer be
    read): one line naming the file, exit 2, the file untouched; a command writes only its
    own result there (energy's JSON is not eval.json)."""
    made = record == "other"
    if made:  # (removed after: the run folder is the module's)
        record = "energy.json" if command[0] != "energy" else "eval.json"
        (digits_run / record).write_text("{}")
    target = digits_run / record
    before = target.read_bytes()
    try:
        code, _, err = run([digits_run if a == "RUN" else a for a in command]
                           + ["--json", target], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"is the {record} of the run in" in err and target.read_bytes() == before
    finally:
        if made:
            target.unlink()


@pytest.mark.parametrize("command, record", [
    (["eval", "RUN", "--n", "8", "--steps", "2", "--no-checks"], "eval.json"),
    (["energy", "RUN", "--n", "4", "--T", "2", "--M", "1", "--eps", "1"], "energy.json"),
])
def test_json_never_replaces_another_runs_result(digits_run, tmp_path, capsys, command, record):
    """``erat eval RUN --json OTHER/eval.json`` replaced another run's evaluation with this
    one's, without a word (a new-user trial): refused, that file untouched; the run's own
    folder (given as a folder or as its model file) stays allowed."""
    other = tmp_path / "other"
    shutil.copytree(digits_run, other, ignore=shutil.ignore_patterns("*.json", ".*"))
    (other / record).write_text('{"kept": true}')
    code, _, err = run([digits_run if a == "RUN" else a for a in command]
                       + ["--json", other / record], capsys)
    assert code == 2 and err.count("\n") == 1 and f"not a result of {digits_run}" in err, err
    assert (other / record).read_text() == '{"kept": true}'
    own = [other / "model.pt" if a == "RUN" else a for a in command]
    code, _, err = run([*own, "--json", other / record], capsys)
    assert code == 0 and "kept" not in (other / record).read_text(), err
    (other / "model.pt").rename(tmp_path / "weights.pt")  # weights kept elsewhere, linked
    (other / "model.pt").symlink_to(tmp_path / "weights.pt")
    code, _, err = run([*own, "--json", other / record], capsys)
    assert code == 0, err
    shutil.copy(tmp_path / "weights.pt", other / "model-last.pt")  # another model of the run
    last = [other / "model-last.pt" if a == "RUN" else a for a in command]
    code, _, err = run([*last, "--json", other / record], capsys)
    assert code == 2 and "not a result of" in err, err
    typo = [other / "modl.pt" if a == "RUN" else a for a in command]
    code, _, err = run([*typo, "--json", other / record], capsys)
    assert code == 2 and "no such run folder or model file" in err, err
