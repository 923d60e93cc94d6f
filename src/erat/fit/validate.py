"""Per-epoch validation: clean and PGD robust accuracy on ``val_n`` held-out images (all,
or as many drawn once with a fixed seed: :func:`measured`; ``val_steps`` steps, one restart,
radius ``val_eps`` or the method's ``eps``, the method's norm), the figures
``select="best-robust"`` chooses by, and FGSM accuracy at the same radius, which the
catastrophic-overfitting guard compares with PGD's (:mod:`erat.fit.guard`); and clean
accuracy of a model on a tensor set."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from erat.errors import UserError
from erat.fit.options import FitOptions
from erat.inputs import logits
from erat.methods import Method, ball
from erat.threat import check_radius


def val_ball(method: Method, options: FitOptions) -> tuple[str, float | None]:
    """The validation PGD's ``(norm, eps)``: ``val_norm`` and ``val_eps`` where given, else
    the method's training ball (l2 for a method without one; the method's radius in its own
    norm only: :func:`val_radius` refuses it in another)."""
    norm, trained = ball(method)
    if options.val_norm not in (None, norm) and options.val_eps is None:
        trained = None
    return options.val_norm or norm, options.val_eps if options.val_eps is not None else trained


def val_radius(method: Method, options: FitOptions, held_out: bool) -> float | None:
    """The validation PGD's radius; ``UserError`` when ``best-robust`` cannot be chosen
    (``held_out``: there is a validation set). It reads no data: a suite checks every run
    with it before the first trains."""
    norm, eps = val_ball(method, options)
    trained_in, trained = ball(method)
    if held_out and norm != trained_in and trained is not None and options.val_eps is None:
        raise UserError(f"--val-norm {norm} is not the norm method "
                        f"{getattr(method, 'name', method)!r} trains in ({trained_in}): give "
                        f"--val-eps, a radius in {norm}")
    if options.val_eps is not None:  # in the validation's norm, before any training
        check_radius(options.val_eps, norm, name="val_eps")
    if options.select == "best-robust":
        if not held_out:
            raise UserError("--select best-robust needs a validation set (--val N)")
        if not eps:
            raise UserError(f"--select best-robust needs --val-eps for method "
                            f"{getattr(method, 'name', method)!r} (it has no eps)")
    return eps or None


def measured(total: int, n: int) -> Tensor | slice:
    """The validation images measured: all ``total``, or ``n`` of them drawn once with seed
    0, in their order (the first ``n`` of a set stored class by class hold its first
    classes)."""
    if n >= total:
        return slice(None)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values


def validate(model: nn.Module, val: tuple[Tensor, Tensor], options: FitOptions,
             eps: float | None, device: torch.device, norm: str = "l2") -> dict[str, float]:
    """Clean and PGD robust accuracy on ``val_n`` validation images (:func:`measured`)."""
    from erat.evaluate import evaluate

    t0 = time.perf_counter()
    idx = measured(len(val[1]), options.val_n)
    xv, yv = val[0][idx].to(device), val[1][idx].to(device)
    was_training = model.training
    model.eval()
    try:
        if eps is None:
            out = {"val_clean_acc": clean_accuracy(model, xv, yv)}
        else:
            res = evaluate(model, xv, yv, attacks="pgd", norm=norm, eps=[eps],
                           steps=options.val_steps, restarts=1, sanity_n=0, seed=0,
                           batch_size=500)
            weak = evaluate(model, xv, yv, attacks="fgsm", norm=norm, eps=[eps], sanity_n=0,
                            seed=0, batch_size=500)
            out = {"val_clean_acc": res["clean_acc"],
                   "val_robust_acc": next(iter(res["robust_acc"].values())),
                   "val_fgsm_acc": next(iter(weak["robust_acc"].values()))}
    finally:
        model.train(was_training)
    return out | {"val_seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Accuracy in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        correct += int((logits(model(xb), len(xb), "images").argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(len(x), 1)
