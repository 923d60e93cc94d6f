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

# the stand-in records its arguments; `-c CODE` (a GPU preflight) is not recorded
STAND_IN = """
import json, sys
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
        for run in suite["runs"]:
            run_config(suite, run, {"device": ns.device})


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_gpu_script_commands_are_what_erat_takes(script, tmp_path):
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
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
