"""Graph-captured models for the GPU fast path (:mod:`erat.fit.fast`, ``erat eval``):
``torch.compile`` with CUDA-graph replay (``mode="reduce-overhead"``), a check that a model
can be captured, and padded batches so that few graph shapes serve every batch size.

Example::

    check_capturable(model, x[:2])                # refuses a model with graph breaks
    fast = Padded(compiled(model, graphs=True, graph_searches=True))  # eval: any batch size
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import Tensor, nn

from erat.errors import UserError

# buckets of the padded evaluation batches: each size is one CUDA graph
BUCKETS = (64, 128, 256, 512, 1024, 2048)


def check_capturable(model: nn.Module, example: Tensor) -> None:
    """Refuse a model whose forward breaks the graph (data-dependent control flow, Python
    side effects): ``torch._dynamo.explain`` counts the breaks on ``example``."""
    import torch._dynamo

    mode = model.training
    try:
        model.eval()
        with torch.no_grad():
            report = torch._dynamo.explain(model)(example)
    finally:
        model.train(mode)
    torch._dynamo.reset()
    if report.graph_break_count:
        reason = str(report.break_reasons[0].reason).splitlines()[0] if report.break_reasons \
            else "a graph break"
        raise UserError(f"this model cannot be captured as a graph ({reason}); train it "
                        "with --fast off (the eager path)")


def compiled(model: nn.Module, *, graphs: bool, graph_searches: bool = False,
             overlaps: bool = False) -> nn.Module:
    """``torch.compile`` of ``model``: CUDA-graph replay (``reduce-overhead``) on a GPU with
    ``graphs``, plain kernel fusion otherwise (the CPU tests' mode). A replayed graph writes
    its outputs into the same buffers each time, and a method calls the model on one shape
    several times before it uses the first output (the clean and the perturbed pass): the
    graph's outputs are cloned (:class:`Cloned`).

    CUDA-graph trees end a "generation" (and free every live output of the previous one,
    saved activations included) at the first compiled forward after *any* compiled backward
    (torch's note "Backward Generation Handling"). A step whose clean pass waits for its
    backward while an inner search runs its own ``torch.autograd.grad`` (AT, TRADES, VAT, ER)
    would lose the clean pass's saved tensors. Unless ``graph_searches`` (evaluation, where
    every forward's backward follows at once), one side of that overlap runs on the eager
    model (:class:`Cloned`): in a method's first update the search, and once a step has shown
    the overlap, the first pass of each update instead (the clean pass: one pass, where the
    search makes ``S`` of them), so that the search and the passes after it are replayed (a
    second search while one of those waits, ER's virtual one after its supervised rays, runs
    eager). Searches with nothing pending (PGD-AT's, before its one trained pass) are
    captured from the start. ``overlaps``: the method says that its clean pass waits across
    a search (``searches_after_clean``), so the first update is routed as the later ones (its
    clean pass's graph would otherwise be compiled for that one update)."""
    _raise_recompile_limit()
    cuda = next(model.parameters()).device.type == "cuda"
    if graphs and cuda:
        return Cloned(torch.compile(model, mode="reduce-overhead"),
                      None if graph_searches else model, overlaps=overlaps)
    if not cuda:  # (Inductor's C++ path warns "No CUDA runtime is found": no error on a CPU)
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(model)


def step_module(model: nn.Module, method: object, *, graphs: bool, compile: bool
                ) -> nn.Module:
    """The module a method's update calls (training and ``erat bench``): :func:`compiled`
    with CUDA graphs (``graphs``, the fast path) or without (``compile``), else the model; the
    model itself for a method that differentiates through an input gradient
    (``double_backward``: a double backward, which no compiled graph supports)."""
    if getattr(method, "double_backward", False) or not (graphs or compile):
        return model
    return compiled(model, graphs=graphs,
                    overlaps=getattr(method, "searches_after_clean", False))


def cudagraph_skips() -> int:
    """How many compiled graphs of this process torch has run without CUDA-graph replay (a
    CPU tensor, a mutated input, ...): each one is the fast path without its speed. torch
    says why only in an opt-in log (``TORCH_LOGS``), so erat reads its counter (none before
    Dynamo is imported: an eager run does not pay for its import)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return int(utils.counters["inductor"]["cudagraph_skips"]) if utils is not None else 0


def _raise_recompile_limit(limit: int = 64) -> None:
    """Every recipe (train/eval mode, BN tracking off, patched BN forward, grad mode, input
    requires_grad) is one Dynamo cache entry of one shared frame; past the default limit of
    8 (reached by the 8 methods of one ``erat bench --fast on``) Dynamo runs the rest eager
    and says so only in a log line."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # (renamed in torch 2.7)
        if getattr(dynamo_config, name, limit) < limit:
            setattr(dynamo_config, name, limit)


class Cloned(nn.Module):
    """``model``'s output copied out of the CUDA graph's buffers (autograd flows through).

    With ``eager`` (the same module, uncompiled), the routing of :func:`compiled`: a search
    (a call on an input that requires grad) made while a captured forward waits for its
    backward (``pending``, counted by a gradient hook on each output) runs eager, and is
    remembered (``overlaps``, or known from the start): from then on the first pass of each
    update, unless it is itself a search, runs eager, so that nothing captured waits across
    the searches. The training
    loop calls :meth:`start_update` before each update; ``passes`` counts the update's
    replayed and eager calls (``erat bench`` reports them)."""

    def __init__(self, model: nn.Module, eager: nn.Module | None = None,
                 overlaps: bool = False) -> None:
        super().__init__()
        self.model = model
        self._eager = (eager,)  # (a tuple: not a second copy in modules()/state_dict)
        self.overlaps = overlaps  # a search meets a waiting forward: first passes run eager
        self.start_update()

    def start_update(self) -> None:
        """Nothing waits for its backward across updates: the next call is the update's
        first, and the update's passes are counted afresh."""
        self.pending, self.first, self.passes = 0, True, {"graph": 0, "eager": 0}

    def forward(self, x: Tensor) -> Tensor:
        eager = self._eager[0]
        first, self.first = self.first, False
        if eager is not None and torch.is_grad_enabled():
            search = x.requires_grad
            waits = search and self.pending != 0
            self.overlaps |= waits
            if waits or (first and self.overlaps and not search):
                self.passes["eager"] += 1
                return eager(x)
        self.passes["graph"] += 1
        out = self.model(x).clone()
        if eager is not None and out.requires_grad:
            self.pending += 1
            out.register_hook(self._backward_done)
        return out

    def _backward_done(self, grad: Tensor) -> None:
        self.pending -= 1  # (a second backward through one output: below 0, searches eager)


class Padded(nn.Module):
    """``model`` on batches padded up to the next of ``BUCKETS`` (repeating the first row),
    the output cut back: survivors of an attack come in every size, a graph-captured model
    wants few. Only for eval mode, where each row's output depends on that row alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        n = len(x)
        size = next((b for b in BUCKETS if b >= n), n)
        if size == n:
            return self.model(x)
        pad = x[:1].expand(size - n, *x.shape[1:])
        return self.model(torch.cat([x, pad]))[:n]
