"""Wide ResNet (Zagoruyko & Komodakis 2016, arXiv 1605.07146), WRN-``depth``-``widen``:
a 16-channel stem and three groups of ``(depth - 4) / 6`` pre-activation blocks with
16k, 32k, 64k channels (k = ``widen``), optional dropout between the two convs of a block."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from erat.models.registry import register_model


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
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


@register_model("wrn-28-10")
def wide_resnet(
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 28,
    widen: int = 10,
    dropout: float = 0.0,
) -> nn.Module:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False)]
    c_in = 16
    for i, c_out in enumerate(widths):
        for j in range(n):
            layers.append(WideBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1, dropout))
            c_in = c_out
    layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in, num_classes))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net
