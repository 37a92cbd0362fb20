"""EM-like synthetic images of neuropil with mitochondria masks (the embedded default segmentation data).

Modelled on FIB-SEM slices of CA1 hippocampus (EPFL/Lucchi, ~5 nm pixels, 768x1024), one image, bottom up:

1. **Neurites**: a Voronoi tessellation on smoothly warped coordinates gives curved, closed cell profiles of
   varying size; their boundaries are dark membranes of varying darkness. Each profile gets its own
   cytoplasm grey level and fine granular texture; some profiles are *dark dendrites* (grey level close to a
   mitochondrion's, with streaky microtubule texture), some are *boutons* packed with synaptic vesicles
   (small rings), and scattered dark specks fill the rest.
2. **Mitochondria** (the mask): elongated, slightly bent capsules and round cross-sections, 15-35 px radius,
   a dark matrix with lamellar cristae across the long axis, a dark double outer membrane, a thin light
   cytoplasm halo and often the enclosing neurite membrane around them. Placed without overlap until a
   per-image foreground fraction (default 4-10 %, Lucchi is ~6 %) is reached.
3. **Distractors** that are not mitochondria, so a global threshold fails: dark dendrites, myelinated axons
   (thick dark rings), dark staining smudges, dense vesicle clusters, small dark round organelles.
4. **Imaging**: slow illumination drift, Gaussian blur, Gaussian + signal-dependent noise, 8-bit quantisation.

All randomness comes from one ``numpy.random.Generator``; operations are vectorised numpy/scipy
(about 0.3 s for a 768x1024 image on one core). Each stage is one function (``draw_*``, then
:func:`image_like_a_microscope`), called in that order by :func:`generate_mito_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

GENERATOR_VERSION = "mito_synth/2"


@dataclass
class MitoSynthParams:
    """Appearance parameters of the generator (pixel units; intensities in [0, 1]).

    Difficulty is calibrated: with these defaults a small U-Net (16 base filters, depth 3, 600 steps of
    8 x 128 px patches, BCE + Dice) scores test Jaccard 0.82 on a synthetic set shaped like the shared real
    slices (3 training + 1 test image, 768x1024) and 0.80 on the real Lucchi slices; global Otsu scores 0.09
    on both test images. Stronger cristae and membranes (0.02-0.06, 0.12-0.22) made it 0.88.
    """

    cell_size: float = 75.0  # typical neurite profile diameter
    warp: float = 14.0  # amplitude of the smooth coordinate warp that curves membranes
    membrane_darkness: float = 0.40
    membrane_width: float = 2.4
    cytoplasm_level: tuple[float, float] = (0.62, 0.74)
    dark_cell_fraction: float = 0.15  # dark dendrites: grey level like mitochondria, no cristae
    dark_cell_level: tuple[float, float] = (0.36, 0.48)
    bouton_fraction: float = 0.22  # profiles packed with synaptic vesicles
    foreground_fraction: tuple[float, float] = (0.04, 0.10)
    mito_radius: tuple[float, float] = (14.0, 32.0)
    mito_length: tuple[float, float] = (0.0, 200.0)  # straight part of the capsule; 0 = round cross-section
    round_fraction: float = 0.4  # share of round cross-sections among mitochondria
    wrapped_fraction: float = 0.3  # share with the enclosing neurite membrane drawn close around them
    mito_level: tuple[float, float] = (0.36, 0.50)
    cristae_contrast: tuple[float, float] = (0.01, 0.04)
    cristae_period: tuple[float, float] = (7.0, 12.0)
    mito_membrane_darkness: tuple[float, float] = (0.06, 0.14)
    myelin_per_mpx: float = 1.2  # myelinated axons per megapixel
    smudges_per_mpx: float = 2.5
    dark_organelles_per_mpx: float = 40.0
    blur_sigma: float = 1.0
    noise_std: float = 0.045
    illumination: float = 0.06


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~sigma (computed at reduced resolution)."""
    f = max(1, int(sigma // 4))  # filtering a downsampled field is equivalent for large sigma and much faster
    small = (shape[0] // f + 2, shape[1] // f + 2)
    n = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / f, mode="wrap")
    if f > 1:
        n = ndimage.zoom(n, f, order=1)
    n = n[: shape[0], : shape[1]]
    return (n - n.mean()) / (n.std() + 1e-8)


def _cells(rng: np.random.Generator, h: int, w: int, p: MitoSynthParams) -> tuple[np.ndarray, np.ndarray]:
    """Warped Voronoi tessellation: (cell label image, distance-to-membrane image), full resolution."""
    s = 2  # tessellate at half resolution, then upsample: membranes are smooth at this scale
    hs, ws = h // s + 1, w // s + 1
    # seed density varies slowly so that regions of thin axons sit next to large dendrites, as in neuropil
    n_cand = int(4 * h * w / p.cell_size**2) + 8
    cand = rng.random((n_cand, 2)) * [h, w]
    dens = _smooth_noise(rng, (hs, ws), 40 / s)
    keep = rng.random(n_cand) < 1 / (
        1 + np.exp(-1.6 * dens[(cand[:, 0] / s).astype(int), (cand[:, 1] / s).astype(int)])
    )
    seeds = cand[keep][: max(8, int(1.8 * h * w / p.cell_size**2))]
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32) * s
    yy += p.warp * _smooth_noise(rng, (hs, ws), 30 / s)
    xx += p.warp * _smooth_noise(rng, (hs, ws), 30 / s)
    d, idx = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    gap = ((d[:, 1] - d[:, 0]) / 2).reshape(hs, ws).astype(np.float32)
    label = idx[:, 0].reshape(hs, ws)
    gap = ndimage.zoom(gap, s, order=1)[:h, :w]
    label = np.repeat(np.repeat(label, s, 0), s, 1)[:h, :w]
    return label, gap


def _round_objects(
    rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For many small discs at once: (distance to the nearest centre, that centre's radius) per pixel."""
    h, w = shape
    pts = np.zeros(shape, dtype=bool)
    lab = np.full(shape, -1, dtype=np.int32)
    cy = np.clip(centres[:, 0].astype(int), 0, h - 1)
    cx = np.clip(centres[:, 1].astype(int), 0, w - 1)
    pts[cy, cx] = True
    lab[cy, cx] = np.arange(len(centres))
    dist, (iy, ix) = ndimage.distance_transform_edt(~pts, return_indices=True)
    r = radii[lab[iy, ix]]
    return dist.astype(np.float32), r.astype(np.float32)


def _capsule(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    radius: float,
    length: float,
    angle: float,
    bend: float,
    shape: tuple[int, int],
    margin: float,
):
    """Signed depth inside a bent capsule (positive inside) on its bounding box, plus axial coordinate."""
    h, w = shape
    ext = length / 2 + radius + margin
    y0, y1 = int(max(0, cy - ext)), int(min(h, cy + ext + 1))
    x0, x1 = int(max(0, cx - ext)), int(min(w, cx + ext + 1))
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa  # along the long axis
    v = -(xx - cx) * sa + (yy - cy) * ca
    # gentle bend: the axis sags by `bend` pixels at the capsule ends
    v = v - bend * (np.clip(u / max(length / 2, 1.0), -1, 1) ** 2 - 0.5)
    du = np.maximum(np.abs(u) - length / 2, 0)
    d = np.sqrt(du**2 + v**2)
    phi = np.arctan2(v, np.where(np.abs(u) > length / 2, u - np.sign(u) * length / 2, 0.0))
    k = np.arange(2, 5)
    amp = rng.uniform(0, 0.07, 3) * radius
    wob = (
        amp[:, None, None] * np.sin(k[:, None, None] * phi + rng.uniform(0, 2 * np.pi, 3)[:, None, None])
    ).sum(0)
    return (slice(y0, y1), slice(x0, x1)), radius + wob - d, u


@dataclass
class Neuropil:
    """The neurite canvas of stage 1 and what the later stages read from it."""

    image: np.ndarray  # float32 (h, w); later stages draw on it in place
    label: np.ndarray  # (h, w) neurite id per pixel
    level: np.ndarray  # (n_cells,) cytoplasm grey level per neurite
    bouton: np.ndarray  # (n_cells,) bool: neurite packed with synaptic vesicles
    grain: np.ndarray  # (h, w) fine granular texture, reused inside organelles


def draw_neurites(rng: np.random.Generator, h: int, w: int, p: MitoSynthParams) -> Neuropil:
    """Stage 1: per-cell cytoplasm level, texture, dark dendrites with streaks, membranes."""
    label, gap = _cells(rng, h, w, p)
    n_cells = int(label.max()) + 1
    level = rng.uniform(*p.cytoplasm_level, n_cells).astype(np.float32)
    kind = rng.random(n_cells)
    dark = kind < p.dark_cell_fraction
    bouton = (kind >= p.dark_cell_fraction) & (kind < p.dark_cell_fraction + p.bouton_fraction)
    level[dark] = rng.uniform(*p.dark_cell_level, int(dark.sum()))
    img = level[label]
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.2)
    img += 0.05 * grain / (grain.std() + 1e-8)
    # microtubule-like streaks in dark dendrites: anisotropic noise along a random direction
    streak = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), (0.8, 6.0))
    if rng.random() < 0.5:
        streak = streak.T.copy() if h == w else np.ascontiguousarray(np.flipud(streak))
    img += np.where(dark[label], 0.5 * streak / (streak.std() + 1e-8) * 0.05, 0)
    mem_dark = p.membrane_darkness * (0.75 + 0.25 * _smooth_noise(rng, (h, w), 25)).clip(0.3, 1.4)
    img -= mem_dark * np.exp(-((gap / p.membrane_width) ** 2))
    return Neuropil(img, label, level, bouton, grain)


def draw_vesicles(rng: np.random.Generator, cell: Neuropil, mpx: float) -> None:
    """Stage 1: vesicles in boutons (rings ~4-6 px), sparse dark specks elsewhere."""
    img, label = cell.image, cell.label
    h, w = img.shape
    n_ves = int(9000 * mpx)
    vc = rng.random((n_ves, 2)) * [h, w]
    vc = vc[cell.bouton[label[vc[:, 0].astype(int), vc[:, 1].astype(int)]]]
    n_sp = int(4000 * mpx)
    sc = rng.random((n_sp, 2)) * [h, w]
    centres = np.concatenate([vc, sc])
    radii = np.concatenate([rng.uniform(3.5, 6.0, len(vc)), rng.uniform(0.8, 2.2, len(sc))]).astype(
        np.float32
    )
    if len(centres):
        dist, r = _round_objects(rng, (h, w), centres, radii)
        ring = np.exp(-(((dist - r) / 1.3) ** 2))
        img -= np.where(r > 3.0, 0.26 * ring, 0.2 * (dist < r + 0.5))
        img -= np.where((r > 3.0) & (dist < r), 0.02, 0)


def draw_dark_organelles(rng: np.random.Generator, img: np.ndarray, p: MitoSynthParams, mpx: float) -> None:
    """Stage 1: small dark round organelles (dense-core vesicles, endosomes), as dark as mitochondria."""
    h, w = img.shape
    n_org = rng.poisson(p.dark_organelles_per_mpx * mpx)
    for _ in range(n_org):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        rr = rng.uniform(4, 16)
        sl, depth, _u = _capsule(rng, cy, cx, rr, rng.uniform(0, 10), rng.uniform(0, np.pi), 0.0, (h, w), 3)
        a = np.clip(depth + 0.5, 0, 1)
        img[sl] = img[sl] * (1 - a) + a * (rng.uniform(0.25, 0.42) + 0.02 * rng.standard_normal(a.shape))


def _mito_matrix(
    rng: np.random.Generator, depth: np.ndarray, u: np.ndarray, grain: np.ndarray, p: MitoSynthParams
) -> np.ndarray:
    """Grey levels inside one mitochondrion: matrix with lamellar cristae across the long axis, dark double
    outer membrane."""
    lvl = rng.uniform(*p.mito_level)
    period = rng.uniform(*p.cristae_period)
    phase = _smooth_noise(rng, depth.shape, 5.0) * 2.2  # wavy, irregular lamellae
    ang2 = rng.normal(0, 0.35)
    v_axis = depth  # cristae run roughly across; tilting them by mixing in depth breaks regularity
    cristae = np.cos(2 * np.pi * (u * np.cos(ang2) + v_axis * np.sin(ang2)) / period + phase)
    mottle = _smooth_noise(rng, depth.shape, 2.5)
    matrix = lvl + rng.uniform(*p.cristae_contrast) * cristae + 0.03 * grain + 0.03 * mottle
    md = rng.uniform(*p.mito_membrane_darkness)
    matrix -= md * (np.exp(-(((depth - 1.2) / 1.1) ** 2)) + 0.7 * np.exp(-(((depth - 3.8) / 1.1) ** 2)))
    return matrix


def _place_mitochondrion(rng: np.random.Generator, cell: Neuropil, mask: np.ndarray, p: MitoSynthParams) -> float:
    """One attempt to draw a mitochondrion at a random place; returns its area (0 when it would overlap)."""
    img, grain = cell.image, cell.grain
    h, w = mask.shape
    r = rng.uniform(*p.mito_radius)
    length = (
        0.0
        if rng.random() < p.round_fraction
        else rng.uniform(*p.mito_length) * min(1.0, min(h, w) / 400)
    )
    ang, bend = rng.uniform(0, np.pi), rng.normal(0, 0.08) * length
    cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
    halo = rng.uniform(1.0, 4.0)
    res = _capsule(rng, cy, cx, r, length, ang, bend, (h, w), halo + 6)
    if res is None:
        return 0.0
    sl, depth, u = res
    inside = depth > 0
    if not inside.any() or mask[sl][depth > -halo - 4].any():
        return 0.0  # no overlap, and keep a halo between neighbours like real membranes
    # light cytoplasm halo and (often) the enclosing neurite membrane around the organelle
    # the halo takes the grey level of the host neurite (no tell-tale bright ring around every organelle)
    host = cell.level[cell.label[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]]
    a_halo = np.clip(depth + halo + 1, 0, 1)
    local = img[sl]
    local = local * (1 - a_halo) + a_halo * (host + 0.05 * grain[sl])
    if rng.random() < p.wrapped_fraction:
        local -= p.membrane_darkness * 0.8 * np.exp(-(((depth + halo + 1.5) / p.membrane_width) ** 2))
    matrix = _mito_matrix(rng, depth, u, grain[sl], p)
    a = np.clip(depth + 0.5, 0, 1)
    img[sl] = local * (1 - a) + a * matrix
    mask[sl] |= inside.astype(np.uint8)
    return float(inside.sum())


def draw_mitochondria(rng: np.random.Generator, cell: Neuropil, p: MitoSynthParams) -> np.ndarray:
    """Stage 2: mitochondria placed without overlap until the target foreground fraction; returns the mask."""
    h, w = cell.image.shape
    mask = np.zeros((h, w), dtype=np.uint8)
    target = rng.uniform(*p.foreground_fraction) * h * w
    area, tries = 0.0, 0
    while area < target and tries < 400:
        tries += 1
        area += _place_mitochondrion(rng, cell, mask, p)
    return mask


def draw_myelin(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, grain: np.ndarray, p: MitoSynthParams, mpx: float
) -> None:
    """Stage 3: myelinated axons (light axoplasm in a thick dark sheath) drawn over everything, mask included."""
    h, w = img.shape
    for _ in range(rng.poisson(p.myelin_per_mpx * mpx)):
        R, th = rng.uniform(30, 65), rng.uniform(7, 15)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        res = _capsule(rng, cy, cx, R + th, rng.uniform(0, 30), rng.uniform(0, np.pi), 0.0, (h, w), 3)
        sl, depth, _u = res
        # light axoplasm inside a thick dark sheath
        a_in = np.clip(depth + 0.5, 0, 1)
        inner = rng.uniform(*p.cytoplasm_level) + 0.04 * grain[sl]
        a = np.clip(np.minimum(depth, th - depth) + 0.5, 0, 1) * ((depth > 0) & (depth < th))
        img[sl] = img[sl] * (1 - a_in) + a_in * inner
        img[sl] = img[sl] * (1 - a) + a * (rng.uniform(0.18, 0.3) + 0.03 * grain[sl])
        mask[sl][depth > 0] = 0  # an axon drawn on top hides whatever mitochondrion was there


def draw_smudges(rng: np.random.Generator, img: np.ndarray, p: MitoSynthParams, mpx: float) -> None:
    """Stage 3: dark staining smudges, smooth, so built on a 4x coarser grid (16x fewer pixels) and upsampled."""
    h, w = img.shape
    hs, ws = h // 4 + 1, w // 4 + 1
    smudge = np.zeros((hs, ws), np.float32)
    for _ in range(rng.poisson(p.smudges_per_mpx * mpx)):
        smudge[int(rng.uniform(0, hs)), int(rng.uniform(0, ws))] += rng.uniform(0.6, 1.0)
    if smudge.any():
        smudge = ndimage.gaussian_filter(smudge, (rng.uniform(3, 6), rng.uniform(3, 6)))
        smudge = ndimage.zoom(smudge * (0.2 / smudge.max()), 4, order=1)[:h, :w]
        img -= smudge


def image_like_a_microscope(rng: np.random.Generator, img: np.ndarray, p: MitoSynthParams) -> np.ndarray:
    """Stage 4: illumination drift, blur, Gaussian + signal-dependent noise, 8-bit quantisation."""
    h, w = img.shape
    img += p.illumination * _smooth_noise(rng, (h, w), 150)
    img = ndimage.gaussian_filter(img, p.blur_sigma)
    img += rng.standard_normal((h, w)).astype(np.float32) * p.noise_std * (0.6 + 0.6 * img.clip(0, 1))
    return np.round(np.clip(img, 0, 1) * 255) / 255


def generate_mito_image(
    height: int = 768,
    width: int = 1024,
    seed: int | np.random.Generator = 0,
    params: MitoSynthParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic EM image and its mitochondria mask: the four stages of the module docstring in order.

    Every stage draws from the same generator in a fixed order, so the images of a seed are fixed by
    :data:`GENERATOR_VERSION`; a change to any stage that alters them must bump it.

    Returns:
        image: float32 (height, width) in [0, 1], quantised to 8-bit levels like a real EM slice.
        mask: uint8 (height, width) in {0, 1}.
    """
    p = params or MitoSynthParams()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = int(height), int(width)
    if h < 32 or w < 32:
        raise ValueError(f"image size must be at least 32x32, got {h}x{w}")
    mpx = h * w / 1e6
    cell = draw_neurites(rng, h, w, p)
    draw_vesicles(rng, cell, mpx)
    draw_dark_organelles(rng, cell.image, p, mpx)
    mask = draw_mitochondria(rng, cell, p)
    draw_myelin(rng, cell.image, mask, cell.grain, p, mpx)
    draw_smudges(rng, cell.image, p, mpx)
    img = image_like_a_microscope(rng, cell.image, p)
    return img.astype(np.float32), mask
