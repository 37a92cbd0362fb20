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


def _beads(n_per_level=2, size=32, px=8.0):
    return SyntheticBeads(n_per_level=n_per_level, dilutions=[50.0, 800.0, 12800.0],
                          density_range=[8000.0, 20.0], physics={"image_size": size, "pixel_size_um": px,
                                                                 "psf_sigma_um": 4.0})


class _Source:
    """A bead source whose images at the given positions lost their centres (labelled by density only)."""

    def __init__(self, src, unannotated):
        self.src, self.unannotated = src, set(unannotated)

    def load(self, progress=False):
        beads = self.src.load()
        beads.centres_um = None if self.unannotated == "all" else [
            None if j in self.unannotated else c for j, c in enumerate(beads.centres_um)]
        return beads


def test_images_without_centres_get_an_empty_map_and_their_expected_count_density_times_fov_area():
    src = _beads()
    dm = DensityDataModule(_Source(src, {1, 4}), batch_size=6, val_fraction=0.0, test_fraction=0.0,
                           augment=False)
    dm.serve_maps(MapTarget(sigma_px=1.0, scale=100.0))
    batch = next(iter(dm.train_dataloader()))
    fov_mm2 = (32 * 8.0 * 1e-3) ** 2
    ann = batch["annotated"].numpy()
    assert ann.dtype == bool and ann.tolist() == [j not in {1, 4} for j in batch["index"].tolist()]
    np.testing.assert_allclose(batch["expected"].numpy(), batch["density"].numpy() * fov_mm2, rtol=1e-6)
    assert float(batch["map"][~batch["annotated"]].abs().sum()) == 0.0
    assert float(batch["dots"][~batch["annotated"]].abs().sum()) == 0.0
    np.testing.assert_allclose(batch["map"][batch["annotated"]].double().sum(dim=(1, 2, 3)).numpy() / 100.0,
                               batch["count"][batch["annotated"]].numpy(), rtol=1e-5)
    assert dm.fingerprint()["annotated_images"] == {"train": 4, "val": 0, "test": 0}


class _ConstantMap(torch.nn.Module):
    """A 'network' whose map is a learnable constant per pixel (its count is value x pixels)."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return self.value.expand(x.shape[0], 1, *x.shape[2:])


def _task(model, **kw):
    import functools

    from calib_seg.tasks.density_map import DensityMapTask

    return DensityMapTask(model, optimizer=functools.partial(torch.optim.Adam, lr=0.05), sigma_px=1.0,
                          map_scale=100.0, count_weight=1.0, normalize_input=False, **kw)


def test_image_level_loss_is_the_log_count_error_against_density_times_fov_area():
    task = _task(_ConstantMap(0.01), image_count_weight=2.0)
    peak = 100.0 / (2 * np.pi)  # the task scales the net's output by an isolated object's peak height
    fov_mm2 = (16 * 8.0e-3) ** 2
    density = torch.tensor([500.0, 4000.0])
    batch = {"image": torch.zeros(2, 1, 16, 16), "map": torch.zeros(2, 1, 16, 16), "annotated": torch.tensor([False, False]),
             "expected": density * fov_mm2, "density": density}
    count = 0.01 * peak * 256 / 100.0  # per image
    want = 2.0 * np.mean((np.log1p(count) - np.log1p(density.numpy() * fov_mm2)) ** 2)
    got = float(task._map_loss(task.density_map(batch["image"]), batch).detach())
    assert got == pytest.approx(want, rel=1e-5)


def test_a_mixed_batch_weighs_each_image_as_in_its_own_batch():
    from calib_seg.data.points import density_map

    task = _task(_ConstantMap(0.02), image_count_weight=1.0)
    maps = torch.from_numpy(np.stack([density_map(np.array([[4.0, 5.0], [10.0, 12.0]]), (16, 16), 1.0, 100.0),
                                      np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32)]))[:, None]
    batch = {"image": torch.zeros(3, 1, 16, 16), "map": maps, "annotated": torch.tensor([True, False, False]),
             "expected": torch.tensor([2.0, 7.0, 30.0])}

    def loss(rows):
        sub = {k: v[rows] for k, v in batch.items()}
        return float(task._map_loss(task.density_map(sub["image"]), sub).detach())

    assert loss([0, 1, 2]) == pytest.approx((loss([0]) + 2 * loss([1, 2])) / 3, rel=1e-6)
    assert loss([0]) == pytest.approx(float(task._map_loss(task.density_map(batch["image"][:1]),
                                                           {"image": batch["image"][:1], "map": maps[:1]})))


def test_image_level_labels_alone_teach_a_tiny_map_to_count():
    """No centres at all: trained only on density x FOV area, the map's count error falls to under half."""
    torch.manual_seed(0)
    src = SyntheticBeads(n_per_level=4, dilutions=[50.0, 800.0, 12800.0], density_range=[8000.0, 20.0],
                         physics={"image_size": 32, "pixel_size_um": 8.0, "psf_sigma_um": 4.0})
    dm = DensityDataModule(_Source(src, "all"), batch_size=6, val_fraction=0.0, test_fraction=0.0)
    task = _task(DensityMapNet(filters=[4, 8], convs_per_stage=1))
    dm.serve_maps(task.target)
    beads = dm.prepare()
    x = torch.from_numpy(beads.images.astype(np.float32) / beads.scale)[:, None]

    def count_error():
        task.eval()
        with torch.no_grad():
            err = np.abs(task.density_map(x).sum(dim=(1, 2, 3)).numpy() / 100.0 - beads.count).mean()
        task.train()
        return float(err)

    start = count_error()
    opt = torch.optim.Adam(task.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread on a shared machine costs 30x (measured)
    try:
        for _ in range(60):
            for batch in dm.train_dataloader():
                opt.zero_grad()
                task._map_loss(task.density_map(batch["image"]), batch).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    assert count_error() < 0.5 * start, start


def test_block_count_term_charges_diffuse_mass_as_the_objects_it_adds_up_to():
    task = _task(_ConstantMap(0.0), block_size=8)
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.uniform(0, 3, (2, 1, 20, 24)).astype(np.float32))
    pred = torch.from_numpy(rng.uniform(0, 3, (2, 1, 20, 24)).astype(np.float32))

    def blocks(m):  # objects per 8 x 8 block, zero rows below the 20-row image
        padded = np.zeros((2, 24, 24))
        padded[:, :20] = m.numpy()[:, 0] / 100.0
        return padded.reshape(2, 3, 8, 3, 8).sum(axis=(2, 4))

    want = ((blocks(pred) - blocks(target)) ** 2 / (blocks(target) + 1)).sum(axis=(1, 2))
    np.testing.assert_allclose(task._block_errors(pred, target).numpy(), want, rtol=1e-5)
    # one phantom object spread thinly over an empty block costs 1, as much as a sharp one
    faint, sharp = torch.full((1, 1, 8, 8), 100.0 / 64), torch.zeros((1, 1, 8, 8))
    sharp[0, 0, 3, 4] = 100.0
    for phantom in (faint, sharp):
        assert float(task._block_errors(phantom, torch.zeros_like(phantom))) == pytest.approx(1.0, rel=1e-5)
