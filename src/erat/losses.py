"""Per-sample losses on logits, each returning a tensor of shape ``[B]``, and the loss
closures that searches and the energy estimator maximise or integrate.

The reductions happen in the methods, never here: per-sample quantities stay per sample
until the final mean (METHOD.md section 5). Computations run in float32 at least (float64
logits stay float64) so that the small differences taken by the energy estimator survive
mixed precision.

A loss closure maps points ``[N, ...]`` to per-point losses ``[N]``. To evaluate many points
of a batch of ``B`` inputs in one forward pass, a closure may be called on ``R`` stacked
copies of the batch (``N = R*B``, block-major: row ``r*B + i`` belongs to sample ``i``);
:func:`supervised_loss` and :func:`virtual_loss` repeat their labels / targets to match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor], Tensor]


def _wide(logits: Tensor) -> Tensor:
    """``logits`` in float32, or float64 as given (bf16 and float16 are widened)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``l(z) = CE(p(.|z), y)`` per sample."""
    return F.cross_entropy(_wide(logits), y, reduction="none")


def kl_div(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(p_target || p)`` per sample; ``target_logits`` is used as given (detach it first
    for VAT's virtual loss ``v(z) = KL(p(.|x) || p(.|z))``)."""
    log_p = F.log_softmax(_wide(target_logits), dim=1)
    log_q = F.log_softmax(_wide(logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy of the predicted distribution per sample (VAT+EntMin)."""
    log_p = F.log_softmax(_wide(logits), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def tile(t: Tensor, n: int) -> Tensor:
    """``t`` [B, ...] repeated to match ``n = R*B`` rows, block-major."""
    reps, rem = divmod(n, t.shape[0])
    if rem:
        raise ValueError(f"{n} points are not whole copies of a batch of {t.shape[0]}")
    return t if reps == 1 else t.repeat(reps, *([1] * (t.dim() - 1)))


def supervised_loss(model: nn.Module, y: Tensor) -> LossFn:
    """``l(z) = CE(p(.|z), y)`` per point, tileable over stacked copies of the batch."""
    return lambda z: cross_entropy(model(z), tile(y, z.shape[0]))


def virtual_loss(model: nn.Module, target_logits: Tensor) -> LossFn:
    """``v(z) = KL(p(.|x) || p(.|z))`` per point with ``p(.|x)`` from ``target_logits``
    (detached here), tileable over stacked copies of the batch."""
    target = target_logits.detach()
    return lambda z: kl_div(tile(target, z.shape[0]), model(z))


def class_balance(logits: Tensor, y: Tensor) -> Tensor:
    """``KL(mean_i p(.|x_i) || prior)``: how far the mean prediction over a batch ``[B, K]``
    (e.g. unlabeled inputs) is from the class frequencies of the labels ``y`` (smoothed), a
    scalar. The marginal term of information-maximising training (Krause et al. 2010; Hu
    et al. 2017, IMSAT, arXiv 1702.08720): minimised, it keeps the predictions from piling
    into a few classes."""
    k = logits.shape[1]
    prior = (torch.bincount(y, minlength=k).float() + 1.0) / (len(y) + k)
    mean = F.softmax(_wide(logits), dim=1).mean(0)
    return (mean * (mean.clamp_min(1e-12).log() - prior.log())).sum()


def semi_terms(loss: Tensor, metrics: dict[str, Tensor], logits: Tensor,
               logits_u: Tensor | None, y: Tensor, entmin: bool, balance: float) -> Tensor:
    """``loss`` plus the semi-supervised terms VAT and ER share, each recorded in
    ``metrics``: with ``entmin``, the mean :func:`entropy` of the unlabeled predictions
    ``logits_u`` (of the labeled ``logits`` without them; VAT+EntMin, Miyato et al. 2018);
    with ``balance > 0`` and unlabeled predictions, ``balance`` times :func:`class_balance`."""
    if entmin:
        metrics["entropy"] = entropy(logits_u if logits_u is not None else logits).mean()
        loss = loss + metrics["entropy"]
    if balance > 0 and logits_u is not None:
        metrics["balance"] = class_balance(logits_u, y)
        loss = loss + balance * metrics["balance"]
    metrics["loss"] = loss
    return loss
