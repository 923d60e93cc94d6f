"""Per-sample losses on logits, each returning a tensor of shape ``[B]``.

The reductions happen in the methods, never here: per-sample quantities stay per sample
until the final mean (METHOD.md section 5). Computations run in float32 so that the small
differences taken by the energy estimator survive mixed precision.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``l(z) = CE(p(.|z), y)`` per sample."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl_div(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(p_target || p)`` per sample; ``target_logits`` is used as given (detach it first
    for VAT's virtual loss ``v(z) = KL(p(.|x) || p(.|z))``)."""
    log_p = F.log_softmax(target_logits.float(), dim=1)
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy of the predicted distribution per sample (VAT+EntMin)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
