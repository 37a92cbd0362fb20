"""Density-map counting: the model's shapes, the bead targets' mass, localisation matching, and a run that logs
the count and localisation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calib_seg.data.density import DensityDataModule
from calib_seg.data.points import MapTarget
from calib_seg.data.sources.beads_synth import SyntheticBeads
from calib_seg.metrics.localisation import f1_from_counts, find_peaks, match_points
from calib_seg.models.density_map import DensityMapNet


@pytest.mark.parametrize("shape", [(2, 1, 37, 50), (1, 3, 64, 64), (1, 1, 5, 9)])
def test_density_map_net_keeps_any_size_and_channels_and_is_non_negative(shape):
    net = DensityMapNet(in_channels=shape[1], filters=[4, 8, 16], convs_per_stage=1).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], 1, *shape[2:]) and float(out.min()) >= 0.0


def test_bead_batches_carry_maps_whose_integral_is_the_realised_count():
    src = SyntheticBeads(n_per_level=2, dilutions=[50.0, 800.0], density_range=[8000.0, 500.0],
                         physics={"image_size": 32, "pixel_size_um": 8.0, "psf_sigma_um": 4.0})
    dm = DensityDataModule(src, batch_size=4, val_fraction=0.0, test_fraction=0.0, augment=True)
    dm.serve_maps(MapTarget(sigma_um=8.0, scale=100.0))
    assert dm.pixel_size_um() == pytest.approx(8.0)
    batch = next(iter(dm.train_dataloader()))
    mass = batch["map"].double().sum(dim=(1, 2, 3)).numpy() / 100.0
    np.testing.assert_allclose(mass, batch["count"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(batch["dots"].sum(dim=(1, 2, 3)).numpy(), batch["count"].numpy())
    assert batch["count"].max() > 100  # the dense level has beads on the border, counted by centre


def test_match_points_is_one_to_one_within_the_radius():
    true = np.array([[5.0, 5.0], [5.0, 7.0], [20.0, 20.0]])
    pred = np.array([[5.2, 5.1], [5.5, 5.5], [30.0, 30.0]])  # two near the first bead, one far from all
    tp, fp, fn = match_points(pred, true, radius=2.0)
    assert (tp, fp, fn) == (2, 1, 1)  # (5.5,5.5) is within 2 of (5,7) once (5.2,5.1) took (5,5)
    assert f1_from_counts(tp, fp, fn)["loc_f1"] == pytest.approx(2 / 3)
    assert match_points(np.zeros((0, 2)), true, 2.0) == (0, 0, 3)
    assert f1_from_counts(0, 0, 0)["loc_f1"] == 1.0


def test_find_peaks_returns_local_maxima_above_threshold():
    m = torch.zeros(1, 1, 10, 10)
    m[0, 0, 2, 3], m[0, 0, 7, 7], m[0, 0, 7, 8] = 5.0, 4.0, 1.0
    assert sorted(map(tuple, find_peaks(m, threshold=2.0)[0])) == [(2.5, 3.5), (7.5, 7.5)]
