"""Inference choices made on the validation split, never on test: ``task.threshold=auto``, ``task.tta=auto``,
``task.postprocess=auto``.

After training, the best checkpoint predicts the **whole validation images**; every candidate (threshold on a
grid, TTA on/off, post-processing from a grid) is scored by the foreground Jaccard pooled over all validation
pixels, and the best one is used for the test step. Only the options set to ``auto`` are searched; the others stay
at their configured value. The choice and the validation score of every candidate go into ``run.json``
(``inference_choice``), so ``evaluate`` and ``predict`` on that run use the same choice.

Ties are broken towards the plainest candidate (no TTA, no post-processing) and the threshold nearest 0.5, so a
flat curve does not move the threshold for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from calib_seg.tasks.seg_inference import PostProcess, postprocess_proba, tta_proba

__all__ = ["AUTO", "THRESHOLD_GRID", "POSTPROCESS_GRID", "pooled_jaccard", "jaccard_curve",
           "select_inference"]

AUTO = "auto"
#: thresholds searched by ``task.threshold=auto`` (0.05 .. 0.95)
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: post-processing candidates searched by ``task.postprocess=auto`` (median side x smallest kept component)
POSTPROCESS_GRID: tuple[dict[str, int], ...] = tuple(
    {"median": m, "min_size": s} for m in (0, 5) for s in (0, 300, 1000, 3000)
)


def pooled_jaccard(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float) -> float:
    """Foreground Jaccard of ``probs > threshold`` against binary ``masks``, pixels pooled over all images
    (``BinaryJaccardIndex``'s rule; 0 when prediction and mask are both empty)."""
    tp = fp = fn = 0
    for p, m in zip(probs, masks):
        pred, true = p > threshold, m > 0
        tp += int(np.count_nonzero(pred & true))
        fp += int(np.count_nonzero(pred & ~true))
        fn += int(np.count_nonzero(~pred & true))
    union = tp + fp + fn
    return tp / union if union else 0.0


def jaccard_curve(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  thresholds: Iterable[float]) -> list[float]:
    """:func:`pooled_jaccard` at every threshold."""
    return [pooled_jaccard(probs, masks, float(t)) for t in thresholds]


def _options(value: Any, grid: Sequence[Any]) -> list[Any]:
    return list(grid) if isinstance(value, str) and value == AUTO else [value]


def _score_tta_option(probs: list[np.ndarray], masks: list[np.ndarray], thresholds: Sequence[float],
                      postprocesses: Sequence[Mapping[str, int]]) -> list[dict[str, Any]]:
    """Every (post-processing, threshold) candidate on one set of validation probability maps."""
    rows = []
    for median in sorted({int(pp.get("median") or 0) for pp in postprocesses}):
        filtered = [postprocess_proba(torch.from_numpy(p), PostProcess(median=median)).numpy() for p in probs]
        for pp in (pp for pp in postprocesses if int(pp.get("median") or 0) == median):
            min_size = int(pp.get("min_size") or 0)
            for t in thresholds:
                final = filtered if not min_size else [
                    postprocess_proba(torch.from_numpy(p), PostProcess(min_size=min_size, threshold=t)).numpy()
                    for p in filtered]
                rows.append({"postprocess": {"median": median, "min_size": min_size}, "threshold": float(t),
                             "val_jaccard": pooled_jaccard(final, masks, t)})
    return rows


def select_inference(proba_fn: Callable[[torch.Tensor], torch.Tensor],
                     batches: Iterable[Mapping[str, torch.Tensor]], threshold: float | str, tta: bool | str,
                     postprocess: Mapping[str, int] | str | None,
                     thresholds: Sequence[float] = THRESHOLD_GRID,
                     postprocess_grid: Sequence[Mapping[str, int]] = POSTPROCESS_GRID) -> dict[str, Any]:
    """Choose threshold / TTA / post-processing (those set to ``"auto"``) on validation ``batches``.

    Args:
        proba_fn: plain whole-image probabilities ``(B, 1, H, W)`` (no TTA, no post-processing).
        batches: validation batches ``{"image", "mask"}`` of whole images.
        threshold, tta, postprocess: the configured values; ``"auto"`` = search ``thresholds`` / {off, on} /
            ``postprocess_grid``.

    Returns:
        ``{"threshold", "tta", "postprocess", "val_jaccard", "searched", "source": "val", "n_images",
        "candidates"}``; ``candidates`` holds the validation Jaccard of every combination tried.
    """
    images, masks = [], []
    for batch in batches:
        images.extend(batch["image"].split(1))
        masks.extend(m.squeeze().cpu().numpy() for m in batch["mask"].split(1))
    if not images:
        raise ValueError("no validation images to choose the threshold/TTA/post-processing on")
    pp_default = {"median": 0, "min_size": 0} if postprocess is None else postprocess
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for use_tta in _options(tta, (False, True)):
            probs = [(tta_proba(proba_fn, x) if use_tta else proba_fn(x)).squeeze().float().cpu().numpy()
                     for x in images]
            for row in _score_tta_option(probs, masks, _options(threshold, thresholds),
                                         _options(pp_default, postprocess_grid)):
                rows.append({"tta": bool(use_tta), **row})
    plainness = [(r["tta"], r["postprocess"]["median"], r["postprocess"]["min_size"]) for r in rows]
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_jaccard"], -abs(rows[i]["threshold"] - 0.5),
                                                tuple(-v for v in plainness[i])))
    searched = [name for name, v in (("threshold", threshold), ("tta", tta), ("postprocess", postprocess))
                if isinstance(v, str) and v == AUTO]
    return {**rows[best], "searched": searched, "source": "val", "n_images": len(images), "candidates": rows}
