"""Wide ResNet (Zagoruyko & Komodakis 2016, arXiv 1605.07146), WRN-``depth``-``widen``:
a 16-channel stem and three groups of ``(depth - 4) / 6`` pre-activation blocks with
16k, 32k, 64k channels (k = ``widen``), optional dropout between the two convs of a block."""

from __future__ import annotations

from torch import nn

from erat.errors import UserError
from erat.models.preact_resnet import PreActBlock
from erat.models.registry import register_model


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
        raise UserError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    n, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False)]
    c_in = 16
    for i, c_out in enumerate(widths):
        for j in range(n):
            layers.append(PreActBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1, dropout))
            c_in = c_out
    layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in, num_classes))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net
