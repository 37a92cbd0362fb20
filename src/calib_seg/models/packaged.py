"""The trained network as a model package carries it: built from a class path and keyword arguments.

BioImage Model Zoo packages describe PyTorch state-dict weights by an importable callable plus YAML keyword
arguments. :class:`PackagedNetwork` is that callable for every calib_seg network: it builds the network named by
``architecture`` (the ``_target_`` of the run's model config) and gives its output the package's axes. Density
regressors return one value per image, ``(B,)``; the package declares a ``(batch, channel)`` output, so the
scalar gets a channel axis of size 1. Segmentation networks already return ``(B, 1, H, W)`` logits.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn


def import_callable(path: str) -> Any:
    """The object named by a dotted path such as ``calib_seg.models.unet.UNet``."""
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ValueError(f"architecture must be a dotted path like calib_seg.models.unet.UNet, got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import architecture {path!r}: {exc}") from exc


class PackagedNetwork(nn.Module):
    """``architecture(**kwargs)`` with package-shaped output.

    Args:
        architecture: dotted path of the network class or factory (the model config's ``_target_``).
        kwargs: its keyword arguments (the rest of the model config).
        scalar_output: the network returns ``(B,)``; reshape to ``(B, 1)``.
    """

    def __init__(self, architecture: str, kwargs: dict[str, Any] | None = None, scalar_output: bool = False):
        super().__init__()
        self.net = import_callable(architecture)(**(kwargs or {}))
        self.scalar_output = bool(scalar_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y.reshape(-1, 1) if self.scalar_output else y
