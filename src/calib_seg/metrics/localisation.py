"""Localisation of counted objects: peaks of a density map matched to annotated centres.

A low count error can hide false positives and misses that cancel; matching the map's peaks to the annotated
centres within a radius gives precision, recall and F1 (one-to-one matching, closest pairs first).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def find_peaks(dmap: torch.Tensor, threshold: float, window: int = 3) -> list[np.ndarray]:
    """Local maxima ``(y, x)`` (pixel centres, +0.5) above ``threshold`` of each map in a ``(B, 1, H, W)`` batch."""
    pooled = F.max_pool2d(dmap, window, stride=1, padding=window // 2)
    peak = (dmap == pooled) & (dmap > threshold)
    out = []
    for b in range(dmap.shape[0]):
        ys, xs = torch.nonzero(peak[b, 0], as_tuple=True)
        out.append(np.stack([ys.cpu().numpy() + 0.5, xs.cpu().numpy() + 0.5], axis=1).astype(float))
    return out


def dots_to_points(dots: torch.Tensor) -> np.ndarray:
    """Centres (pixel centres) of a ``(H, W)`` dots map, a pixel holding k objects listed k times."""
    d = dots.detach().cpu().numpy()
    ys, xs = np.nonzero(d > 0.5)
    reps = np.rint(d[ys, xs]).astype(int)
    return np.repeat(np.stack([ys + 0.5, xs + 0.5], axis=1).astype(float), reps, axis=0).reshape(-1, 2)


def match_points(pred: np.ndarray, true: np.ndarray, radius: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): greedy one-to-one matching, closest pairs first,
    of predicted to true points no farther apart than ``radius``."""
    pred, true = np.asarray(pred, float).reshape(-1, 2), np.asarray(true, float).reshape(-1, 2)
    if len(pred) == 0 or len(true) == 0:
        return 0, len(pred), len(true)
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(true), radius, output_type="ndarray")
    used_p, used_t = set(), set()
    for i, j, _ in sorted(pairs.tolist(), key=lambda r: r[2]):
        if i not in used_p and j not in used_t:
            used_p.add(int(i))
            used_t.add(int(j))
    tp = len(used_p)
    return tp, len(pred) - tp, len(true) - tp


def f1_from_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall and F1 from match counts (1.0 when there was nothing to find and nothing was found)."""
    precision = tp / (tp + fp) if tp + fp else 1.0 if fn == 0 else 0.0
    recall = tp / (tp + fn) if tp + fn else 1.0 if fp == 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loc_precision": precision, "loc_recall": recall, "loc_f1": f1}
