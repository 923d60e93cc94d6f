"""How BatchNorm and dropout behave in each forward pass of a training step: four named
recipes a method picks (METHOD.md section 5), and the helpers behind them.

A robust-training step runs several forward passes on the same weights. Each is one of:

=========================  ============================================================
recipe                     what the pass sees
=========================  ============================================================
(the clean pass)           train mode, as usual: batch statistics, updates the running
                           statistics, dropout on. Run it inside :func:`shared_statistics`
                           when later passes must reuse its statistics.
:func:`supervised_search`  eval mode (running statistics, no updates, no dropout); the
                           inner maximisation of AT, PGD-AT, TRADES and ER's supervised
                           form, and every evaluation attack.
:func:`label_free_search`  the clean pass's own function: BatchNorm with the clean batch's
                           statistics (inside :func:`shared_statistics`), no running-stat
                           updates, dropout off; VAT's power iteration and ER's virtual
                           search, whose target is this function's value at ``x`` (the
                           clean logits without active dropout; ``v = 0`` at ``x``).
:func:`perturbed_pass`     train mode with batch statistics but no running-stat updates,
                           dropout on: the pass on adversarial points that is trained on
                           (AT, TRADES), so perturbed inputs never reach test-time stats.
:func:`ray_pass`           the clean pass's function again, for every point of a ray that
                           the energy subtracts ``l(x)`` from (ER): one function along the
                           whole ray, dropout off.
=========================  ============================================================

Both searches freeze the parameters (``requires_grad`` off): a search differentiates with
respect to its input alone, and a compiled graph would otherwise compute every weight
gradient too (eager autograd skips them). Every context restores each module's own state on
exit. A search's target must come from
the function it searches: :func:`supervised_target` and :func:`label_free_target`.

Example::

    with shared_statistics(model):
        logits = model(x)                        # the clean pass
        with label_free_search(model):
            d = vat_direction(model, x, label_free_target(model, x, logits))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from erat.inputs import logits


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


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
def _frozen(model: nn.Module) -> Iterator[None]:
    """``requires_grad`` off on the parameters that have it; on again afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def supervised_search(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for an inner search or an attack, the parameters frozen; restores each
    module's ``training`` and each parameter's ``requires_grad``."""
    with _training_off(list(model.modules())), _frozen(model):
        yield model


def sample_outputs(model: nn.Module, x: Tensor, n: int = 8, name: str = "x") -> Tensor:
    """The outputs of ``model`` at ``x[:n]``, from one eval-mode forward without gradients
    (no BatchNorm statistic moves): how many logits labels must stay below, and whether
    they look like logits (:func:`erat.inputs.within_outputs`). Inputs the model cannot
    take (their shape, channels or dtype) raise ``UserError`` naming ``name``."""
    from erat.errors import UserError, first_line

    with supervised_search(model), torch.no_grad():
        try:
            return logits(model(x[:n]), len(x[:n]), f"images of {name}")
        except RuntimeError as err:  # (torch's own refusal of a shape, channels or dtype)
            if type(err) is not RuntimeError or not _INPUT_REFUSED.search(str(err)):
                raise  # (out of memory, a compiler's or the model's own failure: itself)
            params = next((p for p in model.parameters() if p.is_floating_point()), None)
            hint = f"; pass {name}.to({params.dtype})" if params is not None \
                and params.dtype != x.dtype else ""
            raise UserError(f"the model cannot take {name} ({x.dtype} images of shape "
                            f"{tuple(x.shape[1:])}): {first_line(err)}{hint}") from err


# torch's messages for inputs a layer cannot take (shape, channels, dtype)
_INPUT_REFUSED = re.compile(r"shape|size|channels|dtype|type \(|Expected .*input|mat1 and mat2")


@contextmanager
def perturbed_pass(model: nn.Module) -> Iterator[nn.Module]:
    """Train-mode BatchNorm (batch statistics) without running-stat updates; dropout as it
    is. For the forward passes on perturbed points whose loss is trained on.

    Each BatchNorm layer in training mode stops tracking for the pass (it then normalises
    with the batch's statistics and writes nothing): a write, even an unchanged one, would
    bump the version of buffers that an eager clean pass saved for its backward (a compiled
    pass writes its buffers back). Layers a user froze (eval mode) keep their running
    statistics."""
    tracking = [m for m in _batchnorms(model) if m.training and m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m in tracking:
            m.track_running_stats = True


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout modules in eval mode (no noise); every other module keeps its mode."""
    with _training_off(_dropouts(model)):
        yield model


@contextmanager
def clean_function(model: nn.Module) -> Iterator[nn.Module]:
    """The clean training pass's function: :func:`perturbed_pass` with dropout off. Inside
    :func:`shared_statistics` BatchNorm normalises with the clean batch's statistics."""
    with perturbed_pass(model), dropout_off(model):
        yield model


@contextmanager
def label_free_search(model: nn.Module) -> Iterator[nn.Module]:
    """The recipe of a label-free search (VAT, ER's virtual form): :func:`clean_function`.

    The search probes the very function the perturbed pass trains; VAT's reference code
    searches in train mode too (takerum/vat). Searching the eval-mode function instead made
    VAT drift with few labels (docs/results/semi-supervised-100-labels.md). The parameters
    are frozen, as in :func:`supervised_search`."""
    with clean_function(model), _frozen(model):
        yield model


@contextmanager
def ray_pass(model: nn.Module) -> Iterator[nn.Module]:
    """The recipe of the energy's ray points: :func:`clean_function`, so that every point
    of a ray, ``x`` included, is mapped by one function (with independent dropout masks
    ``V_T`` would add up the noise and grow with ``T``)."""
    with clean_function(model):
        yield model


@contextmanager
def shared_statistics(model: nn.Module, stats_from: int = 0) -> Iterator[nn.Module]:
    """Train-mode BatchNorm normalises every later pass with the first pass's statistics.

    The first train-mode forward inside the context (the clean pass) runs as usual, updating
    the running statistics, and each BatchNorm layer records its batch mean and variance
    (with their graph). Every later train-mode forward is normalised with those recorded
    statistics, so each input is mapped by the same function as in the clean pass, whatever
    else is in its batch. Eval-mode passes (supervised searches) use the running statistics.
    ``stats_from > 0``: the clean pass's statistics (and the running ones' update) are those
    of its rows from ``stats_from`` on, the unlabeled part of a semi-supervised batch, and
    every row is normalised with them.

    Why: ``V_T`` subtracts the clean loss; with the ray points' own batch statistics or the
    running ones, training rewards the gap between two functions. And a few labels in every
    batch, always the same images, made the statistics theirs: the BatchNorm MLP drifted
    with 100 labels, VAT and ER alike (docs/results/semi-supervised-defaults.md).
    """
    bns = _batchnorms(model)
    originals = {m: m.forward for m in bns}
    depth = len(_OPEN)
    _OPEN.append(model)
    for i, m in enumerate(bns):
        m.forward = _recording_forward(m, originals[m], stats_from, (depth, i))
    try:
        yield model
    finally:
        _OPEN.pop()
        for i, (m, forward) in enumerate(originals.items()):
            m.forward = forward
            m.__dict__.pop("forward", None)
            _RECORDED.pop((depth, i), None)


# each BatchNorm layer's recorded (mean, var) inside shared_statistics, by (contexts open
# around it, its position in the model): outside the module, so that a compiled pass takes
# them as inputs, not as fixed-address weights (its CUDA graphs would be recorded again at
# every update); by position, not id, so that another model of the same architecture
# compiles to the same code
_RECORDED: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
_OPEN: list[nn.Module] = []  # the models whose shared_statistics context is open, outermost first


def _recording_forward(bn: nn.Module, forward: Callable[[Tensor], Tensor], stats_from: int,
                       key: tuple[int, int]):

    def patched(inp: Tensor) -> Tensor:
        if not bn.training:
            return forward(inp)
        x = inp.to(torch.promote_types(inp.dtype, torch.float32))  # (in float32 at least, as
        if key not in _RECORDED:  # BatchNorm's own kernels under bf16: the clean pass's)
            dims = [0, *range(2, x.dim())]
            if not 0 < stats_from < x.shape[0] - 1:
                _RECORDED[key] = (x.mean(dims), x.var(dims, unbiased=False))
                return forward(inp)
            part = x[stats_from:]
            _RECORDED[key] = (part.mean(dims), part.var(dims, unbiased=False))
            _update_running(bn, *_RECORDED[key], part.numel() // part.shape[1])
        mean, var = _RECORDED[key]
        shape = (1, -1, *([1] * (x.dim() - 2)))  # per channel: [1, C, 1, ...]
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        return out.to(inp.dtype)

    return patched


@torch.no_grad()
def _update_running(bn: nn.Module, mean: Tensor, var: Tensor, n: int) -> None:
    """BatchNorm's own running-statistics update, from given batch statistics over ``n``
    values per channel (unbiased variance, as BatchNorm keeps it)."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    bn.num_batches_tracked += 1
    m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - m).add_(m * mean.detach())
    bn.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))


def dropout_active(model: nn.Module) -> bool:
    """True when some dropout layer is in training mode with ``p > 0``."""
    return any(m.training and m.p > 0 for m in _dropouts(model))


def is_stochastic(model: nn.Module) -> bool:
    """True when a forward pass depends on more than each input alone: a BatchNorm layer in
    training mode (batch statistics) or an active dropout layer. When False, a train-mode
    pass computes the same function of each input as an eval-mode one."""
    return any(m.training for m in _batchnorms(model)) or dropout_active(model)


def supervised_target(model: nn.Module, x: Tensor, clean_logits: Tensor) -> Tensor:
    """Detached logits at ``x`` of the function a :func:`supervised_search` runs on, for a
    search whose loss must be 0 at ``x`` (TRADES): the training pass's ``clean_logits``
    when it computes the same function (:func:`is_stochastic` is False), otherwise one
    eval-mode pass without a graph. Call it outside the search, whose eval mode would hide
    the training mode it checks."""
    if not is_stochastic(model):
        return clean_logits.detach()
    with supervised_search(model), torch.no_grad():
        return model(x)


def label_free_target(model: nn.Module, x: Tensor, clean_logits: Tensor) -> Tensor:
    """Detached logits at ``x`` of :func:`label_free_search`'s function: the clean pass's
    ``clean_logits`` when no dropout is active in it, otherwise one pass without a graph."""
    if not dropout_active(model):
        return clean_logits.detach()
    with clean_function(model), torch.no_grad():
        return model(x)
