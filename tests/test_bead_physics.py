"""The bead simulator's documented physics (calib_seg.data.simulators.beads module docstring), one statement per test.

Most tests switch the camera to a near noise-free one (a huge full well, no read noise) so that intensities can
be compared with the formulas of the docstring directly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from calib_seg.data.simulators import beads
from calib_seg.data.simulators.beads import BeadPhysics, render_beads

# 1 um pixels, sharp optics, flat illumination; photon noise ~0.1 % of the background, 1 ADU steps
QUIET = BeadPhysics(image_size=48, pixel_size_um=1.0, psf_sigma_um=0.3, defocus_sigma_um=0.0, polydispersity=0.0,
                    aggregate_fraction=0.0, debris_density_per_mm2=0.0, vignetting=0.0, gradient=0.0,
                    full_well_e=1e6, read_noise_e=0.0, gain_adu_per_e=4095 / 1e6)
BACKGROUND = QUIET.background_level * 4095  # ADU of an empty, evenly lit field


def _with_beads(monkeypatch, centres_um: list[tuple[float, float]], diameter_um: float = 4.0) -> None:
    """Replace the Poisson sampler by fixed bead positions (y, x) in um."""
    c = np.array(centres_um, dtype=float).reshape(-1, 2)
    monkeypatch.setattr(beads, "_sample_beads", lambda rng, density, p: (c.copy(), np.full(len(c), diameter_um)))


def test_debris_is_drawn_but_never_counted(monkeypatch):
    dirty = replace(QUIET, debris_density_per_mm2=20000.0)  # ~46 debris particles in the 48 um field
    clean_img = render_beads(np.random.default_rng(0), 0.0, 1.0, QUIET)
    dirty_img = render_beads(np.random.default_rng(0), 0.0, 1.0, dirty)
    assert clean_img.count == dirty_img.count == 0
    assert dirty_img.image.mean() < clean_img.image.mean() - 20  # debris absorbs light ...
    # ... and with beads present the count is exactly the beads', whatever the debris
    p = BeadPhysics(image_size=64, pixel_size_um=8.0)
    for seed in range(3):
        a = render_beads(np.random.default_rng(seed), 2000.0, 1.0, replace(p, debris_density_per_mm2=0.0))
        b = render_beads(np.random.default_rng(seed), 2000.0, 1.0, replace(p, debris_density_per_mm2=500.0))
        assert a.count == b.count > 0 and np.array_equal(a.centres_um, b.centres_um)
        assert not np.array_equal(a.image, b.image)


@pytest.mark.parametrize(("x_um", "counted"), [(-1.0, 0), (1.0, 1), (47.0, 1), (49.0, 0)])
def test_border_beads_are_drawn_and_counted_by_their_centre(monkeypatch, x_um, counted):
    """A bead straddling the border darkens the edge pixels either way; only a centre inside the FOV counts."""
    _with_beads(monkeypatch, [(24.0, x_um)])
    img = render_beads(np.random.default_rng(0), 1.0, 1.0, QUIET)
    assert img.count == counted and len(img.centres_um) == counted
    edge = img.image[22:27, 0 if x_um < 24 else -1]
    assert edge.mean() < 0.8 * BACKGROUND, edge  # part of the bead lies inside and is drawn


def test_doublets_move_beads_without_changing_the_expected_count():
    density, n_img = 647.3, 40
    p = BeadPhysics(image_size=64, pixel_size_um=8.0)
    counts, touching = {}, {}
    for frac in (0.0, 0.4):
        rng = np.random.default_rng(5)
        imgs = [render_beads(rng, density, 1.0, replace(p, aggregate_fraction=frac)) for _ in range(n_img)]
        counts[frac] = np.array([b.count for b in imgs])
        close = []
        for b in imgs:
            d = np.linalg.norm(b.centres_um[:, None] - b.centres_um[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            close.append(d.min(axis=1) < 1.2 * p.bead_diameter_um)
        touching[frac] = float(np.concatenate(close).mean())
    expected = density * p.fov_area_mm2
    for frac, c in counts.items():  # sum of Poisson counts: a 4-sigma test of the mean
        z = (c.sum() - n_img * expected) / np.sqrt(n_img * expected)
        assert abs(z) < 4, (frac, c.mean(), expected)
    assert touching[0.0] < 0.1 and touching[0.4] > 0.3, touching  # doublets really form


def test_brightfield_transmission_follows_beer_lambert_so_stacked_beads_saturate(monkeypatch):
    centre = (24.0, 24.0)

    def centre_value(n_stacked: int) -> float:
        _with_beads(monkeypatch, [centre] * n_stacked)
        return float(render_beads(np.random.default_rng(0), 1.0, 1.0, QUIET).image[23:25, 23:25].mean())

    one, two, three = (centre_value(n) for n in (1, 2, 3))
    dark1, dark2 = BACKGROUND - one, BACKGROUND - two
    assert dark2 < 1.9 * dark1  # saturation: a second bead darkens less than the first did
    # Beer-Lambert: absorbances add, so -log(transmission) grows linearly with the number of beads
    a1, a2, a3 = (-np.log(v / BACKGROUND) for v in (one, two, three))
    assert a1 == pytest.approx(QUIET.bead_absorbance, rel=0.1)  # centre of a 4 um bead at 1 um pixels
    assert a2 == pytest.approx(2 * a1, rel=0.02) and a3 == pytest.approx(3 * a1, rel=0.02)


def test_vignetting_darkens_the_corners_by_the_configured_fraction():
    p = replace(QUIET, vignetting=0.15)
    img = render_beads(np.random.default_rng(0), 0.0, 1.0, p).image.astype(float)
    centre = img[22:26, 22:26].mean()
    corners = np.mean([img[:2, :2].mean(), img[:2, -2:].mean(), img[-2:, :2].mean(), img[-2:, -2:].mean()])
    assert centre == pytest.approx(BACKGROUND, rel=0.005)
    # relative drop at the outermost pixel centres: 0.15 * (r / r_corner)^2 with r just inside the corner
    g = (np.arange(48) + 0.5) / 48 - 0.5
    r2 = np.mean([g[i] ** 2 + g[j] ** 2 for i in (0, 1) for j in (0, 1)])
    assert corners / centre == pytest.approx(1 - 0.15 * r2 / 0.5, rel=0.005)


def test_illumination_gradient_is_linear_with_the_configured_strength_in_a_random_direction():
    p = replace(QUIET, gradient=0.05)
    g = (np.arange(48) + 0.5) / 48 - 0.5
    gy, gx = np.meshgrid(g, g, indexing="ij")
    design = np.stack([np.ones(gy.size), gx.ravel(), gy.ravel()], 1)
    angles = []
    for seed in range(12):
        img = render_beads(np.random.default_rng(seed), 0.0, 1.0, p).image.astype(float).ravel()
        (c0, cx, cy), *_ = np.linalg.lstsq(design, img, rcond=None)
        # I = bg * (1 + 2 * gradient * (cos(theta) gx + sin(theta) gy)): relative slope 0.1 across the field
        assert np.hypot(cx, cy) / c0 == pytest.approx(2 * 0.05, rel=0.05), seed
        residual = img - design @ np.array([c0, cx, cy])
        assert residual.std() < 0.002 * c0  # linear: nothing left but photon noise
        angles.append(np.arctan2(cy, cx))
    quadrants = {int(np.floor((a % (2 * np.pi)) / (np.pi / 2))) for a in angles}
    assert len(quadrants) >= 3, angles  # the direction is drawn per image, not fixed
