"""Synthetic fluorescence cells in the dot-annotated counting format (a stand-in for the public cell sets).

One RGB image of stained cells and its dots image (black, one red pixel at each counted cell's centre), drawn
with the bead simulator's optics (:func:`calib_seg.data.simulators.beads.stamp` chord-length profiles, a
Gaussian PSF with per-image defocus, vignetting, shot and read noise), top to bottom:

1. **Sample**: the number of counted cells is log-uniform in ``count_range``; a random share of them sits in a few
   Gaussian clusters, the rest uniformly. Cells just outside the border (same density) are drawn but not counted:
   objects count by their centre, as the readers crop them. Two counted centres never share a pixel, so the dots
   image holds exactly one pixel per counted cell.
2. **Cells**: an elliptical cytoplasm (log-normal radius around a per-image size, aspect, orientation, log-normal
   brightness: some cells are dim) plus a brighter, smaller nucleus off the centre by up to a third of the
   radius. Emission adds, so overlapping cells are brighter, and the camera saturates at full scale.
3. **Optics and camera**: Gaussian blur, a smooth autofluorescence background with vignetting, then per colour
   channel photon shot noise and read noise, quantised to 8 bits. Cytoplasm emits mostly blue and green, the
   nucleus adds red.

Image ``i`` depends only on ``(seed, i)``: a set of 50 images is the first 50 of a set of 200.
:func:`calib_seg.data.sources.point_folder.write_dots_folder` writes a set in the flat layout ``images/<stem>.png`` + ``dots/<stem>.png``
(``python -m calib_seg.synth dots``). The images are synthetic; they resemble, but are not, real cell images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from calib_seg.data.simulators.beads import stamp

#: bump when a change alters the images a (seed, params) pair gives
GENERATOR_VERSION = "cells_synth/1"


@dataclass(frozen=True)
class CellParams:
    """Appearance parameters of the synthetic cells (sizes in px, intensities in fractions of full scale)."""

    size: int = 256
    count_range: tuple[int, int] = (20, 300)  # counted cells per image, log-uniform
    radius_range: tuple[float, float] = (3.5, 5.5)  # per-image mean cytoplasm radius
    radius_sd: float = 0.2  # sigma of log(radius) within an image
    max_aspect: float = 1.6  # cytoplasm ellipse aspect, uniform in [1, max_aspect]
    brightness_sd: float = 0.45  # sigma of log(brightness)
    nucleus_fraction: float = 0.5  # nucleus radius / cytoplasm radius
    nucleus_gain: float = 0.8  # extra emission of the nucleus, relative to the cytoplasm's
    cluster_share_max: float = 0.6  # share of clustered cells, uniform in [0, this] per image
    cluster_spread: tuple[float, float] = (6.0, 16.0)  # SD of a cluster, px
    cell_level: float = 0.6  # peak emission of an average cytoplasm before blur
    psf_sigma_px: float = 1.0
    defocus_sigma_px: float = 0.5  # per-image extra blur |N(0, s)|
    background_level: float = 0.04
    autofluorescence: float = 0.03  # amplitude of the smooth background
    vignetting: float = 0.2
    full_well_e: float = 300.0  # photo-electrons at full scale per channel (sets the shot noise)
    read_noise_e: float = 2.0

    def __post_init__(self) -> None:
        lo, hi = self.count_range
        if not 0 < lo <= hi:
            raise ValueError(f"count_range must be (low, high) with 0 < low <= high, got {self.count_range}")
        if hi > self.size * self.size // 4:
            raise ValueError(f"count_range high {hi} is too many cells for {self.size}x{self.size} px")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 px, got {self.size}")


#: colour of each emission component (R, G, B weights)
CYTOPLASM_RGB = np.array([0.15, 0.6, 1.0])
NUCLEUS_RGB = np.array([1.0, 0.35, 0.5])


@dataclass
class CellImage:
    """One synthetic image: RGB uint8 (H, W, 3), counted centres (y, x) px, their count."""

    image: np.ndarray
    centres_px: np.ndarray
    count: int

    def dots(self) -> np.ndarray:
        """The dots image: black RGB uint8 of the image's size, one red (255, 0, 0) pixel per counted centre."""
        out = np.zeros_like(self.image)
        yx = np.floor(self.centres_px).astype(int)
        out[yx[:, 0], yx[:, 1], 0] = 255
        return out


def _counted_centres(rng: np.random.Generator, n: int, p: CellParams) -> np.ndarray:
    """``n`` centres inside the image, a random share of them clustered, no two in the same pixel."""
    s = p.size
    share = rng.uniform(0.0, p.cluster_share_max)
    n_clusters = int(rng.integers(1, 5))
    hubs = rng.uniform(0.15 * s, 0.85 * s, size=(n_clusters, 2))
    spread = rng.uniform(*p.cluster_spread, size=n_clusters)
    taken: set[tuple[int, int]] = set()
    out = np.empty((n, 2))
    k = 0
    while k < n:
        if rng.random() < share:
            j = int(rng.integers(n_clusters))
            c = hubs[j] + spread[j] * rng.standard_normal(2)
        else:
            c = rng.uniform(0.0, s, size=2)
        pix = (int(np.floor(c[0])), int(np.floor(c[1])))
        if not (0 <= pix[0] < s and 0 <= pix[1] < s) or pix in taken:
            continue  # outside, or the pixel already holds a centre: draw again
        taken.add(pix)
        out[k] = c
        k += 1
    return out


def _border_centres(rng: np.random.Generator, n: int, margin: float, p: CellParams) -> np.ndarray:
    """Uncounted cells with centres in a band of ``margin`` px around the image, at the image's density."""
    s = p.size
    side = s + 2 * margin
    m = rng.poisson(n * (side**2 - s**2) / s**2)
    c = rng.uniform(-margin, s + margin, size=(m, 2))
    return c[~np.all((c >= 0) & (c < s), axis=1)]


def render_cells(rng: np.random.Generator, p: CellParams | None = None) -> CellImage:
    """One synthetic fluorescence image of cells with its counted centres (see the module docstring)."""
    p = p or CellParams()
    s = p.size
    lo, hi = p.count_range
    n = int(np.clip(np.round(np.exp(rng.uniform(np.log(lo), np.log(hi + 0.5)))), lo, hi))
    r0 = rng.uniform(*p.radius_range)
    counted = _counted_centres(rng, n, p)
    centres = np.concatenate([counted, _border_centres(rng, n, 2.0 * p.radius_range[1], p)])
    m = len(centres)
    radius = r0 * np.exp(p.radius_sd * rng.standard_normal(m))
    bright = p.cell_level * np.exp(p.brightness_sd * rng.standard_normal(m) - 0.5 * p.brightness_sd**2)
    aspect = rng.uniform(1.0, p.max_aspect, m)
    angle = rng.uniform(0.0, np.pi, m)
    cyto = np.zeros((s, s))
    stamp(cyto, centres, radius, bright, aspect=aspect, angle=angle)
    nucleus = np.zeros((s, s))
    shift = radius[:, None] / 3.0 * rng.uniform(-1.0, 1.0, size=(m, 2))
    stamp(nucleus, centres + shift, p.nucleus_fraction * radius, p.nucleus_gain * bright)

    sigma = p.psf_sigma_px + abs(rng.normal(0.0, p.defocus_sigma_px))
    signal = (ndimage.gaussian_filter(cyto, sigma)[..., None] * CYTOPLASM_RGB
              + ndimage.gaussian_filter(nucleus, sigma)[..., None] * NUCLEUS_RGB)
    glow = ndimage.gaussian_filter(rng.standard_normal((s, s)), s / 8.0)
    glow = p.background_level + p.autofluorescence * (glow - glow.min()) / (np.ptp(glow) + 1e-12)
    g = (np.arange(s) + 0.5) / s - 0.5
    gy, gx = np.meshgrid(g, g, indexing="ij")
    illum = 1.0 - p.vignetting * (gy**2 + gx**2) / 0.5
    intensity = np.clip((signal + glow[..., None]) * illum[..., None], 0.0, None)
    electrons = rng.poisson(intensity * p.full_well_e) + rng.normal(0.0, p.read_noise_e, size=intensity.shape)
    image = np.clip(np.rint(electrons / p.full_well_e * 255.0), 0, 255).astype(np.uint8)
    return CellImage(image=image, centres_px=counted, count=n)


def generate_cell_image(index: int, seed: int = 0, params: CellParams | None = None) -> CellImage:
    """Image ``index`` of the set drawn with ``seed``: depends only on ``(seed, index)`` and ``params``."""
    return render_cells(np.random.default_rng([int(seed), int(index)]), params)
