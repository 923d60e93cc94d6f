"""Markdown tables for docs/results.md from ``erat reproduce`` report folders.

    python experiments/tables.py runs/mnist-subset --runs erm,at,vat,pgd,trades,er \
        --columns clean_acc,pgd-l2-eps1,pgd-l2-eps1.5,pgd-l2-eps2,energy_mean,train_s_per_epoch
    python experiments/tables.py runs/mnist-subset --semi sup,vat,vat-entmin,er,er-entmin \
        --labels 100 --seeds 0,1,2
    python experiments/tables.py runs/mnist-subset --runs erm,at,vat,pgd,trades,er \
        --eval eval-all-500.json --columns clean_acc,pgd-l2-eps1.5,all-l2-eps1.5

``--eval FILE`` reads ``RUN/FILE`` (an ``erat eval --json`` output) instead of the suite's
``eval.json``, adding its subset size, failed checks and seconds.

Reads ``REPORT/runs/NAME/eval.json`` (and ``energy.json``, ``metrics.jsonl``) directly, so
it works on a suite still in progress; missing runs are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run_row(folder: Path, eval_file: str = "eval.json") -> dict | None:
    if not (folder / eval_file).exists():
        return None
    ev = json.loads((folder / eval_file).read_text())
    row = {"clean_acc": ev["clean_acc"], **ev["robust_acc"], "checks_failed": ev["checks_failed"],
           "n": ev["threat"]["n"], "eval_seconds": round(ev.get("seconds", 0.0)),
           "failed_checks": ",".join(c["name"] for c in ev["checks"] if not c["passed"]) or "-"}
    if (folder / "energy.json").exists():
        en = json.loads((folder / "energy.json").read_text())
        row |= {k: en[k] for k in ("energy_mean", "at_term_mean", "vat_term_mean",
                                   "certified_frac")}
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    secs = [json.loads(line)["seconds"] for line in lines if line.strip()]
    row["train_s_per_epoch"] = sum(secs) / len(secs)
    return row


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--runs", default="")
    p.add_argument("--columns", default="clean_acc")
    p.add_argument("--semi", default="", help="method prefixes of NAME-LABELS-sSEED runs")
    p.add_argument("--labels", default="100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval", default="eval.json", help="evaluation JSON inside each run")
    args = p.parse_args()
    cols = args.columns.split(",")
    if args.runs:
        print("| run | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name in args.runs.split(","):
            row = run_row(args.report / "runs" / name, args.eval)
            cells = [fmt(row.get(c, "")) for c in cols] if row else ["(not run)"] * len(cols)
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.semi:
        seeds = args.seeds.split(",")
        print("| method | " + " | ".join(f"{c} (mean ± sd over seeds)" for c in cols)
              + " | seeds |")
        print("|---" * (len(cols) + 2) + "|")
        for prefix in args.semi.split(","):
            rows = [run_row(args.report / "runs" / f"{prefix}-{args.labels}-s{s}") for s in seeds]
            rows = [r for r in rows if r]
            cells = []
            for c in cols:
                vals = [r[c] for r in rows if c in r]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}" if vals else "")
            print(f"| {prefix} | " + " | ".join(cells) + f" | {len(rows)} |")


if __name__ == "__main__":
    main()
