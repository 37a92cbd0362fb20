"""Classical baselines the learned models are compared with (no training beyond a small grid search on train).

- :class:`LoGCounter`: Laplacian-of-Gaussian blob detection (scale-normalised LoG over a few sigmas, local
  maxima above a threshold), then a linear calibration count -> beads/mm² fitted on the training split. The
  threshold and sigma range are chosen on the training split only (lowest calibrated training MAE).
- :class:`OtsuSegmenter`: Otsu threshold + morphological opening/closing; polarity (dark or bright
  foreground) and structuring-element radius chosen on the training images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


# ------------------------------------------------------------------------------------------------ counting
def log_peaks(image: np.ndarray, sigmas: Sequence[float], dark: bool = True, min_distance: int = 1) -> np.ndarray:
    """Strengths of all LoG blob candidates of one image, sorted descending.

    The image (float, any scale) is inverted when beads are ``dark`` (bright-field), filtered with
    ``-sigma² * LoG`` at each sigma (scale-normalised), and the maximum over scales is searched for local maxima
    (``min_distance`` px apart, borders included). Counting the peaks above a threshold ``t`` is then
    ``np.searchsorted(-peaks, -t)``, so a threshold grid search costs nothing more.
    """
    from skimage.feature import peak_local_max

    x = np.asarray(image, dtype=np.float64)
    x = -x if dark else x
    stack = np.stack([-(s**2) * ndimage.gaussian_laplace(x, s, mode="reflect") for s in sigmas])
    response = stack.max(axis=0)
    coords = peak_local_max(response, min_distance=min_distance, threshold_abs=1e-12, exclude_border=False)
    values = response[coords[:, 0], coords[:, 1]] if len(coords) else np.zeros(0)
    return np.sort(values)[::-1]


def count_above(peaks: np.ndarray, threshold: float) -> int:
    """Number of peak strengths (sorted descending) strictly above ``threshold``."""
    return int(np.searchsorted(-peaks, -threshold, side="left"))


@dataclass
class LoGCounter:
    """LoG blob counter + linear calibration (count -> density), tuned on training images only.

    Args:
        sigma_sets: candidate sigma ranges (pixels) of the LoG scale space.
        thresholds: candidate peak thresholds, as fractions of the median 99th-percentile peak strength of the
            training images (so the grid follows the image scale).
        dark: beads darker than the background (bright-field).
    """

    sigma_sets: Sequence[Sequence[float]] = ((0.5, 0.7, 1.0), (0.7, 1.0, 1.4), (1.0, 1.4, 2.0), (1.4, 2.0, 2.8))
    thresholds: Sequence[float] = tuple(np.round(np.geomspace(0.005, 1.0, 30), 4))
    dark: bool = True
    sigmas: tuple[float, ...] = field(default=(), init=False)
    threshold: float = field(default=np.nan, init=False)
    slope: float = field(default=np.nan, init=False)
    intercept: float = field(default=np.nan, init=False)
    train_mae: float = field(default=np.nan, init=False)

    def _peaks(self, images: np.ndarray, sigmas: Sequence[float]) -> list[np.ndarray]:
        return [log_peaks(im, sigmas, dark=self.dark) for im in images]

    def fit(self, images: np.ndarray, density: np.ndarray) -> LoGCounter:
        """Grid search (sigma set x threshold) for the lowest training MAE after a least-squares calibration."""
        density = np.asarray(density, dtype=float)
        best = None
        for sigmas in self.sigma_sets:
            peaks = self._peaks(images, sigmas)
            scale = float(np.median([p[min(len(p) - 1, max(0, len(p) // 100))] if len(p) else 0 for p in peaks]))
            scale = scale if scale > 0 else 1.0
            for frac in self.thresholds:
                t = frac * scale
                counts = np.array([count_above(p, t) for p in peaks], dtype=float)
                slope, intercept = _linear_fit(counts, density)
                mae = float(np.abs(slope * counts + intercept - density).mean())
                if best is None or mae < best[0]:
                    best = (mae, tuple(sigmas), t, slope, intercept)
        self.train_mae, self.sigmas, self.threshold, self.slope, self.intercept = best
        return self

    def count(self, images: np.ndarray) -> np.ndarray:
        """Raw blob counts per image with the tuned sigmas and threshold."""
        return np.array([count_above(p, self.threshold) for p in self._peaks(images, self.sigmas)], dtype=float)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated density (beads/mm²) per image."""
        return self.slope * self.count(images) + self.intercept


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if np.ptp(x) == 0:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


# ------------------------------------------------------------------------------------------------ segmentation
def jaccard_dice(pred: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Foreground Jaccard and Dice pooled over all pixels (1.0 when both are empty)."""
    p, m = np.asarray(pred, bool), np.asarray(mask, bool)
    inter, union = np.logical_and(p, m).sum(), np.logical_or(p, m).sum()
    total = p.sum() + m.sum()
    return (float(inter / union) if union else 1.0), (float(2 * inter / total) if total else 1.0)


@dataclass
class OtsuSegmenter:
    """Otsu threshold per image + opening/closing with a disk; polarity and radius tuned on training images."""

    radii: Sequence[int] = (0, 1, 2, 3, 5, 7)
    smooth_sigma: Sequence[float] = (0.0, 1.0, 2.0)
    dark: bool = True
    radius: int = field(default=0, init=False)
    sigma: float = field(default=0.0, init=False)

    def _segment(self, image: np.ndarray, dark: bool, radius: int, sigma: float) -> np.ndarray:
        from skimage.filters import threshold_otsu
        from skimage.morphology import disk

        x = np.asarray(image, dtype=np.float64)
        if sigma > 0:
            x = ndimage.gaussian_filter(x, sigma)
        t = threshold_otsu(x)
        fg = x < t if dark else x > t
        if radius > 0:
            fp = disk(radius)
            fg = ndimage.binary_closing(ndimage.binary_opening(fg, fp), fp)
        return fg

    def fit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> OtsuSegmenter:
        best = None
        for dark in (True, False):
            for sigma in self.smooth_sigma:
                for radius in self.radii:
                    preds = [self._segment(im, dark, radius, sigma) for im in images]
                    jac, _ = jaccard_dice(np.concatenate([p.ravel() for p in preds]),
                                          np.concatenate([np.asarray(m).ravel() for m in masks]))
                    if best is None or jac > best[0]:
                        best = (jac, dark, radius, sigma)
        _, self.dark, self.radius, self.sigma = best
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self._segment(image, self.dark, self.radius, self.sigma)
