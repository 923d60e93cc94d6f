"""The AutoAttack frontier of a results page, drawn from its table (when the runs behind it
were measured in more than one session and no single report folder holds them all).

Reads the Markdown table under the heading given (columns ``budget | run | clean | ... |
last``: the run as ``name (`run-name`)``, the last column the robust accuracy) and draws
robust and clean accuracy against the budget in ERM epochs with erat's own frontier plot
(:func:`erat.plots.frontier`), one curve per family (the run name's method prefix)::

    python experiments/table_frontier.py docs/results/cifar10-subset.md \\
        "## AutoAttack (standard, l2, at 0.5, all 1,017)" docs/img/cifar10_subset_frontier.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from erat.plots import frontier

FAMILIES = {"pgd": "pgd-at", "trades": "trades", "er": "er", "erm": "erm", "at": "at",
            "vat": "vat", "fastat": "pgd-at"}


def table_rows(text: str, heading: str) -> list[dict]:
    """The rows of the first table after ``heading``: family, budget, clean, robust."""
    lines = text[text.index(heading):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        name = re.search(r"`([^`]+)`", cells[1]).group(1)
        method = re.match(r"[a-z]+", name).group(0)
        rows.append({"name": name, "family": FAMILIES[method], "budget": float(cells[0]),
                     "cost_erm_epochs": float(cells[0]), "clean_acc": float(cells[2]),
                     "robust": float(cells[-1])})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path)
    p.add_argument("heading")
    p.add_argument("out", type=Path)
    p.add_argument("--label", default="aa_all-l2-eps0.5", help="the robust axis' name")
    p.add_argument("--title", default="AutoAttack-l2 at 0.5 (all 1,017 test images) against "
                                      "training cost")
    args = p.parse_args()
    rows = [{**r, args.label: r.pop("robust")}
            for r in table_rows(args.page.read_text(), args.heading)]
    for path in frontier(rows, args.out, robust=args.label, title=args.title):
        print(f"wrote {path} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
