"""Point annotations: the Gaussian density-map target and the readers of dot images and points CSVs.

A density map is the sum of one Gaussian of mass ``scale`` per annotated centre inside the image; each Gaussian is
renormalised over the image, so the map integrates to exactly ``scale x count`` even for beads on the border
(a bead belongs to the image when its *centre* does). Centres are ``(y, x)`` in pixels, pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)`` (so the centre of the top-left pixel is ``(0.5, 0.5)``).

Sources of points: synthetic centres (``BeadSet.centres_um``), a bead folder's ``centres.csv``, a points CSV
(``file,x,y`` in pixels), and dot images (one non-zero pixel per object, in any channel).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MapTarget:
    """How centres become a target map: Gaussian sigma (px, or um when the pixel size is known) and scale."""

    sigma_px: float | None = 1.0
    sigma_um: float | None = None
    scale: float = 100.0

    def sigma_for(self, pixel_size_um: float | None) -> float:
        """Sigma in pixels: ``sigma_um / pixel_size_um`` when given in um (needs the pixel size), else ``sigma_px``."""
        if self.sigma_um is not None:
            if not pixel_size_um:
                raise ValueError("sigma_um needs a known pixel size; set data.source.pixel_size_um or use sigma_px")
            return float(self.sigma_um) / float(pixel_size_um)
        if self.sigma_px is None or self.sigma_px <= 0:
            raise ValueError(f"sigma_px must be > 0, got {self.sigma_px}")
        return float(self.sigma_px)


def _axis_weights(pos: np.ndarray, length: int, sigma: float) -> np.ndarray:
    """(n, length) Gaussian weights of each position over pixel centres, each row summing to 1."""
    grid = np.arange(length, dtype=np.float64) + 0.5
    w = np.exp(-0.5 * ((grid[None, :] - pos[:, None]) / sigma) ** 2)
    s = w.sum(axis=1, keepdims=True)
    # a centre far outside the image (never counted, but be safe): put its mass on the nearest pixel
    near = np.clip(np.floor(pos).astype(int), 0, length - 1)
    fallback = np.zeros_like(w)
    fallback[np.arange(len(pos)), near] = 1.0
    return np.where(s > 1e-300, w / np.maximum(s, 1e-300), fallback)


def inside(centres_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the centres whose position lies inside an image of ``shape`` (H, W)."""
    c = np.asarray(centres_px, float).reshape(-1, 2)
    return (c[:, 0] >= 0) & (c[:, 0] < shape[0]) & (c[:, 1] >= 0) & (c[:, 1] < shape[1])


def density_map(centres_px: np.ndarray, shape: tuple[int, int], sigma_px: float, scale: float = 1.0) -> np.ndarray:
    """(H, W) float32 map: ``scale`` x one image-renormalised Gaussian per centre inside ``shape`` (y, x in px)."""
    c = np.asarray(centres_px, float).reshape(-1, 2)
    c = c[inside(c, shape)]
    h, w = shape
    if len(c) == 0:
        return np.zeros((h, w), np.float32)
    gy = _axis_weights(c[:, 0], h, sigma_px)  # separable: the 2-D Gaussian is an outer product per centre
    gx = _axis_weights(c[:, 1], w, sigma_px)
    return (scale * (gy.T @ gx)).astype(np.float32)


def dots_map(centres_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: how many centres inside ``shape`` fall in each pixel (sums to the annotated count)."""
    c = np.asarray(centres_px, float).reshape(-1, 2)
    c = c[inside(c, shape)]
    out = np.zeros(shape, np.float32)
    np.add.at(out, (np.floor(c[:, 0]).astype(int), np.floor(c[:, 1]).astype(int)), 1.0)
    return out


def read_dots(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Centres ``(y, x)`` in px (pixel centres) of a dot image: every pixel non-zero in any channel is one object.

    ``shape`` (H, W) is the image's size; a dots image of another size is a clear error.
    """
    from calib_seg.data.images import read_raw

    arr = np.asarray(read_raw(path))
    if shape is not None and tuple(arr.shape[:2]) != tuple(shape):
        raise ValueError(f"{path}: dots image is {arr.shape[1]}x{arr.shape[0]} px (W x H) but its image is "
                         f"{shape[1]}x{shape[0]}; dot images must have the size of their image")
    if arr.ndim == 3:  # RGB(A): a dot is non-zero in any colour channel (alpha ignored)
        arr = arr[..., : min(3, arr.shape[2])].max(axis=2)
    ys, xs = np.nonzero(arr)
    return np.stack([ys + 0.5, xs + 0.5], axis=1).astype(float) if len(ys) else np.zeros((0, 2))


def read_points_csv(path: str | Path) -> dict[str, np.ndarray]:
    """``file,x,y`` rows (pixels, x to the right, y down; pixel centres at +0.5) -> centres ``(y, x)`` by file.

    A file listed with empty ``x``/``y`` holds no objects. Bad numbers are reported with their line.
    """
    out: dict[str, list[tuple[float, float]]] = {}
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "x", "y"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected file,x,y")
        for line, row in enumerate(reader, start=2):
            pts = out.setdefault(row["file"].strip(), [])
            if not (row["x"] or "").strip() and not (row["y"] or "").strip():
                continue
            try:
                pts.append((float(row["y"]), float(row["x"])))
            except ValueError:
                raise ValueError(f"{path}, line {line}: x/y must be numbers, got {row['x']!r}, {row['y']!r}") from None
    return {k: np.asarray(v, float).reshape(-1, 2) for k, v in out.items()}
