"""VAT's 13-layer "Conv-Large" for 32x32 images (Miyato et al. 2018, arXiv 1704.03976,
Table 5; after Laine & Aila 2017): every conv is followed by BatchNorm and LeakyReLU(0.1).

``width`` scales the channels (128 in the paper: 128, 256, 512, 256, 128). Inputs as small as
8x8 work: the "valid" 3x3 conv gets padding when the feature map is below 3x3.
"""

from __future__ import annotations

from torch import nn

from erat.errors import UserError
from erat.models.registry import register_model


def _conv(c_in: int, c_out: int, k: int = 3, pad: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=pad), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


@register_model("conv-large")
def conv_large(
    *, in_shape: tuple[int, int, int], num_classes: int, width: int = 128, dropout: float = 0.5
) -> nn.Module:
    c, h, w = in_shape
    if min(h, w) < 8:
        raise UserError(f"conv-large needs inputs of at least 8x8, got {h}x{w}")
    w1, w2, w3 = width, 2 * width, 4 * width
    valid_pad = 1 if min(h, w) // 4 < 3 else 0  # the paper's 32x32 input: 8x8 -> 6x6
    return nn.Sequential(
        *_conv(c, w1), *_conv(w1, w1), *_conv(w1, w1),
        nn.MaxPool2d(2), nn.Dropout(dropout),
        *_conv(w1, w2), *_conv(w2, w2), *_conv(w2, w2),
        nn.MaxPool2d(2), nn.Dropout(dropout),
        *_conv(w2, w3, 3, valid_pad), *_conv(w3, w2, 1, 0), *_conv(w2, w1, 1, 0),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(w1, num_classes),
    )  # fmt: skip
