"""Jaccard at every threshold of a curve, and the all-foreground baseline, from one count state.

One ``(1 + T, 3)`` int64 state of ``[tp, fp, fn]`` pixel counts (row 0: the all-foreground prediction; rows 1..:
``probs > t`` for each curve threshold), summed over batches and DDP ranks. Integer counts make the DDP result
exactly the single-process one, and :func:`~calib_seg.metrics.functional.jaccard_from_stats` reproduces
torchmetrics' ``BinaryJaccardIndex`` arithmetic, so every value equals one ``BinaryJaccardIndex(threshold=t)``
per threshold to the last bit, at the cost of one state instead of T metric objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from calib_seg.metrics import functional as F

__all__ = ["JaccardCurve", "curve_key"]


def curve_key(threshold: float) -> str:
    """Name of the Jaccard at one curve threshold, e.g. ``jaccard_t0.10``."""
    return f"jaccard_t{threshold:.2f}"


class JaccardCurve(Metric):
    """Foreground Jaccard of ``probs > t`` for each of ``thresholds``, plus the all-foreground baseline.

    ``compute()`` returns ``{"jaccard_all_foreground": ..., "jaccard_t0.10": ..., ..., "best_threshold": ...}``
    (only the baseline when ``thresholds`` is empty). ``update(preds, target)`` takes probabilities in [0, 1]
    (never logits) and 0/1 masks of the same shape; the headline metrics validate both.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: Sequence[float] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        if not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"curve thresholds must be in (0, 1), got {thresholds}")
        self.add_state("stats", default=torch.zeros(1 + len(self.thresholds), 3, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.stats += F.threshold_stats(preds.detach(), target.detach(), self.thresholds)

    def compute(self) -> dict[str, torch.Tensor]:
        values = F.jaccard_from_stats(self.stats)
        out = {"jaccard_all_foreground": values[0]}
        if self.thresholds:
            out.update({curve_key(t): v for t, v in zip(self.thresholds, values[1:])})
            out["best_threshold"] = F.best_threshold(self.thresholds, values[1:])
        return out
