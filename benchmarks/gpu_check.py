"""GPU check (issue 7): a model on random data, every method, with and without AMP.

Prints milliseconds per step, steps per second, the measured ratio to ERM and the counted
(pass-based) ratio for each method, in float32 and in bf16 autocast. Sized to finish in under
5 minutes on one H100 (the whole device session: benchmarks/gpu_session.sh):

    python benchmarks/gpu_check.py --steps 200 --json gpu.json
    python benchmarks/gpu_check.py --model cnn --shape 1,28,28 --amp none \
        --methods "erm,at,vat,pgd:steps=1,pgd:steps=3,pgd:steps=10,trades:steps=3,er:S=1,er:S=3"
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from erat.bench import bench_training
from erat.methods import method_names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preact-resnet18")
    p.add_argument("--shape", default="3,32,32", help="input shape C,H,W")
    p.add_argument("--methods", help="comma-separated (name or name:key=value); default: all")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="timed steps per method (at most)")
    p.add_argument("--max-seconds", type=float, default=12.0, help="time cap per method and AMP")
    p.add_argument("--amp", default="none,bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    results = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "model": args.model,
        "shape": args.shape,
        "runs": [],
    }
    t0 = time.time()
    for amp in args.amp.split(","):
        rows = bench_training(
            args.model,
            tuple(int(v) for v in args.shape.split(",")),
            args.methods.split(",") if args.methods else method_names(),
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=5,
            max_seconds=args.max_seconds,
            device=device,
            amp=amp,
            channels_last=args.channels_last,
        )
        for r in rows:
            r["steps_per_s"] = 1000 / r["ms_per_step"]
            print(
                f"{args.model} amp={amp:<5} {r['method']:<7} {r['ms_per_step']:8.1f} ms/step "
                f"{r['steps_per_s']:7.2f} steps/s  x{r['ratio_to_erm']:.2f} erm "
                f"(counted x{r['counted_ratio_to_erm']:.2f})  "
                f"peak {r['peak_mem_mb']:.0f} MB ({r['timed_steps']} steps)"
            )
        results["runs"].extend(rows)
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
