"""The GPU scripts (benchmarks/*.sh) run their erat commands as written: each is run by bash
with a stand-in for Python that records every ``python -m erat ...`` line, and each line is
then checked the way erat checks it before any work (flags, settings, suite and run names).
A lent GPU's few minutes are not spent finding a renamed flag."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from erat import cli
from erat.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))

# the stand-in records its arguments; `-c CODE` (a GPU preflight) is not recorded, and a
# script on standard input (`-`: a suite's groups) is run by the real interpreter
STAND_IN = """
import json, os, sys
if sys.argv[1:2] == ["-"]:
    os.execv(REAL, [REAL, *sys.argv[1:]])
if sys.argv[1:2] != ["-c"]:
    with open(sys.argv[0] + ".log", "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def check(args: list[str]) -> None:
    """What ``erat`` checks of ``args`` before any work (a ``UserError`` or argparse's exit
    when refused); a CUDA device is taken as present."""
    assert args[:2] == ["-m", "erat"], args
    ns = cli.build_parser([args[2]]).parse_args(args[2:])
    if ns.command == "bench":
        from erat.bench import BenchOptions
        cli._options(BenchOptions, ns).check(torch.device("cuda"))
    elif ns.command == "eval":
        from erat.attacks import attack_flags
        from erat.evaluate import EvalConfig
        options = {k: getattr(ns, k) for k in attack_flags() if getattr(ns, k) is not None}
        EvalConfig.build(ns.attack, eps=ns.eps, strict=True, **options)
    elif ns.command == "train":
        from erat.config import resolve
        resolve([({k: v for k, v in vars(ns).items() if k not in cli.TRAIN_ONLY}, "flags")])
    elif ns.command == "reproduce":
        from erat.config import load_suite, run_config
        suite = load_suite(ns.suite)
        only = [n for n in (ns.only or "").split(",") if n]
        assert set(only) <= {r["name"] for r in suite["runs"]}, only
        if (ns.suite, ns.device) not in CHECKED:  # (a script runs one suite group by group)
            for run in suite["runs"]:
                run_config(suite, run, {"device": ns.device} if ns.device else {})
            CHECKED.add((ns.suite, ns.device))


CHECKED: set[tuple] = set()


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_gpu_script_commands_are_what_erat_takes(script, tmp_path):
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\nREAL = {sys.executable!r}\n{STAND_IN}")
    stand_in.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ONLY", "PREV", "LIMIT")}
    env |= {"PY": str(stand_in), "OUT": str(tmp_path / "out"), "C10": str(tmp_path / "c10"),
            "SECONDS_LEFT": "60", "TMPDIR": str(tmp_path)}  # (the scripts' mktemp: here)
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    log = tmp_path / "python.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    written = [line for line in script.read_text().splitlines() if "-m erat " in line]
    assert len(lines) >= len(written), done.stdout + done.stderr  # (loops run some twice)
    for args in lines:
        try:
            check(args)
        except (UserError, SystemExit) as err:
            pytest.fail(f"{script.name}: erat {' '.join(args[2:])}: {err!r}")


GROUPED = """
suite: grouped
defaults: {dataset: digits, model: mlp, model_kwargs: {hidden: [8]}, batch_size: 64, val: 200,
           val_n: 40, val_steps: 2, val_eps: 0.5, select: best-robust, budget_epochs: 1,
           progress: false}
runs:
  - {name: v, method: erm, budget: 1, eval: false}
  - {name: a, method: erm, family: f, grid: {budget: [1, 2]}}
  - {name: b, method: erm, lr: 0.03, family: f, budget: 1}
eval: {attack: pgd, eps: [0.5], steps: 2, n: 30, sanity_n: 0}
autoattack: {n: 8, eval: {attack: pgd, eps: [0.5], steps: 3, sanity_n: 0},
             group: [family, budget]}
plots: {landscape: false}
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_the_gpu_suite_script_packs_whole_groups_without_weights(tmp_path):
    """benchmarks/gpu_cifar10_subset.sh on the CPU with a small suite: each group (the runs
    AutoAttack picks its best from) ends with its weights dropped and is packed; the next
    call (here: after a first of the validation runs only, PART=val) unpacks the first call's
    runs.tgz, skips what it holds and runs the rest; a call's report covers every packed
    run."""
    import tarfile

    (tmp_path / "grouped.yaml").write_text(GROUPED)
    env = {k: v for k, v in os.environ.items() if k not in ("ONLY", "PREV", "PART")}
    env |= {"PY": sys.executable, "C10": str(tmp_path / "unused"), "DEVICE": "cpu",
            "SUITE": str(tmp_path / "grouped.yaml"), "OMP_NUM_THREADS": "1"}

    def call(n: int, part: str, prev: Path | None = None) -> tuple[Path, str]:
        out = tmp_path / f"out{n}"
        more = {"OUT": str(out), "RUNS": str(tmp_path / f"runs{n}"), "PART": part,
                "SECONDS_LEFT": "600", **({"PREV": str(prev)} if prev else {})}
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_cifar10_subset.sh")],
                              cwd=ROOT, env=env | more, capture_output=True, text=True,
                              timeout=600)
        return out, done.stdout + done.stderr

    out1, said = call(1, "val")
    assert "group v (budget 1" in said and "group a-budget1" not in said, said
    with tarfile.open(out1 / "runs.tgz") as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == [
            "runs/v/config.yaml", "runs/v/metrics.jsonl", "runs/v/model-meta.json",
            "runs/v/split.json"]
    out2, said = call(2, "all", prev=out1 / "runs.tgz")
    assert "group v " not in said and "group a-budget1,b (budget 1" in said, said
    with tarfile.open(out2 / "runs.tgz") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    assert not [n for n in names if n.endswith(".pt")]
    assert {n.split("/")[1] for n in names} == {"v", "a-budget1", "a-budget2", "b"}
    assert sum(n.endswith("eval-autoattack.json") for n in names) == 2  # one per group
    assert (out2 / "packed.txt").read_text().count("\n") == 4
    assert "| a-budget2 " in (out2 / "results.md").read_text()
