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
        from erat.suites import load_suite, run_config
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
            "SECONDS_LEFT": "200", "TMPDIR": str(tmp_path)}  # (the scripts' mktemp: here)
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


def _row(method: str, fast: bool, ms: float, rate: float, batch: int = 128) -> dict:
    return {"method": method, "fast": fast, "compiled": fast, "batch_size": batch,
            "ms_per_step": ms, "images_per_s": batch / ms * 1e3, "rate_fraction": rate,
            "epoch_50k_s": 50_000 / batch * ms / 1e3, "kernels_per_step": 40 if fast else 900,
            "device_busy": 0.9 if fast else 0.3, "cudagraph_skips": 0}


def test_the_gpu_summary_judges_the_targets_and_says_what_is_missing(tmp_path):
    """benchmarks/gpu_summary.py turns a session's gpu.tgz into the issue's tables: each
    target met or missed on its own figure; what a stage did not write is said."""
    import tarfile

    w = tmp_path / "w"
    (w / "curve-off").mkdir(parents=True)
    (w / "curve-on").mkdir()
    rows = [_row("erm", True, 2.0, 0.3), _row("erm", False, 7.9, 0.08),
            _row("pgd:steps=10", True, 19.0, 0.3), _row("pgd:steps=10", False, 54.0, 0.1),
            {"method": "vat", "fast": True, "error": "BackendCompilerFailed: boom"}]
    bench = {"complete": False, "device": "cuda", "torch": "2.11.0", "matrix_tflops": 790.0,
             "models": {"preact-resnet18": {"rows": rows}}}
    (w / "bench-128.json").write_text(json.dumps(bench))
    rest = {**bench, "complete": True, "models": {"preact-resnet18": {"rows": [
        _row("erm", True, 2.1, 0.3), _row("at", True, 4.0, 0.3), _row("at", False, 16.0, 0.1),
        {"method": "er:S=3", "fast": True, "error": "capture failed",
         "ms_per_step": float("nan")}]}}}
    (w / "bench-128-rest.json").write_text(json.dumps(rest))  # (its ERM: the first stage's)
    big = {**bench, "complete": True, "models": {"m": {"rows": [_row("erm", True, 5, 0.45, 512)]}}}
    (w / "bench-512.json").write_text(json.dumps(big))
    for fast, losses in (("off", [2.3, 2.1, 1.9]), ("on", [2.3, 2.12, 1.93])):
        (w / f"curve-{fast}" / "metrics.jsonl").write_text("\n".join(
            json.dumps({"epoch": i + 1, "train_loss": v}) for i, v in enumerate(losses)))
    for name, fast, acc in (("pgd3", "off", 0.40), ("pgd3", "on", 0.38), ("er3", "on", 0.41),
                            ("er3-on-pgd-graphs", "1", 0.41), ("er3-on-pgd-graphs", "2", 0.412)):
        (w / f"{name}-{fast}{'-pgd' if len(fast) > 1 else ''}.json").write_text(json.dumps(
            {"clean_acc": 0.6, "robust_acc": {"pgd-l2-eps0.5": acc},
             "robust_count": {"pgd-l2-eps0.5": round(acc * 1000)}}))
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(out / "gpu.tgz", "w:gz") as tar:
        tar.add(w, arcname=".")
    (out / "session.log").write_text("graph-captured eval 1: exit 0, 31.2 s\n"
                                     "graph-captured eval 2: exit 0, 4.0 s\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"),
                           str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Batch 128 (cut short: rows measured so far) (eager: float32 with cuDNN" in text
    assert "| erm | 7.9 | 2.0 | 3.95 | 64000 | 30.0 | 0.8 | 40 | 90 | 0 |" in text
    assert "| vat | — | BackendCompilerFailed: boom |" in text  # its error, in its row
    assert "| at | 16.0 | 4.0 | 4.00 |" in text and "| erm | 7.9 | 2.1" not in text
    assert "| erm <= 2.5 ms (batch 128, fast) | 2.00 | met |" in text
    assert "| pgd:steps=10 <= 18.0 ms (batch 128, fast) | 19.00 | missed |" in text
    assert "| er:S=3 <= 12.0 ms (batch 128, fast) | error: capture failed | — |" in text
    assert "| ERM >= 40% of the bf16 rate (batch 512, fast) | 45.0 % | met |" in text
    assert "| pgd3: fast within 1.5 points of eager (PGD-l2 0.5) | 2.0 points | missed |" in text
    assert "| er3: fast within 1.5 points of eager | — | — |" in text  # its eager run is missing
    assert "Largest gap 0.030, last 0.030." in text and "| er3 | — | — | 0.600 | 0.410 |" in text
    assert ("run 1 31.2 s (exit 0), run 2 4.0 s (exit 0); against the eager evaluator, run 1: "
            "0 example(s) apart and run 2: 2 example(s) apart (within the 3") in text
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"),
                          str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
