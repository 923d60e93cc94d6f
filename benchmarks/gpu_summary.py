"""The figures of one `benchmarks/gpu_session.sh` call as markdown, against issue 24's targets.

Usage: python benchmarks/gpu_summary.py DIR   (DIR: the call's $OUT, holding gpu.tgz and
session.log, or a folder where gpu.tgz was unpacked). Prints:
- the device, torch and the card's measured bf16 matrix rate;
- per method at batch 128 (the targets' stage and the other methods', merged): eager
  float32 and fast-path ms per step, the speed-up, images/s,
  the fraction of the matrix rate reached, a 50,000-image epoch, the profile (kernels per
  step, device-busy share) and CUDA-graph skips; ERM at batch 512;
- the targets (ERM <= 2.5 ms, PGD-AT-10 <= 18 ms, ER S 3 <= 12 ms at batch 128; ERM at
  >= 40 % of the rate at 512; fast against eager robust accuracy within 1.5 points), each
  met or missed;
- the 100-update loss curves, fast against eager; the cifar10-subset runs side by side; the
  graph-captured evaluation's two times.
What a stage cut by its deadline did not write is said, not guessed.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path

TARGETS_MS = {"erm": 2.5, "pgd:steps=10": 18.0, "er:S=3": 12.0}  # batch 128, fast path
RATE_TARGET, ACC_POINTS = 0.40, 1.5


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(bench: dict | None) -> list[dict]:
    return [r for m in (bench or {}).get("models", {}).values() for r in m.get("rows", [])]


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def merged(first: dict | None, rest: dict | None) -> dict | None:
    """The batch-128 bench of the targets (``first``) with the other methods' rows of a
    later stage (``rest``; its ERM rows, measured again as its baseline, are left out)."""
    if first is None or rest is None:
        return first or rest
    seen = {(r["method"], bool(r.get("fast") or r.get("compiled"))) for r in _rows(first)}
    extra = [r for r in _rows(rest)
             if (r["method"], bool(r.get("fast") or r.get("compiled"))) not in seen]
    name = next(iter(first.get("models") or {"preact-resnet18": {}}))
    models = {name: {**first["models"].get(name, {}), "rows": _rows(first) + extra}}
    return {**first, "models": models,
            "complete": bool(first.get("complete") and rest.get("complete"))}


def bench_table(bench: dict | None, batch: int) -> list[str]:
    """One row per method: eager float32 against the fast path."""
    if bench is None:
        return [f"(no bench at batch {batch}: its stage did not write bench-{batch}.json)"]
    by = {}
    for r in _rows(bench):
        fast = r.get("fast") or r.get("compiled")  # (compiled: a CPU rehearsal's stand-in)
        by.setdefault(r["method"], {})["fast" if fast else "eager"] = r
    out = [f"Batch {batch}{'' if bench.get('complete') else ' (cut short: rows measured so far)'}"
           " (eager: float32 with cuDNN's TF32 convolutions, torch's default; % of rate: "
           "overstated for the methods with a search, whose backward passes compute no weight "
           "gradients):", "",
           "| method | eager ms | fast ms | speed-up | fast img/s | % of rate | 50k epoch s "
           "| kernels/step | device busy | graph skips |", "|---" * 10 + "|"]
    for method, pair in by.items():
        e, f = pair.get("eager", {}), pair.get("fast", {})
        if "error" in f or "error" in e:
            out.append(f"| {method} | {e.get('error') or _f(e.get('ms_per_step'))} | "
                       f"{f.get('error') or _f(f.get('ms_per_step'))} |" + " |" * 7)
            continue
        speed = e["ms_per_step"] / f["ms_per_step"] if e.get("ms_per_step") and \
            f.get("ms_per_step") else None
        rate = f.get("rate_fraction")
        busy = f.get("device_busy")
        out.append(f"| {method} | {_f(e.get('ms_per_step'))} | {_f(f.get('ms_per_step'))} | "
                   f"{_f(speed, '.2f')} | {_f(f.get('images_per_s'), '.0f')} | "
                   f"{_f(None if rate is None else 100 * rate)} | "
                   f"{_f(f.get('epoch_50k_s'))} | "
                   f"{f.get('profile_error') or _f(f.get('kernels_per_step'), '.0f')} | "
                   f"{_f(None if busy is None else 100 * busy, '.0f')} | "
                   f"{f.get('cudagraph_skips', '—')} |")
    return out + [""]


def targets(b128: dict | None, b512: dict | None, runs: dict) -> list[str]:
    """Each target of the issue, met or missed, with the figure it was judged on."""
    fast = {r["method"]: r for r in _rows(b128)
            if (r.get("fast") or r.get("compiled")) and "ms_per_step" in r}
    out = ["| target | measured | |", "|---|---|---|"]
    for method, limit in TARGETS_MS.items():
        row = fast.get(method, {})
        ms = row.get("ms_per_step")
        if "error" in row:  # (a failed capture: its NaN is no figure)
            out.append(f"| {method} <= {limit} ms (batch 128, fast) | error: {row['error']} "
                       "| — |")
            continue
        out.append(f"| {method} <= {limit} ms (batch 128, fast) | {_f(ms, '.2f')} | "
                   f"{'—' if ms is None else 'met' if ms <= limit else 'missed'} |")
    erm = next((r for r in _rows(b512) if (r.get("fast") or r.get("compiled"))
                and r["method"] == "erm" and "error" not in r), {})
    rate = erm.get("rate_fraction")
    out.append(f"| ERM >= {RATE_TARGET:.0%} of the bf16 rate (batch 512, fast) | "
               f"{_f(None if rate is None else 100 * rate)} % | "
               f"{'—' if rate is None else 'met' if rate >= RATE_TARGET else 'missed'} |")
    for name, (eager, fast_run) in runs.items():
        if eager is None or fast_run is None:
            out.append(f"| {name}: fast within {ACC_POINTS} points of eager | — | — |")
            continue
        gap = 100 * abs(_robust(fast_run) - _robust(eager))
        out.append(f"| {name}: fast within {ACC_POINTS} points of eager (PGD-l2 0.5) | "
                   f"{gap:.1f} points | {'met' if gap <= ACC_POINTS else 'missed'} |")
    return out + [""]


def _robust(result: dict) -> float:
    return next(iter(result["robust_acc"].values()))


def curves(root: Path) -> list[str]:
    """The 100-update loss curves of ER S 3, fast against eager (the same batches)."""
    losses = {}
    for fast in ("off", "on"):
        file = root / f"curve-{fast}" / "metrics.jsonl"
        rows = [json.loads(line) for line in file.read_text().splitlines()] \
            if file.is_file() else []
        losses[fast] = [r["train_loss"] for r in rows if "train_loss" in r]
    n = min(len(losses["off"]), len(losses["on"]))
    if n == 0:
        return ["(no loss curves: a stage did not finish)", ""]
    gaps = [abs(a - b) for a, b in zip(losses["off"][:n], losses["on"][:n], strict=True)]
    return ["ER S 3, 100 updates from one seed on the same batches, mean loss per 5 updates "
            f"({n} of 20 epochs both ways):", "",
            "| epoch | " + " | ".join(str(i + 1) for i in range(n)) + " |",
            "|---" * (n + 1) + "|",
            "| eager | " + " | ".join(f"{v:.3f}" for v in losses["off"][:n]) + " |",
            "| fast | " + " | ".join(f"{v:.3f}" for v in losses["on"][:n]) + " |", "",
            f"Largest gap {max(gaps):.3f}, last {gaps[-1]:.3f}.", ""]


def side_by_side(runs: dict) -> list[str]:
    out = ["| run | eager clean | eager PGD-l2 0.5 | fast clean | fast PGD-l2 0.5 |",
           "|---|---|---|---|---|"]
    for name, (eager, fast) in runs.items():
        cells = [f"{r['clean_acc']:.3f} | {_robust(r):.3f}" if r else "— | —"
                 for r in (eager, fast)]
        out.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return out + [""]


def _examples_apart(a: dict, b: dict) -> int:
    """The largest difference in robust examples between two evaluations' radii (GPU
    kernels round differently: a few borderline examples may flip over 50 steps)."""
    a, b = a["robust_count"], b["robust_count"]
    return max((abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)), default=0)


def summary(root: Path, log: str) -> str:
    b128 = merged(_load(root / "bench-128.json"), _load(root / "bench-128-rest.json"))
    b512 = _load(root / "bench-512.json")
    runs = {name: (_load(root / f"{name}-off-pgd.json"), _load(root / f"{name}-on-pgd.json"))
            for name in ("pgd3", "er3")}
    head = b128 or b512 or {}
    out = [f"Device {head.get('device', '?')}, torch {head.get('torch', '?')}, matrix rate "
           f"{_f(head.get('matrix_tflops'), '.3g')} TFLOP/s (measured in the run).", ""]
    out += bench_table(b128, 128) + bench_table(b512, 512) + targets(b128, b512, runs)
    out += curves(root) + side_by_side(runs)
    times = re.findall(r"graph-captured eval (\d): exit (\d+), ([0-9.]+) s", log)
    graphs = [_load(root / f"er3-on-pgd-graphs-{i}.json") for i in (1, 2)]
    eager = runs["er3"][1]
    apart = [_examples_apart(g, eager) for g in graphs] if all(graphs) and eager else []
    out.append("Graph-captured evaluation of er3 fast: " + (", ".join(
        f"run {i} {t} s (exit {c})" for i, c, t in times) or "not run") +
        ("; against the eager evaluator, " + " and ".join(
            f"run {i}: {d} example(s) apart" for i, d in enumerate(apart, 1)) + (
            " (within the 3 that kernels' rounding may flip)" if max(apart) <= 3 else
            " (more than the 3 that kernels' rounding may flip)") if apart
         else "; accuracies missing"))
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/gpu_summary.py DIR (the call's $OUT or an unpacked "
              "gpu.tgz)", file=sys.stderr)
        return 2
    root = Path(argv[0])
    log_file = root / "session.log"
    log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    if (root / "gpu.tgz").is_file():
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(root / "gpu.tgz") as tar:
            tar.extractall(tmp, filter="data")
            print(summary(Path(tmp), log), end="")
    else:
        print(summary(root, log), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
