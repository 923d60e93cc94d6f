"""Does ``torch.compile`` help? ms per training step of ``cnn`` with and without it.

    python experiments/compile_check.py --methods erm,er --steps 20

Compilation time is reported separately (the first steps); the ratio uses the median of the
steps after warm-up. Runs on whatever device is present (CUDA when available).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from erat.bench import random_batch
from erat.methods import build_method
from erat.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--shape", default="1x28x28")
    p.add_argument("--methods", default="erm,er")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = tuple(int(v) for v in args.shape.split("x"))
    batch = random_batch(shape, args.batch_size, device)
    for name in args.methods.split(","):
        row = {}
        for compiled in (False, True):
            torch.manual_seed(0)
            model = build_model(args.model, in_shape=shape, num_classes=10, mean=[0.5] * shape[0],
                                std=[0.25] * shape[0]).to(device).train()
            step_model = torch.compile(model) if compiled else model
            method = build_method(name)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            times = []
            for _ in range(args.steps + 3):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                method(step_model, batch).loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(1000 * (time.perf_counter() - t0))
            row[compiled] = (statistics.median(times[3:]), sum(times[:3]) / 1000)
        (eager, _), (comp, warm) = row[False], row[True]
        print(f"{args.model} {name:<6} eager {eager:8.1f} ms  compiled {comp:8.1f} ms  "
              f"speed-up x{eager / comp:.2f}  (first 3 compiled steps: {warm:.0f} s) on {device}")


if __name__ == "__main__":
    main()
