"""Optimizer and LR schedule of every task: one place that turns the config's partial factories into what
Lightning's ``configure_optimizers`` returns.

A scheduler whose constructor takes ``total_steps`` (``OneCycleLR``, ``task/scheduler=one_cycle``) is stepped
every batch over the run's whole budget (``trainer.estimated_stepping_batches``: max_epochs x batches per epoch,
or max_steps); any other is stepped once per epoch (cosine over ``trainer.max_epochs``, or a plateau scheduler
watching ``monitor``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["configure", "describe", "unwrap"]


def unwrap(factory: Callable[..., Any]) -> Callable[..., Any]:
    """The class/function behind a ``functools.partial`` factory (Hydra wraps partial targets once more)."""
    func = getattr(factory, "func", factory)
    return getattr(func, "target", func)


def describe(factory: Callable[..., Any] | None) -> str | None:
    """Plain-string description of a ``functools.partial`` factory, e.g. ``"torch.optim.adam.Adam(lr=0.001)"``."""
    if factory is None:
        return None
    func = unwrap(factory)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}".lstrip(".")
    kwargs = ", ".join(f"{k}={v!r}" for k, v in getattr(factory, "keywords", {}).items())
    return f"{name}({kwargs})"


def configure(module: pl.LightningModule, optimizer_factory: Callable[..., torch.optim.Optimizer],
              scheduler_factory: Callable[..., Any] | None, monitor: str) -> Any:
    """The optimizer over ``module``'s parameters and, when a scheduler is configured, its Lightning schedule.

    Raises ``ValueError`` for a per-step schedule without a finite budget (a plateau scheduler's ``mode`` against
    its monitor is a config check: :mod:`calib_seg.validation`).
    """
    optimizer = optimizer_factory(params=module.parameters())
    if scheduler_factory is None:
        return optimizer
    target = unwrap(scheduler_factory)
    per_step = "total_steps" in inspect.signature(target).parameters
    if per_step:
        total = module.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("a per-step schedule (total_steps) needs a finite budget: trainer.max_epochs or "
                             "trainer.max_steps")
        scheduler = scheduler_factory(optimizer=optimizer, total_steps=int(total))
    else:
        scheduler = scheduler_factory(optimizer=optimizer)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": "step" if per_step else "epoch",
                         "frequency": 1},
    }
