"""The GPU fast path of :func:`erat.fit.fit`, on by default with CUDA (``fast="auto"``), each
part with its own switch; the CPU path is the eager one and stays as it is.

- **data on the device** (``fast_data``): the training images live on the GPU as ``uint8``
  (a quarter of float32's memory; exact, since erat's pixels are ``k / 255``), the batch is
  drawn and augmented there (:func:`erat.datasets.augment_batch` on the device's generator):
  no host copy per update. The last partial batch of an epoch is dropped, as on the CPU, so
  every update has the same shape (a fresh permutation each epoch uses every image in turn).
- **a graph-captured model** (``fast_graph``): ``torch.compile(mode="reduce-overhead")``,
  whose compiled forward and backward graphs are replayed as CUDA graphs, one per shape and
  per BatchNorm/dropout recipe the method uses (the ray points of ER, the searches of PGD).
  The inner searches take input gradients (``torch.autograd.grad``), which a compiled
  region cannot hold, so the update is captured piecewise, not as one graph. Where a clean
  pass would wait for its backward across a search (AT, TRADES, VAT, ER), CUDA graph trees
  would free its saved tensors: that clean pass runs eager and the search is replayed
  (:func:`erat.graphs.compiled`). A method that differentiates twice (ER's
  gradient estimator) runs eager; a model with data-dependent control flow (a graph break
  in its forward) is refused before training.
- **bf16 and channels-last** (``fast_bf16``, ``fast_channels_last``) for convolutional
  models, where tensor cores pay; the output layer, losses, norms and the energy's
  differences stay float32 (:func:`float32_head`, :mod:`erat.losses`, :mod:`erat.threat`).
- **a fused optimiser** (``fused=True``): one kernel per parameter group for Adam and SGD.
- **no host synchronisation per update in the loop**: the metrics are summed on the device
  and the loss is checked for NaN or infinity every ``CHECK_EVERY`` updates and at the
  epoch's end (:mod:`erat.fit.loop`), so the host can queue the next update while the device
  runs this one (ER's check for a zero search gradient, :func:`erat.search.unit_or_random`,
  reads nothing on a GPU either).

The fast step is the same method: ``tests/test_fast.py`` compares compiled and eager steps of
every method on the CPU (``torch.compile`` runs there too), loss and update within tolerance.

The graph capture itself is :mod:`erat.graphs` (shared with ``erat eval``).

Example::

    data = DeviceImages(x_train, device)          # uint8 on the GPU
    batch = data[idx]                             # float32 in [0, 1], on the GPU
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from erat.errors import UserError


def active(options: Any, device: torch.device) -> bool:
    """Whether the fast path runs: ``fast`` is ``on``, or ``auto`` with a CUDA device. ``on``
    without CUDA is refused: the CPU path is the eager one."""
    if options.fast == "on":
        needs_cuda(device, "training", "drop --fast")
    return options.fast == "on" or (options.fast == "auto" and device.type == "cuda")


def idle_flags(options: Any, active: bool) -> str | None:
    """A note naming the fast path's parts turned off (``--no-fast-bf16``, ...) while the
    fast path does not run (the CPU, ``--fast off``): they change nothing there."""
    off = [f"--no-{f.name.replace('_', '-')}" for f in dataclasses.fields(options)
           if f.name.startswith("fast_") and not getattr(options, f.name)]
    if active or not off:
        return None
    why = "--fast off" if options.fast == "off" else "the CPU path is the eager one"
    verb = "changes" if len(off) == 1 else "change"
    return f"note: {', '.join(off)} {verb} nothing here: the fast path is off ({why})"


def needs_cuda(device: torch.device, what: str, instead: str) -> None:
    """Refuse ``--fast on`` off CUDA (``what`` runs on ``device``; ``instead``: the flag's
    way back to the eager path)."""
    if device.type != "cuda":
        raise UserError(f"--fast on needs a CUDA device ({what} is on {device}); the CPU "
                        f"path is the eager one: {instead} or pass --device cuda")


def convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class DeviceImages:
    """Images ``[N, C, H, W]`` in [0, 1] kept on ``device``, as ``uint8`` when every pixel is
    a multiple of 1/255 (the float32 tensor otherwise); indexing returns float32 in [0, 1]."""

    def __init__(self, x: Tensor, device: torch.device) -> None:
        as_bytes = torch.round(x * 255)
        exact = bool(torch.equal(as_bytes / 255, x)) if x.dtype == torch.float32 else False
        self.store = (as_bytes.to(torch.uint8) if exact else x).to(device)
        self.bytes = exact

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, idx: Tensor) -> Tensor:
        part = self.store[idx]
        return part.float().div_(255) if self.bytes else part


class Float32Linear(nn.Linear):
    """An ``nn.Linear`` that computes in float32 under autocast (:func:`float32_head`)."""

    def forward(self, inp: Tensor) -> Tensor:
        with torch.autocast(inp.device.type, enabled=False):
            return nn.functional.linear(inp.float(), self.weight.float(),
                                        None if self.bias is None else self.bias.float())


def float32_head(model: nn.Module, outputs: int) -> nn.Linear | None:
    """Under autocast, the model's output layer (its last ``nn.Linear`` of ``outputs``
    features) computes in float32, so the logits carry no bf16 rounding: the energy's
    ``V_T`` sums ``T`` differences of losses, and rounded logits added their noise ``T``
    times. The layer becomes a :class:`Float32Linear` (same parameters and state dict; a
    copy or a pickle of the model keeps it); the layer, or None when there is none (a head
    that ends in another module, or a subclass of ``nn.Linear`` with a forward of its own:
    its logits stay as autocast leaves them)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == outputs]
    if not heads or type(heads[-1]) not in (nn.Linear, Float32Linear):
        return None
    heads[-1].__class__ = Float32Linear
    return heads[-1]


def optimizer_kwargs(device: torch.device) -> dict[str, Any]:
    """``fused=True`` on CUDA (one kernel per parameter group), nothing elsewhere."""
    return {"fused": True} if device.type == "cuda" else {}
