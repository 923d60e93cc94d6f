"""A minimal, independent VAT for the 100-label MNIST-subset protocol, to cross-check erat's.

Reference semantics (takerum/vat, mnist_semi/train.py): BatchNorm after every Linear, the
logits included; the VAT term on the unlabeled batch only; every pass in train mode, the
searched and perturbed passes with their own batch statistics and no running-stat update;
``xi = 1e-6``; Adam 2e-3 decayed x0.9 every 100 steps; labeled batch 100, unlabeled 250.
Each ``--with`` flag moves one choice towards erat's VAT, so the effect of each can be
measured on its own (docs/results/semi-supervised-100-labels.md)::

    python experiments/semi_vat_check.py --data-dir DIR --eps 1.0 --steps 1500
    python experiments/semi_vat_check.py --data-dir DIR --with eval-search
    python experiments/semi_vat_check.py --data-dir DIR --with deep-mlp no-top-bn

Prints the test accuracy (eval mode, running statistics) every 250 steps.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from erat.datasets import labeled_split, load_dataset
from erat.losses import kl_div
from erat.passes import perturbed_pass, shared_statistics

CHOICES = {
    "deep-mlp": "hidden layers 1200-600-300-150 instead of 1200-1200",
    "no-top-bn": "no BatchNorm on the logits",
    "with-labeled": "the VAT term over labeled + unlabeled inputs",
    "xi-1e-2": "finite-difference step 1e-2 instead of 1e-6",
    "shared-stats": "one clean pass over labeled + unlabeled; later passes use its statistics",
    "small-batches": "labeled batch 64, unlabeled 128",
    "exclude-labeled": "the unlabeled set excludes the 100 labeled digits",
    "cosine": "cosine learning-rate decay instead of x0.9 per 100 steps",
    "clamp": "perturbed points clipped to [0, 1]",
    "eval-search": "the power iteration in eval mode (running statistics)",
}


def mlp(hidden: tuple[int, ...], top_bn: bool) -> nn.Module:
    layers: list[nn.Module] = []
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    if top_bn:
        layers.append(nn.BatchNorm1d(10))
    return nn.Sequential(*layers)


def kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return kl_div(target_logits, logits).mean()


def unit(d: torch.Tensor) -> torch.Tensor:
    return d / (d.norm(dim=1, keepdim=True) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    ap.add_argument("--eps", type=float, default=1.0, help="l2 radius (0: supervised only)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with", dest="changes", nargs="*", default=[], choices=sorted(CHOICES),
                    help="; ".join(f"{k}: {v}" for k, v in CHOICES.items()))
    args = ap.parse_args()
    on = set(args.changes).__contains__
    torch.manual_seed(args.seed)
    x_train, y_train = load_dataset("mnist", "train", data_dir=args.data_dir).tensors
    x_test, y_test = load_dataset("mnist", "test", data_dir=args.data_dir).tensors
    x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    labeled, unlabeled = labeled_split(y_train, 100, args.seed)
    xl, yl = x_train[labeled], y_train[labeled]
    xu = x_train[unlabeled] if on("exclude-labeled") else x_train
    model = mlp((1200, 600, 300, 150) if on("deep-mlp") else (1200, 1200), not on("no-top-bn"))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    if on("cosine"):
        sched, every = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps), 1
    else:
        sched, every = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9), 100
    nl, nu = (64, 128) if on("small-batches") else (100, 250)
    xi = 1e-2 if on("xi-1e-2") else 1e-6
    for step in range(1, args.steps + 1):
        model.train()
        bl, bu = torch.randint(0, 100, (nl,)), torch.randint(0, len(xu), (nu,))
        x = torch.cat([xl[bl], xu[bu]]) if on("with-labeled") else xu[bu]
        stats = shared_statistics(model) if on("shared-stats") else contextlib.nullcontext()
        with stats:
            if on("shared-stats"):
                logits = model(torch.cat([xl[bl], xu[bu]]))
                loss = F.cross_entropy(logits[:nl], yl[bl])
                target = (logits if on("with-labeled") else logits[nl:]).detach()
            else:
                loss = F.cross_entropy(model(xl[bl]), yl[bl])
                with perturbed_pass(model), torch.no_grad():
                    target = model(x)
            if args.eps > 0:
                with perturbed_pass(model):
                    search_target = target
                    if on("eval-search"):
                        model.eval()
                        with torch.no_grad():
                            search_target = model(x)
                    d = (xi * unit(torch.randn_like(x))).requires_grad_()
                    grad, = torch.autograd.grad(kl(search_target, model(x + d)), d)
                    model.train()
                    x_adv = x + args.eps * unit(grad)
                    loss = loss + kl(target, model(x_adv.clamp(0, 1) if on("clamp") else x_adv))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            sched.step()
        if step % 250 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            print(f"step {step}: test accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
