"""The one implementation of every input perturbation: FGM/FGSM, PGD, VAT power iteration.

Shared by training (the methods) and evaluation. Each search is a pure function of the
input: ``loss_fn`` maps a batch of points ``[B, ...]`` to a per-sample loss ``[B]`` that
the search maximises. Gradients are taken with respect to the input only
(``torch.autograd.grad``), so parameter ``.grad`` is never touched, and every result is
detached, inside the threat's ball and inside ``[0, 1]``.

The caller decides the model's mode: run searches inside :func:`search_mode` (eval mode:
BatchNorm uses its running statistics and never updates them, dropout is off; the previous
mode of every module is restored afterwards), as METHOD.md section 5 requires.

Example::

    with search_mode(model):
        x_adv = pgd(lambda z: cross_entropy(model(z), y), x, Threat("l2", 2.0), steps=10)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from erat.threat import Threat, l2_norm, per_sample, random_unit, unit_l2

LossFn = Callable[[Tensor], Tensor]


@contextmanager
def _training_off(modules: list[nn.Module]) -> Iterator[None]:
    """Set ``training = False`` on ``modules``; restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextmanager
def search_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for an inner search; restores each module's own ``training`` flag."""
    with _training_off(list(model.modules())):
        yield model


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Keep train-mode BatchNorm (batch statistics) but stop running-stat updates.

    Used for the forward passes on perturbed points whose loss is trained on, so that
    perturbed inputs never leak into the running statistics used at test time.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    counters = [
        (m, m.num_batches_tracked.clone()) for m in bns if m.num_batches_tracked is not None
    ]
    try:
        yield model
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m, n in counters:
            m.num_batches_tracked.copy_(n)


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout modules in eval mode (no noise); every other module keeps its mode.

    Used by the energy regulariser's ray pass: with independent dropout masks per ray point,
    the sum of absolute differences ``V_T`` would add up the dropout noise and grow with ``T``.
    """
    with _training_off([m for m in model.modules()
                        if isinstance(m, nn.modules.dropout._DropoutNd)]):
        yield model


@contextmanager
def shared_batch_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Train-mode BatchNorm normalises every later pass with the first pass's batch statistics.

    The first train-mode forward inside the context (the clean pass) runs as usual, updating
    the running statistics, and each BatchNorm layer records its batch mean and variance
    (with their graph). Every later train-mode forward is normalised with those recorded
    statistics, so each input is mapped by the same function as in the clean pass, whatever
    else is in its batch. Eval-mode passes (searches) use the running statistics as usual.

    Used by the energy regulariser: ``V_T`` is the variation of *one* function along a ray,
    and its first term subtracts the clean loss. With the ray points' own batch statistics
    (a batch of mostly perturbed points) or with running statistics, the ray's ``l(x)``
    differs from the clean pass's ``l(x)``, and the ``-l(x)`` of ``V_T`` then rewards a gap
    between the two functions (measured on digits with the BatchNorm MLP, ER with S=3:
    robust accuracy at l2 0.5 fell to 7% with running statistics in the ray pass).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    originals = {m: m.forward for m in bns}
    for m in bns:
        m.forward = _recording_forward(m, originals[m])
    try:
        yield model
    finally:
        for m, forward in originals.items():
            m.forward = forward
            m.__dict__.pop("forward", None)


def _recording_forward(bn: nn.Module, forward: Callable[[Tensor], Tensor]):
    recorded: list[tuple[Tensor, Tensor]] = []

    def patched(inp: Tensor) -> Tensor:
        if not bn.training:
            return forward(inp)
        if not recorded:
            dims = [0, *range(2, inp.dim())]
            recorded.append((inp.mean(dims), inp.var(dims, unbiased=False)))
            return forward(inp)
        mean, var = recorded[0]
        shape = (1, -1, *([1] * (inp.dim() - 2)))  # per channel: [1, C, 1, ...]
        out = (inp - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        return out

    return patched


def dropout_active(model: nn.Module) -> bool:
    """True when some dropout layer is in training mode with ``p > 0``."""
    return any(m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
               for m in model.modules())


def is_stochastic(model: nn.Module) -> bool:
    """True when a forward pass depends on more than each input alone: a BatchNorm layer in
    training mode (batch statistics) or an active dropout layer. When False, the loss of a
    train-mode pass is the same function of each input as in any other pass."""
    for m in model.modules():
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
    return False


def search_target(model: nn.Module, x: Tensor, clean_logits: Tensor) -> Tensor:
    """Detached logits at ``x`` of the eval-mode function a supervised-style search runs on
    (:func:`search_mode`), for a search whose loss must be 0 at ``x`` (TRADES; the
    label-free searches of VAT and ER use :func:`clean_function_target`).

    The training pass's ``clean_logits`` serve when that pass computes the same function
    (:func:`is_stochastic` is False); otherwise one eval-mode pass without a graph. With
    train-mode BatchNorm the two differ, and a search aimed at the clean logits chases the
    gap between the functions (ER, MNIST subset with 100 labels: 0.59 test accuracy against
    0.73). Call it outside ``search_mode``, which would hide the training mode it checks.
    """
    if not is_stochastic(model):
        return clean_logits.detach()
    with search_mode(model), torch.no_grad():
        return model(x)


@contextmanager
def clean_function(model: nn.Module) -> Iterator[nn.Module]:
    """The clean training pass's function, for a label-free inner search (VAT, ER's virtual
    form): train-mode BatchNorm without running-stat updates, which inside
    :func:`shared_batch_stats` normalises with the clean batch's statistics; dropout off.

    The search then probes the very function that the perturbed pass trains, and the clean
    logits are its value at ``x`` (``v = 0`` there). VAT's reference implementation searches
    in train mode too (takerum/vat: batch statistics, no running-stat update). Searching the
    eval-mode (running-statistics) function instead, VAT on the MNIST subset (100 labels,
    BatchNorm MLP, radius 1.0) drifted from 0.84 to 0.61 test accuracy over 1,500 steps,
    against 0.85 with train-mode searches (docs/results.md)."""
    with frozen_bn_stats(model), dropout_off(model):
        yield model


def clean_function_target(model: nn.Module, x: Tensor, clean_logits: Tensor) -> Tensor:
    """Detached logits at ``x`` of :func:`clean_function`: the clean pass's ``clean_logits``
    when no dropout is active in it, otherwise one pass without a graph."""
    if not dropout_active(model):
        return clean_logits.detach()
    with clean_function(model), torch.no_grad():
        return model(x)


def input_grad(loss_fn: LossFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample loss ``[B]`` at ``x`` (detached) and its gradient with respect to ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach()


def fgm(loss_fn: LossFn, x: Tensor, threat: Threat) -> Tensor:
    """One step of size ``eps`` along the steepest-ascent direction (Goodfellow et al. 2015
    FGSM for l-inf; Miyato et al. 2016 FGM for l2). Returns a detached point."""
    _, grad = input_grad(loss_fn, x)
    return threat.project(x, x + threat.eps * threat.ascent_direction(grad)).detach()


def pgd(
    loss_fn: LossFn,
    x: Tensor,
    threat: Threat,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    start: Tensor | None = None,
) -> Tensor:
    """Projected gradient ascent on ``loss_fn`` (Madry et al. 2018, arXiv 1706.06083).

    ``step_size`` defaults to ``2.5 * eps / steps``. With ``restarts > 1`` the point of
    highest loss over the restarts is kept, per example. ``eps = 0`` returns ``x``.
    ``start`` (projected into the ball) replaces the random start, e.g. TRADES' start
    ``x + 0.001 * N(0, 1)`` or a search refined from a given direction.
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got {steps} and {restarts}")
    x = x.detach()
    if threat.eps == 0:
        return x.clone()
    alpha = 2.5 * threat.eps / max(steps, 1) if step_size is None else step_size
    best, best_loss = x.clone(), None
    for _ in range(restarts):
        if start is not None:
            x_adv = threat.project(x, start.detach())
        else:
            x_adv = threat.random_start(x) if random_start else x.clone()
        for _ in range(steps):
            _, grad = input_grad(loss_fn, x_adv)
            x_adv = threat.project(x, x_adv + alpha * threat.ascent_direction(grad))
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            loss = loss_fn(x_adv)
        if best_loss is None:
            best, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            best = torch.where(per_sample(better, x), x_adv, best)
            best_loss = torch.maximum(loss, best_loss)
    return best.detach()


def vat_direction(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    clean_logits: Tensor,
    *,
    xi: float = 1e-6,
    power_iters: int = 1,
) -> Tensor:
    """Unit l2 direction of VAT's power iteration (Miyato et al. 2018, arXiv 1704.03976, eq. 8).

    Starts from a random direction (zero-mean Gaussian, normalised), and takes ``power_iters``
    finite-difference steps of size ``xi`` on ``KL(p(.|x) || p(.|x + xi d))``. The points
    ``x + xi d`` are not clipped: ``xi`` is a differentiation step, not a perturbation.
    """
    from erat.losses import kl_div

    target = clean_logits.detach()
    d = random_unit(x)
    for _ in range(power_iters):
        _, grad = input_grad(lambda z: kl_div(target, logits_fn(z)), x + xi * d)
        # where the float32 KL difference vanishes (grad exactly 0), keep the previous d
        # rather than return a zero direction (no perturbation at all)
        d = torch.where(per_sample(l2_norm(grad) == 0, d), d, unit_l2(grad))
    return d.detach()
