"""Fully convolutional density-map counter (FCRN / U-Net density regressor, Xie, Noble & Zisserman 2016).

The network maps an image of any size and channel count to a non-negative map of the same size whose integral,
divided by the target's scale, is the object count (the task does the dividing). It is a small U-Net: one
encoder stage per entry of ``filters`` (``convs_per_stage`` 3x3 conv-norm-ReLU layers, 2x2 max-pool between
stages), a mirrored decoder with transposed-conv up-sampling and concatenated skips, a 1x1 head, then a ReLU or
softplus so the map cannot integrate negative "anti-objects". Inputs are reflect-padded to a multiple of
``2**(len(filters) - 1)`` and the output is cropped back, so any H x W works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calib_seg.models import NORMS, norm_layer

#: allowed ``out_activation`` values: both keep the map >= 0
OUT_ACTIVATIONS = ("relu", "softplus")


def _stage(cin: int, cout: int, convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, padding=1, bias=norm == "none"),
                   norm_layer(norm, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DensityMapNet(nn.Module):
    """Image ``(B, C, H, W)`` -> non-negative density map ``(B, 1, H, W)``, for any H and W.

    Args:
        in_channels: image channels.
        filters: width of each resolution level, finest first (the last is the bottleneck).
        convs_per_stage: 3x3 convolutions per stage.
        norm: ``batch`` | ``group`` | ``none``.
        out_activation: ``relu`` (exact zeros in the background) or ``softplus``.
    """

    def __init__(self, in_channels: int = 1, filters: Sequence[int] = (16, 32, 64), convs_per_stage: int = 2,
                 norm: str = "batch", out_activation: str = "relu") -> None:
        super().__init__()
        filters = [int(f) for f in filters]
        if out_activation not in OUT_ACTIVATIONS:
            raise ValueError(f"out_activation must be one of {OUT_ACTIVATIONS}, got {out_activation!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not filters or min(filters) < 1 or convs_per_stage < 1 or in_channels < 1:
            raise ValueError(f"need >= 1 filters level, positive widths and convs, got {filters}, {convs_per_stage}")
        self.in_channels, self.out_activation = in_channels, out_activation
        self.size_divisor = 2 ** (len(filters) - 1)
        self.down = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.down.append(_stage(cin, f, convs_per_stage, norm))
            cin = f
        self.ups = nn.ModuleList(nn.ConvTranspose2d(filters[i + 1], filters[i], 2, stride=2)
                                 for i in reversed(range(len(filters) - 1)))
        self.dec = nn.ModuleList(_stage(2 * filters[i], filters[i], convs_per_stage, norm)
                                 for i in reversed(range(len(filters) - 1)))
        self.head = nn.Conv2d(filters[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The density map, same H x W as ``x``."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.size_divisor, (-w) % self.size_divisor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if h > ph and w > pw else "replicate")
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        y = self.head(x)[..., :h, :w]
        return F.relu(y) if self.out_activation == "relu" else F.softplus(y)

