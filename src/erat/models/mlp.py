"""Fully connected network of VAT's MNIST experiments (Miyato et al. 2018, arXiv 1704.03976,
Appendix D): hidden layers 1200-600-300-150, each Linear -> BatchNorm1d -> ReLU."""

from __future__ import annotations

import math

from torch import nn

from erat.models.registry import register_model


@register_model("mlp")
def mlp(
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    hidden: tuple[int, ...] = (1200, 600, 300, 150),
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
