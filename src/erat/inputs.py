"""What erat takes as data, checked where data enters the library (:func:`erat.fit.fit`,
:func:`erat.evaluate.evaluate`, :func:`erat.measure.energy_report`, a method's
:class:`~erat.methods.Batch`): images ``x`` ``[N, ...]`` of floats in [0, 1] (pixel space:
radii are measured in pixels, and a model normalises inside), labels ``y`` ``[N]`` of class
indices. A mistake raises ``TypeError`` (not a tensor) or ``UserError`` (a ``ValueError``; one line
on the command line) naming the argument: images scaled to 0..255 or normalised would make
every radius mean another ball, without a word.

Reading values costs a synchronisation on a GPU: entry points that see a whole data set
read it once; a batch on a GPU is checked for shape and type only.

Example::

    x = images(x, "x")
    y = labels(y, len(x), "y")
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from erat.errors import UserError


def images(x: object, name: str = "x", *, values: bool = True, like: Tensor | None = None,
           like_name: str = "x") -> Tensor:
    """``x`` if it is a float tensor ``[N, ...]`` (N >= 1, at least 2 dimensions) shaped as
    the images ``like`` (named ``like_name``) when given, and, with ``values``, every entry
    lies in [0, 1] (NaN is said apart)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images [N, ...] in [0, 1], got "
                        f"{type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        hint = " (8-bit images: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise UserError(f"{name} must be float images [N, ...] with N >= 1, in [0, 1]; got "
                        f"shape {tuple(x.shape)} of {x.dtype}{hint}")
    if like is not None and x.shape[1:] != like.shape[1:]:
        raise UserError(f"{name}'s images {tuple(x.shape[1:])} are not shaped as "
                        f"{like_name}'s {tuple(like.shape[1:])}")
    if values and x.numel():
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))
        if lo != lo or hi != hi:
            raise UserError(f"{name} holds NaN ({int(torch.isnan(x).sum())} entries)")
        if not (lo >= 0.0 and hi <= 1.0):
            raise UserError(f"{name} must lie in [0, 1] (pixel space; normalise inside the "
                            f"model), got values in [{lo:.4g}, {hi:.4g}]")
    return x


def labels(y: object, n: int, name: str = "y", *, values: bool = True) -> Tensor:
    """``y`` as int64 class indices if it is an integer tensor ``[n]`` (one label per image)
    and, with ``values``, none is negative (cross-entropy skips a label of -100 silently);
    labels past the model's outputs are found where the outputs are known."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class labels [{n}], got "
                        f"{type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise UserError(f"{name} must be integer class labels, got {y.dtype} (" + (
            f"{name}.long(), if they are whole numbers)" if y.shape == (n,) else
            f"and shape {tuple(y.shape)}: one label per image, [{n}])"))
    if y.shape != (n,):
        raise UserError(f"{name} must hold one class label per image, labels [{n}]; got "
                        f"shape {tuple(y.shape)}")
    if values and n and (low := int(y.min())) < 0:
        raise UserError(f"{name} must be class indices 0, 1, ..., got {low}")
    return y.long()


class NonFiniteOutputs(UserError):
    """A model's outputs name no class (:func:`broken`) at ``bad`` of ``n`` inputs."""

    def __init__(self, bad: int, n: int, what: str) -> None:
        super().__init__(f"the model's outputs are not finite (NaN or inf) at {bad} of {n} "
                         f"{what}: its accuracy, losses and attacks would mean nothing")
        self.bad, self.n = bad, n


def broken(out: Tensor) -> Tensor:
    """Rows ``[n]`` of logits ``out`` that name no class: a NaN in them, or a largest logit
    that is not finite (``-inf`` for some classes, as a log-softmax gives, is a class)."""
    return torch.isnan(out).any(dim=1) | ~torch.isfinite(out.amax(dim=1))


def logits(out: object, n: int, what: str = "inputs") -> Tensor:
    """``out``, a model's outputs at ``n`` inputs, checked as logits: a tensor ``[n, K]``
    whose rows each name a class (:func:`broken`: NaN logits would count as class 0, and
    accuracy as that class's share); ``UserError`` otherwise (the model given is wrong: one
    line on the command line), :class:`NonFiniteOutputs` for broken rows."""
    if not isinstance(out, Tensor):
        raise UserError(f"the model must return logits, one tensor [batch, classes]; it "
                        f"returned a {type(out).__name__}" + (
                            " (return the logits alone, e.g. out[0])"
                            if isinstance(out, tuple | list | dict) else ""))
    if out.dim() != 2 or len(out) != n:
        raise UserError(f"the model must return logits [batch, classes]; at {n} {what} it "
                        f"returned shape {tuple(out.shape)}")
    if bad := int(broken(out).sum()):
        raise NonFiniteOutputs(bad, n, what)
    return out


def within_outputs(y: Tensor, sample: Tensor, name: str = "y") -> None:
    """Refuse labels that name no output of a model whose outputs at a few inputs are
    ``sample`` ``[n, K]`` (they would count as misclassified, or fail inside
    cross-entropy); warn when those outputs look like probabilities (each row non-negative,
    summing to 1): erat's losses take logits, and a softmax's output makes them, and the
    energy above all, look flatter than the model is."""
    outputs = int(sample.shape[-1])
    rows = sample.detach().float().reshape(-1, outputs)
    if outputs > 1 and len(rows) and bool((rows >= 0).all()) and bool(
            ((rows.sum(1) - 1).abs() < 1e-2).all()):  # (a bf16 softmax: within ~2e-3)
        warnings.warn("the model's outputs look like probabilities (non-negative, summing to "
                      "1); erat takes logits: leave out the final softmax, or the losses, "
                      "attacks and energy are those of another function", stacklevel=2)
    high = int(y.max()) if len(y) else -1
    if high >= outputs:
        raise UserError(f"{name} holds label {high}, but the model has {outputs} outputs "
                        f"(labels 0..{outputs - 1})")


def first_n(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of a test set (None: all; ``--n`` outside 1..N is refused).
    Warns when they come sorted by class and hold fewer classes than the set: a set stored
    class by class (your own folder of images) gives its first classes alone, whose accuracy
    is not the set's."""
    if n is None:
        return x, y
    if n < 1 or n > len(x):
        raise UserError(f"--n must be between 1 and {len(x)} (the test set's size), got {n}")
    kept, present = len(torch.unique(y[:n])), len(torch.unique(y))
    if kept < present and n >= 8 and bool((y[1:n] >= y[: n - 1]).all()):  # (8: not by chance)
        warnings.warn(f"the first {n} test images hold {kept} of the test set's {present} "
                      "classes (it is stored class by class): their accuracy is not the "
                      "set's; give a larger n (--n, a suite's eval.n), or none", stacklevel=2)
    return x[:n], y[:n]
