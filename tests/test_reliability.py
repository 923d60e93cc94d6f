"""Run folders that cannot lie, and one line (no traceback) for every failure a user can
cause or meet: exit 2 for the user's mistakes, 1 for the environment's."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import erat.errors
import erat.files
from erat.cli import main
from erat.config import TrainConfig
from erat.rundir import RunDir
from erat.train import train

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs",
         '{"hidden": [16]}', "--epoch-updates", "2", "--no-progress"]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.startswith("erat: error:") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "erm"
    assert run([*TRAIN, "--epochs", "2", "--out", out], capsys)[0] == 0
    return out


def weights(path: Path) -> dict:
    return torch.load(path / "model.pt", weights_only=True)["state_dict"]


# --- a run folder has one identity ---------------------------------------------------------
@pytest.mark.parametrize("args, differs", [
    (["--method", "at", "--eps", "1"], "method 'at' (run: 'erm')"),
    (["--epochs", "1"], "epochs 1 (run: 2)"),
    (["--model", "cnn"], "model 'cnn' (run: 'mlp')"),
    (["--seed", "3"], "seed 3 (run: 0)"),
])
def test_resume_refuses_other_settings(finished, capsys, args, differs):
    before = (finished / "config.yaml").read_text(), weights(finished)
    code, _, err = run([*TRAIN, "--resume", *args, "--out", finished], capsys)
    assert code == 2 and one_line(err) and differs in err
    assert (finished / "config.yaml").read_text() == before[0]  # nothing rewritten
    assert all(torch.equal(before[1][k], v) for k, v in weights(finished).items())


def test_resume_compares_method_settings_as_trained(tmp_path, capsys):
    """A setting left at its default was compared as None: ``--resume --beta 6.0`` (TRADES'
    default, now given) was refused, and another beta said ``(run: None)``."""
    out = tmp_path / "trades"
    args = [*TRAIN, "--method", "trades", "--eps", "1", "--epochs", "2", "--out", out]
    assert run([*args, "--stop-after", "1"], capsys)[0] == 0
    code, _, err = run([*args, "--resume", "--beta", "3"], capsys)
    assert code == 2 and one_line(err) and "beta 3.0 (run: 6.0, its default)" in err, err
    assert run([*args, "--resume", "--beta", "6"], capsys)[0] == 0
    from erat.config import resume_conflicts  # (a hand-written method_params: null failed)

    assert resume_conflicts({"method": "erm", "method_params": None},
                            {"method": "erm", "method_params": {}}) == []


def test_resume_of_a_finished_run_changes_nothing(finished, capsys):
    """... and does not claim to (it printed `wrote .../model.pt` after `nothing to do`)."""
    stamp = (finished / "model.pt").stat().st_mtime_ns
    code, out, err = run([*TRAIN, "--epochs", "2", "--resume", "--out", finished], capsys)
    assert code == 0 and "nothing to do" in out
    assert "wrote" not in out and f"{finished / 'model.pt'} is already there, unchanged" in out
    assert (finished / "model.pt").stat().st_mtime_ns == stamp


def test_train_says_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, _ = run([*TRAIN, "--epochs", "2", "--stop-after", "1", "--out", out], capsys)
    assert code == 0 and text.splitlines()[-1] == f"wrote {out / 'checkpoint.pt'}"
    code, text, _ = run([*TRAIN, "--epochs", "2", "--resume", "--out", out], capsys)
    assert code == 0 and text.splitlines()[-1] == f"wrote {out / 'model.pt'}"
    assert sum(line.startswith("wrote ") for line in text.splitlines()) == 1


def test_a_stop_after_the_last_epoch_is_noted(tmp_path, capsys):
    """--stop-after at or beyond the run's last epoch was silently a full run."""
    out = tmp_path / "run"
    code, text, _ = run([*TRAIN, "--epochs", "1", "--stop-after", "3", "--out", out], capsys)
    assert code == 0 and "--stop-after 3 is not before the run's last epoch (1)" in text
    assert (out / "model.pt").exists()


def test_a_stop_after_the_resumed_epoch_is_refused(tmp_path, capsys):
    """--stop-after 1 on a run resumed after epoch 2 trained epoch 3 and stopped."""
    out = tmp_path / "run"
    assert run([*TRAIN, "--epochs", "4", "--stop-after", "2", "--out", out], capsys)[0] == 0
    code, _, err = run([*TRAIN, "--epochs", "4", "--resume", "--stop-after", "1", "--out", out],
                       capsys)
    assert code == 2 and one_line(err) and "--stop-after 1 is not after epoch 2" in err, err
    assert len(RunDir(out).metrics()) == 2


def test_eval_of_an_unfinished_run_says_how_to_continue_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*TRAIN, "--epochs", "2", "--stop-after", "1", "--out", out], capsys)[0] == 0
    code, _, err = run(["eval", out, "--n", "10"], capsys)
    assert code == 2 and one_line(err) and f"erat train --out {out} --resume" in err, err


def test_an_unknown_only_name_shows_the_suites_runs(tmp_path, capsys):
    code, _, err = run(["reproduce", "digits", "--only", "pg", "--out", tmp_path / "r"], capsys)
    assert code == 2 and one_line(err) and "has no run(s) pg (did you mean: pgd)" in err, err
    code, _, err = run(["reproduce", "digits", "--only", "zzz", "--out", tmp_path / "r"], capsys)
    assert "(its runs: erm, at, vat, pgd, trades, er)" in err, err
    for empty in ("", ",", " , "):  # (--only "$RUNS" with RUNS empty trained the whole suite)
        code, _, err = run(["reproduce", "digits", "--only", empty, "--out", tmp_path / "e"],
                           capsys)
        assert code == 2 and one_line(err) and "--only names no run" in err, err
        assert not (tmp_path / "e").exists()


def test_overwrite_leaves_none_of_the_old_runs_evaluations(finished, capsys):
    """A suite's evaluations (model-last's, AutoAttack's, the replaced ones kept beside)
    outlived an --overwrite: the new run's folder held the old run's figures."""
    old = [RunDir.EVAL, RunDir.EVAL_LAST, RunDir.EVAL_AUTOATTACK, "eval.previous.json",
           "energy.previous.json"]
    for name in old:
        (finished / name).write_text("{}")
    code, _, err = run([*TRAIN, "--epochs", "1", "--overwrite", "--out", finished], capsys)
    assert code == 0, err
    assert not [name for name in old if (finished / name).exists()]


def test_a_killed_overwrite_keeps_the_run_it_set_aside(finished, capsys):
    """An --overwrite killed before its first epoch leaves .replaced/ beside the new run's
    first files; the next --overwrite deleted .replaced/ before its own refusal, and a plain
    train was let in. Now the old run survives, is named, and comes back on a refusal."""
    before = {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()}
    RunDir(finished).set_aside()  # (what the killed --overwrite had done)
    (finished / "config.yaml").write_text("method: er\n")
    (finished / "split.json").write_text("{}")
    code, _, err = run([*TRAIN, "--out", finished], capsys)
    assert code == 2 and ".replaced/, a run an interrupted --overwrite set aside" in err
    code, _, err = run(["eval", finished], capsys)
    assert code == 2 and "set its run aside in .replaced/" in err
    code, _, err = run([*TRAIN, "--method", "er", "--eps", "1", "--fast", "on",
                        "--overwrite", "--out", finished], capsys)
    assert code == 2 and one_line(err), err
    assert {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()} == before
    code, _, err = run([*TRAIN, "--epochs", "1", "--overwrite", "--out", finished], capsys)
    assert code == 0 and not (finished / RunDir.REPLACED).exists()


def test_resume_may_change_how_fast_not_what(finished, capsys):
    """A run started with --compile (or the fast path's graphs) could not be resumed
    without it, as on a machine where the compiler fails; speed settings may change,
    precision and where batches are drawn (--fast, --no-fast-data) may not."""
    (finished / "model.pt").unlink()  # (unfinished again: the resume trains it)
    code, _, err = run([*TRAIN, "--epochs", "2", "--resume", "--compile", "--channels-last",
                        "--no-fast-graph", "--out", finished], capsys)
    assert code == 0, err
    code, _, err = run([*TRAIN, "--epochs", "2", "--resume", "--amp", "bf16", "--out",
                        finished], capsys)
    assert code == 2 and "amp 'bf16' (run: 'none')" in err
    code, _, err = run([*TRAIN, "--epochs", "2", "--resume", "--fast", "off", "--out",
                        finished], capsys)
    assert code == 2 and "fast 'off' (run: 'auto')" in err


def test_resume_needs_a_run(tmp_path, capsys):
    code, _, err = run([*TRAIN, "--resume", "--out", tmp_path / "typo"], capsys)
    assert code == 2 and one_line(err) and "no run to resume" in err
    assert not (tmp_path / "typo").exists()


def test_a_finished_run_is_never_overwritten(finished, capsys):
    (finished / "eval.json").write_text("{}")
    code, _, err = run([*TRAIN, "--method", "at", "--out", finished], capsys)
    assert code == 2 and one_line(err) and "already holds a run" in err
    assert yaml.safe_load((finished / "config.yaml").read_text())["method"] == "erm"
    code, _, err = run([*TRAIN, "--method", "at", "--overwrite", "--out", finished], capsys)
    assert code == 0, err
    assert not (finished / "eval.json").exists()  # no stale result beside the new model
    assert torch.load(finished / "model.pt", weights_only=True)["meta"]["method"]["name"] == "at"
    assert not (finished / RunDir.REPLACED).exists()


@pytest.mark.parametrize("args", [["--budget", "0.001"], ["--fast", "on"]])
def test_a_refused_overwrite_leaves_the_run_it_was_to_replace(finished, capsys, args):
    """--overwrite cleared the folder before the checks made while training starts (a budget
    that pays for no update, the fast path on the CPU): the refusal left it empty. Now the old
    run's files come back byte for byte."""
    (finished / "eval.json").write_text('{"kept": 1}')
    before = {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()}
    code, _, err = run([*TRAIN, "--method", "er", "--eps", "1", *args, "--overwrite", "--out",
                        finished], capsys)
    assert code == 2 and one_line(err), err
    assert {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()} == before
    assert not (finished / RunDir.REPLACED).exists()


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "now",
                "command": "erat train --out run", "start": None}
        (out / ".lock").write_text(json.dumps(lock))
        code, _, err = run([*TRAIN, "--epochs", "1", "--out", out], capsys)
        assert code == 2 and one_line(err) and f"process {holder.pid}" in err
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run([*TRAIN, "--epochs", "1", "--out", out], capsys)  # holder is dead
    assert code == 0, err
    assert not (out / ".lock").exists() and (out / "model.pt").exists()


def test_eval_says_how_it_attacked(finished, capsys):
    """The printed accuracies said neither the attacks nor PGD's steps."""
    code, out, _ = run(["eval", finished, "--n", "20", "--steps", "2", "--no-checks"], capsys)
    assert code == 0 and "worst case per example over: PGD" in out and "PGD of 2 steps" in out


def test_a_second_eval_of_one_run_folder_is_refused(finished, capsys):
    """Two `erat eval`s of one run folder both ran, the second resuming from the first's
    half-written state; a run folder has one writer at a time (.lock)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": "now",
                "command": "erat eval erm", "start": None}
        (finished / ".lock").write_text(json.dumps(lock))
        code, _, err = run(["eval", finished, "--n", "20", "--steps", "1"], capsys)
        assert code == 2 and one_line(err) and f"process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def test_temporaries_of_interrupted_writes_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*TRAIN, "--epochs", "2", "--stop-after", "1", "--out", out], capsys)[0] == 0
    (out / ".checkpoint.pt.k3j2").write_bytes(b"x" * 100)
    code, _, err = run([*TRAIN, "--epochs", "2", "--resume", "--out", out], capsys)
    assert code == 0, err
    assert not list(out.glob(".checkpoint.pt.*"))
    assert not (out / "checkpoint.pt").exists()  # finished: the state is dropped by default


def test_an_unreadable_checkpoint_says_how_to_start_afresh(tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*TRAIN, "--epochs", "2", "--stop-after", "1", "--out", out], capsys)[0] == 0
    (out / "checkpoint.pt").write_text("garbage\n")
    code, _, err = run([*TRAIN, "--epochs", "2", "--resume", "--out", out], capsys)
    assert code == 2 and one_line(err), err
    assert "not a file torch.save wrote; wanted a valid checkpoint" in err
    assert err.rstrip().endswith("--overwrite starts the run afresh")


def test_stale_cached_evaluation_is_recomputed(tmp_path):
    from erat.reproduce import reproduce

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "suite": "s", "defaults": {"dataset": "digits", "model": "mlp", "epochs": 1,
                                   "epoch_updates": 2, "model_kwargs": {"hidden": [8]},
                                   "progress": False},
        "runs": [{"name": "erm", "method": "erm"}],
        "eval": {"attack": "pgd", "eps": [0.5], "steps": 2, "n": 20, "sanity_n": 0},
        "plots": {"landscape": False}}))
    first = reproduce(str(suite), tmp_path / "out", log=lambda *_: None)
    path = tmp_path / "out" / "runs" / "erm" / "eval.json"
    saved = json.loads(path.read_text())
    saved["clean_acc"] = 0.123  # pretend it was computed on other weights
    saved["cache_key"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(saved))
    again = reproduce(str(suite), tmp_path / "out", log=lambda *_: None)
    assert again[0]["clean_acc"] == first[0]["clean_acc"] != 0.123
    other = tmp_path / "t.yaml"  # another suite into the same folder: refused
    other.write_text(suite.read_text().replace("method: erm", "method: at"))
    with pytest.raises(ValueError, match="holds another run"):
        reproduce(str(other), tmp_path / "out", log=lambda *_: None)


def test_a_finished_evaluation_state_is_replaced_without_a_warning(finished, capsys):
    """Another evaluation replaces the saved state of a finished one silently; an unfinished
    one's (interrupted: its progress is lost) with a warning."""
    evaluation = ["eval", finished, "--n", "20", "--steps", "2", "--no-checks"]
    assert run([*evaluation, "--eps", "0.5"], capsys)[0] == 0
    code, _, err = run([*evaluation, "--eps", "0.25"], capsys)
    assert code == 0 and "other settings" not in err, err
    state = next(finished.glob(".eval*.state.pt"))
    saved = torch.load(state, weights_only=True)
    torch.save(saved | {"finished": False}, state)  # as if interrupted
    code, _, err = run([*evaluation, "--eps", "0.5"], capsys)
    assert code == 0 and "has other settings (an unfinished evaluation)" in err, err


# --- one line, never a traceback --------------------------------------------------------------
@pytest.mark.parametrize("args, code, message", [
    (["--device", "cuda:7"], 1, "no CUDA GPU"),
    (["--model-kwargs", '{"hidden": [-5]}'], 2, "cannot build model 'mlp'"),
    (["--labels", "0"], 2, "--labels must be an integer >= 1"),
    (["--labels", "5000"], 2, "--labels must be between 10 (one per class) and 1398"),
    (["--labels", "5"], 2, "--labels 5 is fewer than the 10 classes"),
    (["--labels", "50", "--val", "1400"], 2, "--val 1400: class 8 has 139 examples, fewer than "
                                             "the 140 a balanced split takes from each"),
    (["--method", "er", "--eps", "100"], 2, "--eps 100 is above 8, the l2 diameter of 1x8x8"),
    (["--val", "50", "--val-eps", "100"], 2, "--val-eps 100 is above 8, the l2 diameter"),
    (["--model-kwargs", '{"nope": 1}'], 2, "model 'mlp' takes no parameter(s) nope"),
    (["--method", "pgd", "--steps", "0"], 2, "--steps must be an integer >= 1"),
    (["--method", "vat", "--power-iters", "0"], 2, "--power-iters must be an integer >= 1"),
    (["--stop-after", "0"], 2, "--stop-after must be >= 1"),
    (["--budget", "2", "--epochs", "3"], 2, "--budget and --epochs"),
    (["--budget", "0.0001", "--method", "pgd"], 2, "pays for no update"),
    (["--val", "-3"], 2, "--val must be an integer >= 1"),
    (["--val", "99999"], 2, "--val must be between 1 and 1398"),
    (["--select", "best-robust"], 2, "needs a validation set"),
])
def test_train_errors(tmp_path, capsys, args, code, message):
    if "cuda" in args[1] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    got, _, err = run([*TRAIN, *args, "--out", out], capsys)
    assert got == code and one_line(err) and message in err, err
    assert not out.exists()  # nothing written, no folder left


@pytest.mark.parametrize("text, message", [
    ("epochs: ten\n", "epochs must be an integer, got 'ten'"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("lr: [0.1\n", "not valid YAML"),
    ("colour: red\n", "unknown setting 'colour'"),
])
def test_config_file_errors_name_the_file(tmp_path, capsys, text, message):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    code, _, err = run([*TRAIN, "--config", conf, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line(err) and message in err
    assert str(conf) in err  # (epochs: ten once did not say which file)


def test_a_run_config_that_is_a_list(finished, capsys):
    (finished / "config.yaml").write_text("- 1\n")
    code, _, err = run([*TRAIN, "--resume", "--out", finished], capsys)
    assert code == 2 and one_line(err) and "config.yaml" in err


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("under", "is a file")])
def test_out_that_is_a_file(tmp_path, capsys, where, message):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "run"
    code, _, err = run([*TRAIN, "--out", out], capsys)
    assert code == 2 and one_line(err) and message in err


@pytest.fixture
def unwritable(tmp_path):
    """A folder where no file can be created: a read-only folder, or for root (whom the
    permission bits do not stop) /sys, where os.access says yes and a write fails."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "x").touch()
    except OSError:
        yield folder
    else:
        (folder / "x").unlink()
        sys_dir = Path("/sys")
        if not (sys_dir.is_dir() and os.access(sys_dir, os.W_OK)):
            pytest.skip("no folder here refuses root's writes")
        yield sys_dir
    finally:
        folder.chmod(0o755)


def test_read_only_out(unwritable, capsys):
    code, _, err = run([*TRAIN, "--out", unwritable / "run"], capsys)
    assert code == 1 and one_line(err) and "cannot write into --out" in err


def _boom(*_, **__):
    raise AssertionError("work started before the output path was checked")


@pytest.mark.parametrize("command, work", [
    ("train", "erat.train._run"),
    ("eval", "erat.assess.run_inputs"),
    ("energy", "erat.assess.run_inputs"),
    ("bench", "erat.bench.run_bench"),
    ("report", "erat.report.read_results"),
    ("reproduce", "erat.reproduce.run_one"),
])
def test_every_output_path_is_checked_before_any_work(finished, unwritable, capsys,
                                                        monkeypatch, command, work):
    """Each command's output (--out, --json) in a folder where no file can be created is
    refused in one line before the command's work starts (the work is replaced by a failure),
    and the check creates no folder."""
    module, name = work.rsplit(".", 1)
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, _boom)
    target = unwritable / "new" / "out.json"
    args = {"train": [*TRAIN, "--out", unwritable / "new"],
            "eval": ["eval", finished, "--n", "20", "--json", target],
            "energy": ["energy", finished, "--eps", "0.5", "--json", target],
            "bench": ["bench", "--no-attacks", "--json", target],
            "report": ["report", finished, "--out", unwritable / "new"],
            "reproduce": ["reproduce", "digits", "--out", unwritable / "new"]}[command]
    code, _, err = run(args, capsys)
    assert code == 1 and one_line(err) and str(unwritable / "new") in err, err
    assert not (unwritable / "new").exists()


def test_the_output_check_creates_nothing(tmp_path):
    from erat.files import check_writable_dir, check_writable_file

    check_writable_file(tmp_path / "a" / "b" / "e.json", "--json")
    check_writable_dir(tmp_path / "c", "--out")
    assert not list(tmp_path.iterdir())


def test_disk_full_during_a_checkpoint(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(erat.files.os, "fsync", full)
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--out", out], capsys)
    assert code == 1 and one_line(err) and "No space left" in err
    assert not out.exists()  # failed before its first epoch: no temporaries, no folder


def test_disk_full_inside_torch_save(tmp_path, capsys, monkeypatch):
    """torch.save reports a failed write as a RuntimeError raised while handling the
    OSError; the one line still says what happened."""
    def full(obj, f, *a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    monkeypatch.setattr(torch, "save", full)
    code, _, err = run([*TRAIN, "--out", tmp_path / "run"], capsys)
    assert code == 1 and one_line(err) and "No space left" in err


def test_a_signal_inside_torch_save(tmp_path, capsys, monkeypatch):
    """A SIGINT that lands inside torch.save's zip writer surfaces as the writer's
    RuntimeError ("unexpected pos"); it is still an interruption: exit 130, one line with the
    resume hint, no temporary file left (seen once in 12 signals at a random moment)."""
    def interrupted(obj, f, *a, **k):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", interrupted)
    code, _, err = run([*TRAIN, "--out", tmp_path / "run"], capsys)
    assert code == 130 and err.startswith("erat: interrupted") and err.count("\n") == 1
    assert "--resume" in err and not list((tmp_path / "run").glob(".*.pt.*"))


def test_eval_of_a_read_only_run_and_unwritable_json(finished, tmp_path, capsys, monkeypatch):
    import erat.rundir

    real = erat.rundir.writable  # root can write anywhere: fake a read-only run folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(erat.rundir, "writable", lambda p: False if str(p).startswith(
        str(finished)) else real(p))
    code, out, err = run(["eval", finished, "--n", "20", "--steps", "2", "--no-checks"], capsys)
    assert code == 0, err
    assert not list(finished.glob(".eval*")) and list((tmp_path / "cache").rglob("*.state.pt"))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, _, err = run(["eval", finished, "--n", "20", "--json", blocker / "e.json"], capsys)
    assert code == 2 and one_line(err) and "--json" in err  # before any attack work


def test_eval_errors(finished, capsys):
    code, _, err = run(["eval", finished, "--n", "999999"], capsys)
    assert code == 2 and one_line(err) and "--n must be between 1 and 360" in err
    if not torch.cuda.is_available():
        code, _, err = run(["eval", finished, "--device", "cuda"], capsys)
        assert code == 1 and one_line(err) and "no CUDA GPU" in err


def test_eval_without_pyautoattack_says_so_before_attacking(finished, tmp_path, capsys,
                                                              monkeypatch):
    import erat.evaluate

    real = erat.evaluate.find_spec
    monkeypatch.setattr(erat.evaluate, "find_spec",
                        lambda name: None if name == "pyautoattack" else real(name))
    out = tmp_path / "e.json"
    code, _, err = run(["eval", finished, "--n", "20", "--json", out], capsys)
    assert code == 1 and one_line(err) and "masking check (Square) needs pyautoattack" in err
    code, _, err = run(["eval", finished, "--n", "20", "--attack", "autoattack", "--no-checks",
                        "--json", out], capsys)
    assert code == 1 and one_line(err) and "--attack autoattack needs pyautoattack" in err
    assert not out.exists() and not list(finished.glob(".eval*"))  # nothing attacked or written
    code, _, err = run(["eval", finished, "--n", "20", "--steps", "2", "--no-checks"], capsys)
    assert code == 0, err  # PGD alone needs nothing more


def test_report_errors(finished, tmp_path, capsys):
    (finished / "eval.json").write_text(json.dumps({"clean_acc": 0.9}))
    code, _, err = run(["report", finished, "--out", tmp_path / "rep"], capsys)
    assert code == 2 and one_line(err) and "not an erat evaluation result" in err
    (finished / "eval.json").write_text("{not json")
    code, _, err = run(["report", finished, "--out", tmp_path / "rep"], capsys)
    assert code == 2 and one_line(err) and "not valid JSON" in err
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run(["report", finished, "--out", f], capsys)
    assert code == 2 and one_line(err) and "is a file" in err
    (tmp_path / "suite" / "runs").mkdir(parents=True)  # (it told to eval the suite folder)
    code, _, err = run(["report", tmp_path / "suite", "--out", tmp_path / "rep"], capsys)
    assert code == 2 and one_line(err) and "is a suite's report folder, not a run" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    for args in (["--debug", *TRAIN], [*TRAIN, "--debug"]):
        with pytest.raises(ValueError):
            main([*args, "--labels", "0", "--out", str(tmp_path / "run")])


def test_interrupt_during_a_save_leaves_no_temporary(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = torch.save

    def interrupted(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save: metrics written, checkpoint half-written
            f.write(b"partial")
            raise KeyboardInterrupt
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", interrupted)
    cfg = TrainConfig.from_dict(dict(dataset="digits", model_kwargs={"hidden": [16]}, epochs=3,
                      epoch_updates=2, progress=False))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=lambda *_: None)
    run_dir = tmp_path / "run"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(torch, "save", real)
    train(cfg, run_dir, resume=True, log=lambda *_: None)
    assert RunDir(run_dir).finished()


def test_a_lock_never_appears_empty(tmp_path, monkeypatch):
    """The lock was created empty and written after: a second writer reading it in between
    took it for a dead holder's and took it over (two writers held it)."""
    import erat.rundir

    seen = []
    real_link = os.link

    def watch(src, dst, *a, **k):  # (what a reader sees the moment the lock exists)
        real_link(src, dst, *a, **k)
        seen.append(Path(dst).read_text())

    monkeypatch.setattr(erat.rundir.os, "link", watch)
    with RunDir(tmp_path / "run").lock():
        assert json.loads(seen[0])["pid"] == os.getpid()
        assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]  # (no temporary)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
def test_a_signal_gives_one_line_a_resume_hint_and_no_stale_lock(tmp_path, sig, code, word):
    out = tmp_path / "run"
    # far more epochs than can finish before the signal (200 took 1.5 s on a loaded machine:
    # the run ended first and the test flaked); the process is killed if it outlives the test
    cmd = [sys.executable, "-m", "erat", *TRAIN, "--epochs", "20000", "--out", str(out)]
    # (a test run started in the background inherits an ignored SIGINT: give it back)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                for s in (signal.SIGINT, signal.SIGTERM)])
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and "Traceback" not in err and word in err
    assert f"erat train --out {out} --resume" in err and err.count("\n") == 1
    assert not (out / ".lock").exists()


def test_an_error_after_a_signal_is_the_signal(monkeypatch, capsys):
    """An import cut by Ctrl-C can fail later as another error (numpy: "cannot load module
    more than once per process"): it is reported as the interruption, not as a traceback."""
    def cut_import(commands=None):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # (the handler raises here)
        except KeyboardInterrupt:
            pass  # (swallowed half-way, as a C extension's import may)
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr("erat.cli.build_parser", cut_import)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["train"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == "erat: interrupted\n"
    monkeypatch.setenv("ERAT_DEBUG", "1")  # debugging: the error behind the interruption
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(ImportError):
            main(["train"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert erat.errors.reported(ImportError("x"), []) is None  # (without a signal: a bug)
    assert erat.errors.reported(SystemExit(2), [KeyboardInterrupt()]) is None


@pytest.mark.parametrize("command, target, says", [
    (["eval", "RUN"], "erat.assess.evaluate_run", "; the same command continues the evaluation"),
    (["eval", "RUN", "--fresh"], "erat.assess.evaluate_run", ""),  # (it would start over)
    (["eval", "model.pt"], "erat.assess.evaluate_run", ""),  # (a file keeps no state)
    (["reproduce", "digits"], "erat.reproduce.reproduce", "; the same command continues the "
                                                          "suite"),
])
def test_an_interrupted_eval_or_suite_says_how_to_go_on(monkeypatch, capsys, tmp_path, command,
                                                        target, says):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    monkeypatch.setattr("erat.assess.default_threat", lambda *a: ("l2", [0.5]))
    assert main([str(tmp_path) if a == "RUN" else a for a in command]) == 130
    assert capsys.readouterr().err == f"erat: interrupted{says}\n"


def test_a_missing_run_folder_is_named_as_missing(tmp_path, capsys):
    """``erat eval`` of a folder that does not exist asked whether the run was finished;
    ``erat report`` of one said to run ``erat eval`` on it."""
    missing = tmp_path / "nonexist"
    assert main(["eval", str(missing)]) == 2
    assert f"no such run folder or model file: {missing}" in capsys.readouterr().err
    assert main(["report", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert f"no such run folder: {missing}" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2  # (a folder without model.pt: as before)
    assert "no model.pt (is the run finished?)" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    for cmd in (["train", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            main(cmd)
        text = capsys.readouterr().out
        assert "(default:" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert all(cmd in top for cmd in ("train", "eval", "energy", "report", "reproduce", "bench"))


def test_an_interruption_before_the_first_epoch_leaves_nothing_to_resume(tmp_path, capsys,
                                                                         monkeypatch):
    """Ctrl-C before the first epoch ends: the folder is left as it was (here: not there),
    and the message offers no --resume that would find no run."""
    import erat.train

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(erat.train, "fit", interrupted)
    out = tmp_path / "new" / "run"
    code, _, err = run([*TRAIN, "--out", out], capsys)
    assert code == 130 and "interrupted" in err and "--resume" not in err, err
    assert not (tmp_path / "new").exists()


def test_a_budget_too_small_for_its_epochs_says_so(tmp_path, capsys):
    code, out, err = run([*TRAIN, "--method", "er", "--budget", "0.5", "--budget-epochs", "50",
                          "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert re.search(r"note: --budget 0.5 pays for (\d+) updates?: \1 epochs?, not "
                     r"--budget-epochs 50", out + err)


def test_a_resume_from_an_earlier_checkpoint_counts_each_epoch_once(tmp_path, capsys):
    """Killed between an epoch's metrics line and its checkpoint, a run resumed from the
    epoch before: the line already written stayed in memory beside the epoch trained
    again, and train_seconds counted that epoch twice."""
    import shutil

    out = tmp_path / "run"
    assert run([*TRAIN, "--epochs", "3", "--stop-after", "1", "--out", out], capsys)[0] == 0
    shutil.copy(out / "checkpoint.pt", tmp_path / "epoch1.pt")
    assert run([*TRAIN, "--epochs", "3", "--resume", "--stop-after", "2", "--out", out],
               capsys)[0] == 0
    shutil.copy(tmp_path / "epoch1.pt", out / "checkpoint.pt")  # (the kill: line 2, no state)
    assert run([*TRAIN, "--epochs", "3", "--resume", "--out", out], capsys)[0] == 0
    rows = RunDir(out).metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    meta = RunDir(out).read_meta()
    assert meta["train_seconds"] == pytest.approx(sum(r["seconds"] for r in rows), abs=2e-3)


def test_model_last_is_written_before_model_pt_which_marks_the_run_finished(tmp_path, capsys,
                                                                            monkeypatch):
    """A kill between the two left a finished run (model.pt) without model-last.pt, and a
    resume said there was nothing to do."""
    written = []
    real = RunDir.save_model

    def record(self, *a, last=False, **k):
        written.append("model-last.pt" if last else "model.pt")
        return real(self, *a, last=last, **k)

    monkeypatch.setattr(RunDir, "save_model", record)
    out = tmp_path / "run"
    args = [*TRAIN, "--method", "at", "--eps", "1", "--epochs", "4", "--val", "100",
            "--select", "best-robust", "--lr", "3", "--out", out]  # (a blow-up: an early best)
    assert run(args, capsys)[0] == 0
    assert written == ["model-last.pt", "model.pt"]


def test_a_run_folder_removed_while_training_is_not_made_again(tmp_path):
    """A folder deleted mid-run came back from the next epoch's write holding part of a run
    (no config.yaml, metrics from the middle) that a suite reported as finished; the writes
    under the lock now stop, exit 1's error, and make no folder."""
    import shutil

    from erat.errors import EnvironmentProblem

    run = RunDir(tmp_path / "r")
    with run.lock():
        run.append_metrics({"epoch": 1})
        shutil.rmtree(tmp_path / "r")
        for write in (lambda: run.append_metrics({"epoch": 2}),
                      lambda: run.save_checkpoint({}),
                      lambda: run.save_model({}, dataset="d", model_name="m", model_kwargs={},
                                             in_shape=(1,), num_classes=2, mean=(0.0,),
                                             std=(1.0,), method={})):
            with pytest.raises(EnvironmentProblem, match="r was removed while this run trained"):
                write()
    assert not (tmp_path / "r").exists()
    run.append_metrics({"epoch": 1})  # (no lock held: a library caller's folder, as before)
    assert run.metrics() == [{"epoch": 1}]
