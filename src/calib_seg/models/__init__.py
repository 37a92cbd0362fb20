"""Plain nn.Modules (no Lightning): density regressors, segmentation networks, factories."""

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
