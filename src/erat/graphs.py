"""Graph-captured models for the GPU fast path (:mod:`erat.fit.fast`, ``erat eval``):
``torch.compile`` with CUDA-graph replay (``mode="reduce-overhead"``), a check that a model
can be captured, and padded batches so that few graph shapes serve every batch size.

Example::

    check_capturable(model, x[:2])                # refuses a model with graph breaks
    fast = Padded(compiled(model, graphs=True))   # eval mode: survivors of any size
"""

from __future__ import annotations

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


def compiled(model: nn.Module, *, graphs: bool) -> nn.Module:
    """``torch.compile`` of ``model``: CUDA-graph replay (``reduce-overhead``) on a GPU with
    ``graphs``, plain kernel fusion otherwise (the CPU tests' mode). A replayed graph writes
    its outputs into the same buffers each time, and a method calls the model on one shape
    several times before it uses the first output (the clean and the perturbed pass): the
    graph's outputs are cloned (:class:`Cloned`)."""
    cuda = next(model.parameters()).device.type == "cuda"
    if graphs and cuda:
        return Cloned(torch.compile(model, mode="reduce-overhead"))
    return torch.compile(model)


class Cloned(nn.Module):
    """``model``'s output copied out of the CUDA graph's buffers (autograd flows through)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).clone()


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
