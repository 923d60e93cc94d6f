"""Train-time augmentation of image batches, on the batch's own device."""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from erat.datasets.registry import Augment

AUGMENTS: tuple[str, ...] = get_args(Augment)


def augment_batch(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Train-time augmentation of a batch ``[B, C, H, W]`` in ``[0, 1]``, on its own device.

    ``"crop"``: random translation by up to 4 pixels, i.e. a random crop of the zero-padded
    image (the standard CIFAR-10/SVHN recipe), one offset per sample. ``"crop-flip"`` adds a
    random horizontal flip. ``generator`` (on any device) makes the draws reproducible.
    """
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTS)}")
    if kind == "none":
        return x
    pad, (b, _, h, w) = 4, x.shape
    dev = generator.device if generator is not None else x.device
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H+8, W+8], zeros
    rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # [B,H,W,C]
    out = out.permute(0, 3, 1, 2).contiguous()
    if kind == "crop-flip":
        flip = torch.rand(b, generator=generator, device=dev).to(x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
