"""erat's PGD-l2 against torchattacks' PGDL2 on one model, calls interleaved one by one.

    OMP_NUM_THREADS=1 python benchmarks/pgd_peer.py --model preact-resnet18 --batch 16

Also times erat's PGD with the parameters' ``requires_grad`` off during the search, to see
what autograd's bookkeeping for weights costs. Prints median seconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from erat.losses import cross_entropy
from erat.models import build_model
from erat.perturb import pgd, search_mode
from erat.threat import Threat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preact-resnet18")
    p.add_argument("--shape", default="3x32x32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    import torchattacks

    shape = tuple(int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    model = build_model(args.model, in_shape=shape, num_classes=10, mean=[0.5] * shape[0],
                        std=[0.25] * shape[0]).eval()
    x = torch.rand(args.batch, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = Threat("l2", 2.0)

    def ours() -> None:
        with search_mode(model):
            pgd(lambda z: cross_entropy(model(z), y), x, threat, steps=10, step_size=0.5)

    def ours_frozen() -> None:
        params = list(model.parameters())
        for q in params:
            q.requires_grad_(False)
        try:
            ours()
        finally:
            for q in params:
                q.requires_grad_(True)

    attack = torchattacks.PGDL2(model, eps=2.0, alpha=0.5, steps=10, random_start=True)
    fns = {"erat": ours, "erat_frozen_params": ours_frozen,
           "torchattacks": lambda: attack(x, y)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    print({k: round(statistics.median(v), 3) for k, v in times.items()})


if __name__ == "__main__":
    main()
