"""Physically parameterised synthetic images of calibration beads (the default density data source).

The model of one image, top to bottom:

1. **Sample**: beads are a homogeneous Poisson point process with the nominal density of the dilution level
   (beads/mm²) over the field of view (FOV) plus a margin, so beads straddling the border are drawn and only
   those whose *centre* lies inside the FOV are counted. A fraction of beads sits in contact with another
   bead (doublets / aggregates); this moves beads, it does not add any, so the expected count is unchanged.
   Debris (larger, fainter, elongated particles that are not beads) has its own density, independent of dilution.
2. **Optics**: each bead is a sphere of diameter ``bead_diameter_um`` (log-normal polydispersity); its projected
   optical thickness is proportional to the chord length ``sqrt(R² - r²)``. Bright-field: transmission follows
   Beer-Lambert ``exp(-absorbance)``, so overlapping beads saturate as in real images; fluorescence: emission adds.
   A Gaussian PSF blurs the image, with a per-image defocus term. Illumination has vignetting and a linear gradient.
3. **Camera**: expected photo-electrons ``= full_well_e * intensity``, Poisson shot noise, Gaussian read noise,
   gain (ADU per electron), quantisation to ``bit_depth`` bits with clipping.

Everything is seeded by a ``numpy.random.Generator``; nothing depends on global state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

#: Dilution factors of the seed study: 50x doubling to 51200x (11 levels).
SEED_DILUTIONS: tuple[float, ...] = tuple(50.0 * 2**k for k in range(11))
#: Nominal densities at the two ends of the seed series (beads/mm²); geometric in between.
SEED_DENSITY_RANGE: tuple[float, float] = (7964.0, 15.0)


def dilution_series(
    dilutions: tuple[float, ...] | list[float] = SEED_DILUTIONS,
    density_range: tuple[float, float] = SEED_DENSITY_RANGE,
) -> dict[float, float]:
    """Nominal density (beads/mm²) for each dilution, geometric between the first and last level.

    With the seed defaults this gives 7964 beads/mm² at 50x and 15 at 51200x, as in the calibration report.
    """
    d = np.asarray(dilutions, dtype=float)
    if d.ndim != 1 or len(d) < 2 or np.any(d <= 0) or np.any(np.diff(d) <= 0):
        raise ValueError(f"dilutions must be >= 2 increasing positive factors, got {list(dilutions)}")
    hi, lo = density_range
    if not (hi > lo > 0):
        raise ValueError(f"density_range must be (high, low) with high > low > 0, got {density_range}")
    # position of each level on a log-dilution axis, 0 at the first and 1 at the last
    t = (np.log(d) - np.log(d[0])) / (np.log(d[-1]) - np.log(d[0]))
    dens = np.exp(np.log(hi) + t * (np.log(lo) - np.log(hi)))
    return {float(k): float(v) for k, v in zip(d, dens)}


@dataclass
class BeadPhysics:
    """Physical and camera parameters of the bead simulator (units in the names)."""

    image_size: int = 512
    pixel_size_um: float = 1.0
    bead_diameter_um: float = 4.0
    polydispersity: float = 0.08  # sigma of log(diameter)
    aggregate_fraction: float = 0.05  # fraction of beads touching another bead
    debris_density_per_mm2: float = 20.0
    debris_contrast: float = 0.25  # relative to a bead's
    mode: str = "brightfield"  # or "fluorescence"
    bead_absorbance: float = 1.2  # peak optical density (brightfield) or brightness (fluorescence)
    psf_sigma_um: float = 0.8
    defocus_sigma_um: float = 0.3  # per-image extra blur, |N(0, s)|
    vignetting: float = 0.15  # relative intensity drop at the corners
    gradient: float = 0.05  # relative linear illumination gradient across the FOV
    background_level: float = 0.7  # fraction of full scale in bright-field (fluorescence: background glow)
    full_well_e: float = 2000.0  # photo-electrons at full scale (sets the shot noise)
    read_noise_e: float = 3.0
    gain_adu_per_e: float = 2.0
    bit_depth: int = 12

    def __post_init__(self) -> None:
        if self.mode not in ("brightfield", "fluorescence"):
            raise ValueError(f"mode must be 'brightfield' or 'fluorescence', got {self.mode!r}")
        for name in ("image_size", "pixel_size_um", "bead_diameter_um", "full_well_e", "gain_adu_per_e"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be in 1..16, got {self.bit_depth}")
        if not 0 <= self.aggregate_fraction < 1:
            raise ValueError(f"aggregate_fraction must be in [0, 1), got {self.aggregate_fraction}")

    @property
    def fov_mm(self) -> float:
        """Side of the square field of view in mm."""
        return self.image_size * self.pixel_size_um * 1e-3

    @property
    def fov_area_mm2(self) -> float:
        """Area of the field of view in mm²."""
        return self.fov_mm**2

    @property
    def max_adu(self) -> int:
        """Largest value the camera can record."""
        return 2**self.bit_depth - 1

    def to_dict(self) -> dict:
        """Plain dict of the parameters (for run records and manifests)."""
        return asdict(self)


@dataclass
class BeadImage:
    """One simulated image and everything known about it."""

    image: np.ndarray  # (H, W) uint16 camera values, 0..2**bit_depth-1
    density: float  # nominal density of the dilution level, beads/mm² (the regression target)
    dilution: float
    count: int  # realised number of bead centres inside the FOV
    centres_um: np.ndarray = field(repr=False)  # (count, 2) (y, x) in um from the top-left corner


def _sample_beads(rng: np.random.Generator, density: float, p: BeadPhysics) -> tuple[np.ndarray, np.ndarray]:
    """Bead centres (um) over the FOV plus a margin, and their diameters (um)."""
    fov_um = p.fov_mm * 1e3
    margin = 2.0 * p.bead_diameter_um + 4.0 * p.psf_sigma_um
    side = fov_um + 2 * margin
    n = rng.poisson(density * (side * 1e-3) ** 2)
    centres = rng.uniform(-margin, fov_um + margin, size=(n, 2))
    diam = p.bead_diameter_um * np.exp(p.polydispersity * rng.standard_normal(n))
    if n > 1 and p.aggregate_fraction > 0:
        moved = rng.random(n) < p.aggregate_fraction
        anchors = np.flatnonzero(~moved)
        idx = np.flatnonzero(moved)
        if len(anchors) and len(idx):
            partner = anchors[rng.integers(0, len(anchors), size=len(idx))]
            angle = rng.uniform(0, 2 * np.pi, size=len(idx))
            dist = 0.5 * (diam[idx] + diam[partner])
            centres[idx] = centres[partner] + dist[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    return centres, diam


def stamp(canvas: np.ndarray, centres_px: np.ndarray, radii_px: np.ndarray, heights: np.ndarray,
          aspect: np.ndarray | None = None, angle: np.ndarray | None = None) -> None:
    """Add sphere-like (chord-length) profiles at sub-pixel centres, vectorised over particles.

    ``aspect``/``angle`` stretch a profile into an ellipse (debris). Profiles are clipped at the canvas border.
    """
    if len(centres_px) == 0:
        return
    h, w = canvas.shape
    stretch = 1.0 if aspect is None else float(np.max(aspect))
    half = int(np.ceil(float(radii_px.max()) * stretch)) + 1
    off = np.arange(-half, half + 1)
    base = np.floor(centres_px).astype(int)  # (n, 2)
    yy = base[:, 0, None, None] + off[None, :, None]  # (n, K, 1)
    xx = base[:, 1, None, None] + off[None, None, :]  # (n, 1, K)
    dy = yy + 0.5 - centres_px[:, 0, None, None]
    dx = xx + 0.5 - centres_px[:, 1, None, None]
    if aspect is not None:
        c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        dx, dy = u / aspect[:, None, None], v
    r2 = (dx**2 + dy**2) / radii_px[:, None, None] ** 2
    prof = heights[:, None, None] * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    yy_b, xx_b = np.broadcast_arrays(yy, xx)
    ok = (yy_b >= 0) & (yy_b < h) & (xx_b >= 0) & (xx_b < w) & (prof > 0)
    np.add.at(canvas, (yy_b[ok], xx_b[ok]), prof[ok])


def render_beads(rng: np.random.Generator, density: float, dilution: float, p: BeadPhysics) -> BeadImage:
    """Simulate one camera image of beads at a nominal ``density`` (beads/mm²).

    Returns the image as camera values (uint16) with the nominal density, dilution, realised count and the
    centres of the counted beads.
    """
    if not np.isfinite(density) or density < 0:
        raise ValueError(f"density must be a finite number >= 0 beads/mm², got {density}")
    n_px = p.image_size
    centres_um, diam_um = _sample_beads(rng, density, p)
    fov_um = p.fov_mm * 1e3
    inside = np.all((centres_um >= 0) & (centres_um < fov_um), axis=1)

    optical = np.zeros((n_px, n_px), dtype=np.float64)
    stamp(optical, centres_um / p.pixel_size_um, 0.5 * diam_um / p.pixel_size_um,
          np.full(len(diam_um), p.bead_absorbance))

    # debris: a few larger, fainter, elongated particles that must not be counted
    n_deb = rng.poisson(p.debris_density_per_mm2 * p.fov_area_mm2)
    if n_deb:
        deb_c = rng.uniform(0, fov_um, size=(n_deb, 2)) / p.pixel_size_um
        deb_r = p.bead_diameter_um * rng.uniform(0.8, 2.5, n_deb) / p.pixel_size_um
        stamp(optical, deb_c, deb_r, np.full(n_deb, p.bead_absorbance * p.debris_contrast),
              aspect=rng.uniform(1.5, 3.0, n_deb), angle=rng.uniform(0, np.pi, n_deb))

    sigma_px = (p.psf_sigma_um + abs(rng.normal(0.0, p.defocus_sigma_um))) / p.pixel_size_um
    optical = ndimage.gaussian_filter(optical, sigma_px, mode="constant")

    # illumination: radial vignetting and a linear gradient in a random direction
    g = (np.arange(n_px) + 0.5) / n_px - 0.5
    gy, gx = np.meshgrid(g, g, indexing="ij")
    theta = rng.uniform(0, 2 * np.pi)
    illum = (1.0 - p.vignetting * (gy**2 + gx**2) / 0.5) * (1.0 + p.gradient * 2 * (np.cos(theta) * gx + np.sin(theta) * gy))

    if p.mode == "brightfield":
        intensity = p.background_level * illum * np.exp(-optical)
    else:
        intensity = illum * (0.05 + (1.0 - 0.05) * (1.0 - np.exp(-optical)))

    electrons = rng.poisson(np.clip(intensity, 0, None) * p.full_well_e).astype(np.float64)
    electrons += rng.normal(0.0, p.read_noise_e, size=electrons.shape)
    adu = np.clip(np.rint(electrons * p.gain_adu_per_e), 0, p.max_adu).astype(np.uint16)

    return BeadImage(image=adu, density=float(density), dilution=float(dilution), count=int(inside.sum()),
                     centres_um=centres_um[inside])


def oracle_density(count: np.ndarray | float, p: BeadPhysics) -> np.ndarray:
    """The oracle counter: realised bead count in the FOV divided by the FOV area (beads/mm²)."""
    return np.asarray(count, dtype=float) / p.fov_area_mm2
