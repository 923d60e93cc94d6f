"""Where computation runs: the device (:func:`resolve_device`), and multi-process training
with ``torchrun`` and ``torch.distributed``.

``torchrun --nproc-per-node N -m erat train ...`` needs no other change: each process reads
its rank from the environment, takes its shard of every global batch, and the gradients
are averaged across processes after ``backward`` with one all-reduce of a flat buffer.

Why not the ``DistributedDataParallel`` wrapper: robust-training methods run extra forward
passes (inner searches differentiated with respect to the input only). DDP's reducer arms
itself on every training-mode forward and then waits for parameter gradients that such
passes never produce ("expected to have finished reduction in the prior iteration").
Averaging after ``backward`` is exact for any number of forward passes, and the parameters
stay identical on every rank because they start identical (same seed, broadcast from rank 0)
and receive identical updates.

BatchNorm keeps per-rank batch statistics by default (each rank normalises its own shard);
``sync_bn=True`` converts it to ``SyncBatchNorm`` (CUDA only), which makes a multi-GPU run
match a single-GPU run of the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from erat.errors import EnvironmentProblem, UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ...; a GPU that is not
    there is the environment's problem."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name}: no CUDA GPU is available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise EnvironmentProblem(f"--device {name}: only {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """The number of processes ``torchrun`` started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = world_size()
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close(wait_for_all: bool = True) -> None:
    """Leave the process group, if this process joined one, after a barrier.

    Without the barrier a rank that finishes first tears its connections down while another
    still uses them; with gloo the other process then aborted now and then ("terminate
    called without an active exception", seen once in CI). ``wait_for_all=False`` skips it
    (after an error, when the other ranks may never arrive).
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module, info: Dist) -> None:
    if info.enabled:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: nn.Module, info: Dist) -> None:
    """Mean of every parameter's ``.grad`` over the ranks (one flat all-reduce)."""
    if not info.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= info.world_size
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def mean_over_ranks(values: dict[str, float], info: Dist, device: torch.device) -> dict[str, float]:
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def shard(index: torch.Tensor, info: Dist) -> torch.Tensor:
    """This rank's part of a global batch of indices (strided, so sizes differ by <= 1)."""
    return index[info.rank :: info.world_size] if info.enabled else index
