"""Density regressors: plain CNN (C01..C04, Baseline_Shallow/Deep) and a residual variant (ResNet_Deep).

Both end in global average pooling and a **linear** head. The seed study's primary diagnosis was a ReLU on the
output; ``head_activation`` exists only so that failure can be reproduced on purpose (``experiment=repro_*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from calib_seg.models import norm_layer

HEAD_ACTIVATIONS = {None: nn.Identity, "none": nn.Identity, "relu": nn.ReLU, "softplus": nn.Softplus}


def _check_filters(filters: Sequence[int]) -> list[int]:
    filters = [int(f) for f in filters]
    if not filters or any(f < 1 for f in filters):
        raise ValueError(f"filters must be a non-empty list of positive integers, got {list(filters)}")
    return filters


def _head(channels: int, hidden: int, activation: str | None) -> nn.Sequential:
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"head_activation must be one of {list(HEAD_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    if hidden:
        layers += [nn.Linear(channels, hidden), nn.ReLU(inplace=True)]
        channels = hidden
    layers += [nn.Linear(channels, 1), HEAD_ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class _PooledRegressor(nn.Module):
    """``features`` -> global average pooling -> head; subclasses build ``features``."""

    features: nn.Module

    def _finish(self, channels: int, head_hidden: int, head_activation: str | None) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = _head(channels, head_hidden, head_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B,) outputs in the task's (transformed) target units."""
        return self.head(self.pool(self.features(x))).squeeze(-1)


class DensityCNN(_PooledRegressor):
    """Stages of ``convs_per_stage`` 3x3 conv + norm + ReLU, each stage followed by 2x2 max pooling.

    Args:
        filters: channels of each stage, e.g. ``[16, 32, 64]`` (C01).
        convs_per_stage: conv layers per stage (Baseline_Deep: 4 stages x 3 = 12 layers).
        norm: normalisation after each conv: ``batch``, ``group`` or ``none``.
        head_hidden: width of the hidden layer of the head (0 = linear read-out of the pooled features).
        head_activation: ``None`` (default, linear output). ``relu``/``softplus`` only reproduce the seed failure.
        in_channels: image channels (1 for grey microscopy).
    """

    def __init__(
        self,
        filters: Sequence[int] = (16, 32, 64),
        convs_per_stage: int = 2,
        norm: str | None = "batch",
        head_hidden: int = 64,
        head_activation: str | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        filters = _check_filters(filters)
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        layers: list[nn.Module] = []
        c = in_channels
        for i, f in enumerate(filters):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, f, 3, padding=1, bias=norm in (None, "none")), norm_layer(norm, f),
                           nn.ReLU(inplace=True)]
                c = f
            if i < len(filters) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self._finish(c, head_hidden, head_activation)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: str | None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm_layer(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm_layer(norm, c_out),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                                                       norm_layer(norm, c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class DensityResNet(_PooledRegressor):
    """Residual density regressor: a stem conv, then per stage ``blocks_per_stage`` residual blocks (2 convs each).

    ResNet_Deep: filters [64, 128, 256, 512], 1 block per stage -> 1 stem + 8 block convs + 3 projection convs = 12
    weight layers. Same linear head as :class:`DensityCNN`.
    """

    def __init__(
        self,
        filters: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: int = 1,
        norm: str | None = "batch",
        head_hidden: int = 64,
        head_activation: str | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        filters = _check_filters(filters)
        stem = nn.Sequential(nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False),
                             norm_layer(norm, filters[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = [stem]
        c = filters[0]
        for i, f in enumerate(filters):
            for _ in range(blocks_per_stage):
                stages.append(_ResBlock(c, f, norm))
                c = f
            if i < len(filters) - 1:
                stages.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*stages)
        self._finish(c, head_hidden, head_activation)

