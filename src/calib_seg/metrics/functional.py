"""The functional core of the metrics we own: arrays or tensors in, plain values out, no state, no processes.

The metric classes (:mod:`calib_seg.metrics.regression`, :mod:`calib_seg.metrics.segmentation`) keep states
that sync over DDP ranks and call these functions in ``compute()``; the guard, the figures and the data room
call them directly. Each function computes its number in exactly one way, so a value logged by a task, drawn
in a figure and checked by the guard is the same float.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional import r2_score

__all__ = ["max_abs_error", "per_level_mae", "spread_stats", "oracle_metrics", "threshold_stats",
           "jaccard_from_stats", "best_threshold", "binary_jaccard"]


# ------------------------------------------------------------------------------------------------ regression
def max_abs_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Largest ``|pred - target|`` in float64 (0 for empty inputs, the identity of ``max`` over errors >= 0)."""
    err = (pred.double() - target.double()).abs()
    return err.max() if err.numel() else torch.tensor(0.0, dtype=torch.float64, device=err.device)


def per_level_mae(pred: np.ndarray, target: np.ndarray, level: np.ndarray) -> dict[float, float]:
    """MAE (float64) of the samples of each distinct ``level`` value (e.g. dilution), ascending level order.

    ``np.unique`` collapses NaN levels into one NaN key whose MAE is NaN (no sample equals NaN): unknown
    dilutions give one ``nan`` entry, not one per sample.
    """
    pred, target, level = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (pred, target, level))
    err = np.abs(pred - target)
    out = {}
    for d in np.unique(level):
        sel = err[level == d]
        out[float(d)] = float(sel.mean()) if sel.size else float("nan")
    return out


def spread_stats(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Std (ddof=0) and max-min range of predictions and targets (the guard's collapse rule); {} below 2 samples."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    if pred.size < 2 or target.size < 2:
        return {}
    return {"pred_std": float(pred.std()), "target_std": float(target.std()),
            "pred_range": float(np.ptp(pred)), "target_range": float(np.ptp(target))}


def oracle_metrics(oracle: np.ndarray | None, target: np.ndarray, prefix: str = "test") -> dict[str, float]:
    """R² and MAE of the oracle counter (realised count / FOV area) against the nominal densities of a split.

    The oracle is the Poisson floor no counter can beat: a model's R²/MAE next to these says how much of its
    error is counting statistics. Empty when counts are unknown (``oracle`` None, e.g. real data); R² is NaN
    when the split holds one density level (SS_tot = 0), recorded as null.
    """
    if oracle is None:
        return {}
    o, t = torch.as_tensor(oracle), torch.as_tensor(target)
    r2 = float(r2_score(o, t)) if len(np.unique(target)) > 1 else float("nan")
    return {f"{prefix}/r2_oracle": r2, f"{prefix}/mae_oracle": float((o - t).abs().mean())}


# ------------------------------------------------------------------------------------------------ segmentation
def threshold_stats(preds: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Pixel counts ``[tp, fp, fn]`` (int64, shape ``(1 + T, 3)``) of binary predictions ``preds > t``.

    Row 0 is the all-foreground prediction (every pixel foreground: tp = foreground, fp = background, fn = 0),
    rows 1.. the ``thresholds`` in order. ``preds`` are probabilities; each threshold is compared in ``preds``'
    dtype, as torchmetrics compares a tensor with a Python float threshold. ``target`` holds 0/1.
    """
    p = preds.reshape(-1)
    truth = target.reshape(-1) > 0.5
    positives = truth.sum()
    total = torch.tensor(truth.numel(), dtype=torch.long, device=p.device)
    rows = [torch.stack([positives, total - positives, torch.zeros_like(positives)])]
    if len(thresholds):
        th = torch.tensor(list(thresholds), dtype=p.dtype, device=p.device)
        hard = p.unsqueeze(0) > th.unsqueeze(1)  # (T, N)
        tp = (hard & truth).sum(1)
        rows.append(torch.stack([tp, hard.sum(1) - tp, positives - tp], dim=1))
    return torch.cat([r.reshape(-1, 3) for r in rows]).long()


def jaccard_from_stats(stats: torch.Tensor) -> torch.Tensor:
    """Jaccard ``tp / (fp + fn + tp)`` per row of :func:`threshold_stats` counts (float32; 0 where empty).

    The arithmetic is torchmetrics' ``BinaryJaccardIndex`` on its confusion matrix (counts cast to float32
    first, then summed as ``(fp + fn) + tp``), so the numbers are the same to the last bit.
    """
    s = stats.float()
    tp, fp, fn = s[..., 0], s[..., 1], s[..., 2]
    denom = fp + fn + tp
    return torch.where(denom != 0, tp / denom, torch.zeros((), dtype=tp.dtype, device=tp.device))


def best_threshold(thresholds: Sequence[float], values: torch.Tensor) -> torch.Tensor:
    """The threshold with the highest value (the first one on ties), as a float32 tensor."""
    return torch.tensor(list(thresholds)[int(values.argmax())])


def binary_jaccard(pred: np.ndarray, truth: np.ndarray, empty: float = 1.0) -> float:
    """Foreground Jaccard of two boolean masks; ``empty`` when both are empty (a perfect 'nothing here')."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else float(empty)
