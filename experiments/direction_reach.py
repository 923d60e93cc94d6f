"""How far a virtual search direction reaches inside [0, 1], and how much ``v`` it finds.

For each trained run: VAT's power-iteration direction ``d`` (ER's ``S=0``) and ER's
one-step refinement of it (``S=1``, PGD's step 2.5 eps and a gentler 0.5 eps), each
applied as ``clip(x + eps u, 0, 1)``; prints the mean distance moved, as a fraction of
``eps``, and the mean ``v = KL(p(.|x) || p(.|x + r))`` at that point. All on the clean
training pass's function (train-mode BatchNorm with the batch's statistics, dropout off),
as the methods search (docs/results/semi-supervised-100-labels.md)::

    python experiments/direction_reach.py --data-dir DIR --eps 1.0 RUN [RUN ...]
"""

from __future__ import annotations

import argparse

import torch

import erat
from erat.losses import virtual_loss
from erat.passes import label_free_search, shared_statistics
from erat.search import search_direction, vat_direction
from erat.threat import l2_norm


def reach(model: torch.nn.Module, x: torch.Tensor, eps: float) -> dict[str, tuple[float, float]]:
    """``{search: (mean distance / eps, mean v)}`` on the batch ``x``."""
    model.train()
    out = {}
    with shared_statistics(model), torch.no_grad():
        logits = model(x)
        with label_free_search(model):
            d = vat_direction(model, x, logits, xi=1e-2, power_iters=1)
            v = virtual_loss(model, logits)
            for name, S, step in [("VAT d (S=0)", 0, None), ("S=1, step 2.5 eps", 1, None),
                                  ("S=1, step 0.5 eps", 1, 0.5 * eps)]:
                u = search_direction(v, x, eps, S=S, start_direction=d, step_size=step)
                z = (x + eps * u).clamp(0.0, 1.0)
                moved = l2_norm(z - x).mean().item() / eps
                out[name] = (moved, v(z).mean().item())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--n", type=int, default=350, help="training inputs, one batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x = erat.load_dataset(args.dataset, "train", args.data_dir).tensors[0][: args.n]
    for run in args.runs:
        torch.manual_seed(args.seed)
        res = reach(erat.load_model(run), x, args.eps)
        print(run + ": " + "; ".join(f"{k}: moved {m:.3f} eps, v {v:.4f}"
                                    for k, (m, v) in res.items()))


if __name__ == "__main__":
    main()
