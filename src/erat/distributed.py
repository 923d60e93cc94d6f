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

BatchNorm keeps per-rank batch statistics by default (each rank normalises its own shard),
and rank 0's running statistics are copied to every rank after each update, as DDP does;
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
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem(f"--device {name}: no Apple GPU (MPS) is available here")
    if device.type == "cpu" and device.index:
        raise UserError(f"--device {name}: the CPU takes no index; use cpu")
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


def broadcast_buffers(model: nn.Module, info: Dist) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, after each update's
    passes, as ``DistributedDataParallel`` does by default: every rank's eval-mode searches
    then normalise alike, and the saved model's statistics are the ones they used. One
    flat broadcast per dtype."""
    if not info.enabled:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in model.buffers():
        by_dtype.setdefault(t.dtype, []).append(t.data)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.broadcast(flat, src=0)
        for t, synced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            t.copy_(synced)


def agree(ok: bool, info: Dist, device: torch.device) -> bool:
    """Whether every rank is ``ok`` (one all-reduce of a flag): a refusal made on one rank
    (rank 0's run-folder checks) ends the others with it, not with a broken connection."""
    if not info.enabled:
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


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
