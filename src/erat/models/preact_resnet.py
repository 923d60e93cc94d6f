"""Pre-activation ResNet-18 (He et al. 2016, arXiv 1603.05027), CIFAR variant: a 3x3 stem,
four stages of two basic blocks (64, 128, 256, 512 channels; ``width`` scales them), a final
BN-ReLU and global average pooling (as in Rice et al. 2020's adversarial-training baseline)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from erat.models.registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016), optional dropout between its two convs
    (as in Wide ResNets, which use this block too)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.dropout(F.relu(self.bn2(self.conv1(out))))
        return self.conv2(out) + skip


@register_model("preact-resnet18")
def preact_resnet18(
    *, in_shape: tuple[int, int, int], num_classes: int, width: int = 64
) -> nn.Module:
    widths = [width, 2 * width, 4 * width, 8 * width]
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False)]
    c_in = width
    for i, c_out in enumerate(widths):
        layers += [PreActBlock(c_in, c_out, 1 if i == 0 else 2), PreActBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in, num_classes))
