"""The metric collection of each task and stage, and the one way every task logs it.

A task holds ``self.val_metrics`` and ``self.test_metrics``, both built by :func:`stage_metrics`; its
``*_step`` calls ``update`` and its ``on_*_epoch_end`` calls :func:`log_stage`, which computes the collection
(synced over DDP ranks by torchmetrics), logs every value under its documented name (docs/CONVENTIONS.md
"Metric names") and resets it. Nothing is logged as a metric object from a step, so both tasks' numbers
appear at the same moment of the epoch and the guard, checkpointing and the run record read the same values.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall

from calib_seg.metrics.regression import LevelAwareR2Score, MaxAbsoluteError, PercentMAPE, PerLevelMAE
from calib_seg.metrics.segmentation import JaccardCurve

__all__ = ["stage_metrics", "density_metrics", "segmentation_metrics", "log_stage"]


def density_metrics(stage: str) -> dict[str, Metric]:
    """Physical-unit metrics of the density task (beads/mm², MAPE in %); test adds the per-dilution MAE."""
    metrics: dict[str, Metric] = {
        "r2": LevelAwareR2Score(),
        "mse": MeanSquaredError(),
        "rmse": MeanSquaredError(squared=False),
        "mae": MeanAbsoluteError(),
        "mape": PercentMAPE(),
        "max_error": MaxAbsoluteError(),
    }
    if stage == "test":  # member names sort alphabetically; this one after "rmse", as the names were logged
        metrics["stratified_mae"] = PerLevelMAE("mae_dilution_{:g}x")
    return metrics


def segmentation_metrics(stage: str, threshold: float = 0.5, thresholds_curve: Sequence[float] = ()) -> dict[str, Metric]:
    """Foreground metrics at ``threshold`` on probabilities, the all-foreground baseline and, on test, the
    Jaccard-vs-threshold curve with its best threshold (one :class:`JaccardCurve` state for all of them)."""
    return {
        "jaccard": BinaryJaccardIndex(threshold=threshold),
        "dice": BinaryF1Score(threshold=threshold),
        "precision": BinaryPrecision(threshold=threshold),
        "recall": BinaryRecall(threshold=threshold),
        # sorts after "recall": the baseline and curve are logged after the headline metrics, as before
        "threshold_curve": JaccardCurve(thresholds_curve if stage == "test" else ()),
    }


_FACTORIES = {"density": density_metrics, "segmentation": segmentation_metrics}


def stage_metrics(task: str, stage: str, **options: Any) -> MetricCollection:
    """The ``MetricCollection`` of ``task`` (``density`` or ``segmentation``) for ``stage``, keys ``<stage>/<name>``.

    ``options`` go to the task's factory (segmentation: ``threshold``, ``thresholds_curve``). Update it with
    ``(preds, target)`` plus keyword inputs a member needs (density test: ``level=`` the dilution per sample);
    the collection hands each member only the keywords its ``update`` accepts.
    """
    if task not in _FACTORIES:
        raise ValueError(f"no metrics for task {task!r}; known: {', '.join(_FACTORIES)}")
    return MetricCollection(_FACTORIES[task](stage, **options), prefix=f"{stage}/")


def log_stage(module: Any, metrics: MetricCollection, prog_bar: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Compute ``metrics``, log each value (float32, epoch level) through ``module.log``, reset; returns the values.

    Call it from ``on_validation_epoch_end`` / ``on_test_epoch_end``: the values are already reduced over the
    epoch and the DDP ranks, so they are logged once, without ``sync_dist``.
    """
    values = metrics.compute()
    for key, value in values.items():
        module.log(key, value.float(), prog_bar=key in prog_bar)
    metrics.reset()
    return values
