"""Every failure a user can cause or meet, tried through the ``erat`` command as a user would,
printed as the Markdown table of docs/results/reliability.md: exit code, the message, and
whether any earlier result was lost or changed.

    python experiments/reliability_cases.py            # about two minutes on a CPU

Run as root on Linux, it also mounts a 300 KB tmpfs (a full disk) and a read-only bind mount
(a read-only run folder), otherwise those two rows say they were skipped; the output paths
where no file can be created are under /sys as root (os.access says yes there), else in a
read-only folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ERAT = [sys.executable, "-m", "erat"]
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs",
         '{"hidden": [16]}', "--epoch-updates", "3", "--no-progress"]
ROWS: list[tuple[str, int, str, str]] = []


def erat(*args: str, env: dict | None = None) -> tuple[int, str]:
    p = subprocess.run([*ERAT, *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    lines = [ln for ln in p.stderr.splitlines() if ln.split(":")[0] in ("erat", *(
        f"erat {c}" for c in ("train", "eval", "energy", "report", "reproduce", "bench")))]
    return p.returncode, (lines[-1] if lines else p.stdout.strip().splitlines()[-1])


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != ".lock":
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def case(name: str, args: list[str], guard: Path | None = None, env: dict | None = None) -> None:
    before = digest(guard) if guard is not None and guard.exists() else None
    code, msg = erat(*args, env=env)
    lost = "none" if before is None or digest(guard) == before else "CHANGED"
    ROWS.append((name, code, msg, lost))


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="erat-reliability-"))
    run = root / "erm"
    assert erat(*TRAIN, "--epochs", "2", "--out", str(run))[0] == 0
    case("`--resume` with another method", [*TRAIN, "--resume", "--method", "at", "--eps",
                                            "1", "--out", str(run)], run)
    case("`--resume --epochs 1` on a 2-epoch run", [*TRAIN, "--resume", "--epochs", "1",
                                                    "--out", str(run)], run)
    case("`--resume` with another model", [*TRAIN, "--resume", "--model", "cnn", "--out",
                                           str(run)], run)
    case("`--resume` of a finished run, same settings", [*TRAIN, "--resume", "--epochs", "2",
                                                          "--out", str(run)], run)
    case("`--resume` into a mistyped folder", [*TRAIN, "--resume", "--out", str(root / "ern")])
    (run / "eval.json").write_text("{}")
    case("train into a finished run (model.pt, eval.json)", [*TRAIN, "--out", str(run)], run)
    case("train into a folder that a live process writes", _locked(root), None)
    f = root / "file"
    f.write_text("x")
    case("`--out` is a file", [*TRAIN, "--out", str(f)])
    case("`--out` under a file", [*TRAIN, "--out", str(f / "run")])
    case("`--device cuda` without a GPU", [*TRAIN, "--device", "cuda", "--out", str(root / "g")])
    for text, label in [("epochs: ten\n", "`epochs: ten` in `--config`"),
                        ("- 1\n", "a `--config` that is a list"),
                        ("lr: [0.1\n", "a `--config` with a YAML error")]:
        conf = root / "c.yaml"
        conf.write_text(text)
        case(label, [*TRAIN, "--config", str(conf), "--out", str(root / "c")])
    case("`--model-kwargs '{\"hidden\": [-5]}'`", [*TRAIN, "--model-kwargs", '{"hidden": [-5]}',
                                                  "--out", str(root / "k")])
    for flags, label in [(["--labels", "0"], "`--labels 0`"),
                         (["--method", "pgd", "--steps", "0"], "`pgd --steps 0`"),
                         (["--method", "vat", "--power-iters", "0"], "`vat --power-iters 0`"),
                         (["--stop-after", "0"], "`--stop-after 0`"),
                         (["--budget", "4", "--epochs", "2"], "`--budget` with `--epochs`"),
                         (["--budget", "0.001", "--method", "pgd"], "a budget below one update"),
                         (["--val", "99999"], "`--val` larger than the training set")]:
        case(label, [*TRAIN, *flags, "--out", str(root / "bad")])
    case("`eval --n 999999`", ["eval", str(run), "--n", "999999"], run)
    case("`eval --device cuda` without a GPU", ["eval", str(run), "--device", "cuda"], run)
    case("`eval --json` under a file", ["eval", str(run), "--n", "20", "--json",
                                        str(f / "e.json")], run)
    (run / "eval.json").write_text(json.dumps({"clean_acc": 0.9}))
    case("`report` of an eval.json without robust_acc", ["report", str(run), "--out",
                                                         str(root / "rep")], run)
    case("`report --out` naming a file", ["report", str(run), "--out", str(f)], run)
    _outputs(root, run)
    _console(root, run)
    _trial(root, run)
    _mounted(root, run)
    _interrupted(root)
    print("| case | exit | message | earlier results lost |")
    print("|---|---|---|---|")
    for name, code, msg, lost in ROWS:
        print(f"| {name} | {code} | {msg.replace('|', '/')} | {lost} |")


def _unwritable(root: Path) -> Path:
    """A folder where no file can be created: a read-only folder, or for root (whom the
    permission bits do not stop) /sys, where os.access says yes and a write fails."""
    folder = root / "ro-bits"
    folder.mkdir()
    folder.chmod(0o555)
    return Path("/sys") if os.geteuid() == 0 else folder


def _outputs(root: Path, run: Path) -> None:
    """Every command's output path in a folder where no file can be created: refused in one
    line before the work (eval's attacks, the suite's training)."""
    ro = _unwritable(root)
    (run / "eval.json").unlink(missing_ok=True)
    for label, args in [
        ("`eval --json` where no file can be created", ["eval", str(run), "--json",
                                                         str(ro / "e.json")]),
        ("`energy --json` there", ["energy", str(run), "--eps", "1", "--json",
                                   str(ro / "e.json")]),
        ("`bench --json` there", ["bench", "--json", str(ro / "b.json")]),
        ("`train --out` there", [*TRAIN, "--out", str(ro / "new")]),
        ("`report --out` there", ["report", str(run), "--out", str(ro / "rep")]),
        ("`reproduce --out` there", ["reproduce", "digits", "--out", str(ro / "rep")]),
    ]:
        t0 = time.perf_counter()
        case(label, args, run)
        name, code, msg, lost = ROWS[-1]
        ROWS[-1] = (f"{name} (refused after {time.perf_counter() - t0:.1f} s)", code, msg, lost)


def _console(root: Path, run: Path) -> None:
    """The console cases: a report of nothing, another test set, a failed check, a huge
    --epochs, a resumed run against an uninterrupted one."""
    case("`reproduce --report-only` with nothing finished", ["reproduce", "digits", "--out",
                                                             str(root / "empty"),
                                                             "--report-only"])
    ROWS[-1] = (*ROWS[-1][:3], "none; files written: " + (
        ", ".join(p.name for p in (root / "empty").rglob("*")) if (root / "empty").exists()
        else "none"))
    _idx_folders(root)
    mnist = [*TRAIN[:2], "mnist", *TRAIN[3:], "--batch-size", "16"]
    assert erat(*mnist, "--epochs", "1", "--data-dir", str(root / "idx-a"), "--out",
                str(root / "mn"))[0] == 0
    case("`eval --data-dir` holding another test set", ["eval", str(root / "mn"), "--data-dir",
                                                        str(root / "idx-b")], root / "mn")
    import torch

    masked = root / "masked"
    assert erat(*TRAIN, "--epochs", "1", "--out", str(masked))[0] == 0
    blob = torch.load(masked / "model.pt", weights_only=True)
    blob["state_dict"]["net.1.weight"].zero_()  # no input gradient: a masked model
    torch.save(blob, masked / "model.pt")
    case("`eval` of a model with vanishing gradients (a failed check)",
         ["eval", str(masked), "--n", "40", "--steps", "2", "--json", str(root / "m.json")])
    ROWS[-1] = (*ROWS[-1][:3], "none; result written: " + str((root / "m.json").exists()))
    t0 = time.perf_counter()
    case("`--epochs 1000000000 --stop-after 1`", [*TRAIN, "--epochs", "1000000000",
                                                   "--stop-after", "1", "--out",
                                                   str(root / "huge")])
    ROWS[-1] = (f"{ROWS[-1][0]} ({time.perf_counter() - t0:.1f} s in all)", *ROWS[-1][1:3],
                f"none; .lock left: {(root / 'huge' / '.lock').exists()}")
    hashes = []
    for name, steps in (("whole", [[]]), ("parts", [["--stop-after", "1"], ["--resume"]])):
        for extra in steps:
            code, msg = erat(*TRAIN, "--epochs", "2", *extra, "--out", str(root / name))
            assert code == 0, msg
        hashes.append(torch.load(root / name / "model.pt", weights_only=True)["meta"]
                      ["state_dict_sha256"])
    same = (root / "whole" / "model.pt").read_bytes() == (root / "parts" / "model.pt"
                                                          ).read_bytes()
    ROWS.append(("2 epochs, against 1 + `--resume`", 0, f"state_dict_sha256 equal: "
                 f"{hashes[0] == hashes[1]}; model.pt bytes equal: {same} (train_seconds)",
                 "-"))


def _trial(root: Path, run: Path) -> None:
    """The cases of a new user's trial (2026-12-01): each row says what was left behind."""
    def left(folder: Path) -> str:
        return "none; folder left: " + ("yes" if folder.exists() else "no")

    for name, extra in (("`--labels 5` (10 classes)", ["--labels", "5"]),
                        ("`--method er --eps 100` (8x8 images)", ["--method", "er", "--eps",
                                                                  "100"]),
                        ("`--model-kwargs` naming no parameter", ["--model-kwargs",
                                                                  '{"nope": 1}']),
                        ("`--epochs abc`", ["--epochs", "abc"])):
        case(name, [*TRAIN, *extra, "--out", str(root / "t" / "new")])
        ROWS[-1] = (*ROWS[-1][:3], left(root / "t"))
    case("`eval --eps 0.5,100`", ["eval", str(run), "--eps", "0.5,100"], run)
    case("`eval` with a flag it does not have", ["eval", str(run), "--no-progress"], run)
    (root / "junk.pt").write_text("garbage\n")
    case("`eval` of a text file named .pt", ["eval", str(root / "junk.pt")])
    resumable = root / "resumable"
    assert erat(*TRAIN, "--epochs", "2", "--stop-after", "1", "--out", str(resumable))[0] == 0
    (resumable / "checkpoint.pt").write_text("garbage\n")
    case("`--resume` with an unreadable checkpoint", [*TRAIN, "--epochs", "2", "--resume",
                                                       "--out", str(resumable)], resumable)
    case("`report --landscape-eps -1`", ["report", str(run), "--out", str(root / "rep-l"),
                                         "--landscape-eps", "-1"], run)
    ROWS[-1] = (*ROWS[-1][:3], left(root / "rep-l"))
    suite = root / "escape.yaml"
    suite.write_text("suite: s\ndefaults: {dataset: digits, model: mlp, epochs: 1}\n"
                     "runs: [{name: ../../escape, method: erm}]\n")
    case("a suite run named `../../escape`", ["reproduce", str(suite), "--out",
                                              str(root / "s" / "x")])
    ROWS[-1] = (*ROWS[-1][:3], left(root / "s") + "; escaped: " + str(
        (root / "escape").exists()))
    for name, extra in (("`bench --models mlp:0x8x8`", ["--models", "mlp:0x8x8"]),
                        ("`bench --fast on` on a CPU", ["--fast", "on"]),
                        ("`bench --max-seconds -1`", ["--max-seconds", "-1"])):
        case(name, ["bench", "--methods", "erm", "--steps", "1", *extra])


def _idx_folders(root: Path) -> None:
    """Two MNIST-format folders with the same training set and different test images."""
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), np.arange(64, dtype=np.uint8) % 10
    for name in ("idx-a", "idx-b"):
        (root / name).mkdir()
        test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
        for prefix, images, labels in (("train", x, y), ("t10k", test, y[:20])):
            for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
                head = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
                (root / name / f"{prefix}-{kind}-ubyte").write_bytes(head + a.tobytes())


def _locked(root: Path) -> list[str]:
    out = root / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                           "since": "now", "command": "erat train ..."}))
    return [*TRAIN, "--out", str(out)]


def _mounted(root: Path, run: Path) -> None:
    if os.geteuid() != 0:
        ROWS.append(("disk full / read-only run folder", -1, "skipped (needs root)", "-"))
        return
    full, ro = root / "full", root / "ro"
    full.mkdir()
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(full)], check=True)
    try:
        case("disk full while training (300 KB tmpfs)", [*TRAIN, "--model-kwargs",
             '{"hidden": [400]}', "--out", str(full / "run")])
        left = [p.name for p in (full / "run").iterdir()] if (full / "run").exists() else []
        ROWS.append(("  files left on the full disk", 0, ", ".join(left) or "none", "-"))
    finally:
        subprocess.run(["umount", str(full)], check=False)
    subprocess.run(["mount", "--bind", str(run), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
    try:
        (run / "eval.json").unlink(missing_ok=True)
        case("`eval` of a run on a read-only filesystem", ["eval", str(ro), "--n", "30",
             "--steps", "3"], run, env={"XDG_CACHE_HOME": str(root / "cache")})
        case("`train --out` on a read-only filesystem", [*TRAIN, "--out", str(ro / "new")], run)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def _signal_after_first_epoch(out: Path, sig: int, wait: float = 0.0) -> tuple[int, str]:
    """A training run sent ``sig`` once its first epoch is written: exit code, stderr."""
    proc = subprocess.Popen([*ERAT, *TRAIN, "--epochs", "500", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(wait)
    proc.send_signal(sig)
    _, err = proc.communicate()
    return proc.returncode, err


def _interrupted(root: Path) -> None:
    out = root / "int"
    code, err = _signal_after_first_epoch(out, signal.SIGINT, wait=0.5)
    temps = [p.name for p in out.iterdir() if p.name.startswith(".")]
    ROWS.append(("Ctrl-C while training (checkpoints every epoch)", code,
                 err.strip().splitlines()[-1], f"none; temporaries left: {temps or 'none'}"))
    term = root / "term"
    code, err = _signal_after_first_epoch(term, signal.SIGTERM)
    ROWS.append(("SIGTERM while training", code, err.strip().splitlines()[-1],
                 f"none; .lock left: {(term / '.lock').exists()}"))
    proc = subprocess.Popen([*ERAT, *TRAIN, "--epochs", "500", "--resume", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / ".checkpoint.pt.x1y2z3").write_bytes(b"left by a killed save")
    code, msg = erat(*TRAIN, "--epochs", "500", "--resume", "--stop-after", "1", "--out",
                     str(out))
    temps = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint")]
    ROWS.append(("SIGKILL, then `--resume` (a stale lock and a temporary left)", code, msg,
                 f"none; temporaries left after: {temps or 'none'}"))


if __name__ == "__main__":
    main()
