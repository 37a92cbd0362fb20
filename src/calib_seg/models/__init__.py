"""Plain nn.Modules (no Lightning): density regressors, segmentation networks, factories."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


NORMS = ("batch", "group", "none")


def norm_layer(kind: str | None, channels: int) -> nn.Module:
    """``batch`` | ``group`` (up to 8 groups that divide ``channels``) | ``none``/None; anything else is an error."""
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups is the usual choice; fall back to fewer when the width is small or not divisible
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)
    raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")
