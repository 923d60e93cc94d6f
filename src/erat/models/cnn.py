"""A small CNN for MNIST-sized inputs, cheap enough on a CPU to train and attack many times:
two conv3x3-ReLU-maxpool stages (32, 64 channels), then a 128-unit hidden layer. No
BatchNorm and no dropout, so train and eval mode compute the same function."""

from __future__ import annotations

from torch import nn

from erat.errors import UserError
from erat.models.registry import register_model


@register_model("cnn")
def cnn(*, in_shape: tuple[int, int, int], num_classes: int, width: int = 32) -> nn.Module:
    c, h, w = in_shape
    if h < 4 or w < 4:
        raise UserError(f"cnn needs inputs of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), 128),  # e.g. 64 x 7 x 7 for 28x28
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )
