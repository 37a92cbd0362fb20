"""The global density model's Poisson-weighted loss: each image weighs by the inverse Poisson variance of its count."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from calib_seg.tasks.density import DensityRegressionTask

AREA = 0.262144  # mm², the CPU default FOV (128 px at 4 um/px)


class _Data:
    """What the task reads from a density datamodule to fit the weights."""

    def __init__(self, targets, area=AREA):
        self._targets, self._area = np.asarray(targets, float), area

    def train_targets(self):
        return self._targets

    def fov_area_mm2(self):
        return self._area


def _task(data: _Data) -> DensityRegressionTask:
    task = DensityRegressionTask(nn.Linear(1, 1), functools.partial(torch.optim.Adam, lr=1e-3),
                                 loss="poisson_weighted")
    task.target_tf.fit(data.train_targets())
    task._fit_weights(data)
    return task


def test_loss_equals_inverse_count_variance_weighted_squared_error_scaled_to_mean_weight_one():
    train = np.array([15.0, 60.0, 500.0, 7964.0])
    task = _task(_Data(train))
    density = torch.tensor([15.0, 7964.0, 240.0])
    z_true = task.target_tf(density).float()
    z_pred = z_true + torch.tensor([0.3, -0.2, 0.5])
    w = 1.0 / (density.numpy().astype(float) * AREA + 1.0)
    norm = np.mean(1.0 / (train * AREA + 1.0))
    expected = np.mean(w / norm * (z_pred - z_true).numpy().astype(float) ** 2)
    got = float(task._loss(z_pred, z_true, density))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(float(torch.nn.functional.mse_loss(z_pred, z_true)), rel=1e-3)


def test_a_sparse_image_weighs_as_much_more_than_a_dense_one_as_its_count_variance_is_smaller():
    task = _task(_Data([15.0, 7964.0]))
    z = torch.zeros(1)
    sparse = float(task._loss(z + 0.1, z, torch.tensor([15.0])))
    dense = float(task._loss(z + 0.1, z, torch.tensor([7964.0])))
    assert sparse / dense == pytest.approx((7964.0 * AREA + 1) / (15.0 * AREA + 1), rel=1e-5)


def test_data_without_a_fov_area_is_one_clear_error():
    with pytest.raises(ValueError, match="needs the FOV area.*task.loss=mse"):
        _task(_Data([15.0, 7964.0], area=None))


def test_the_weights_are_not_saved_so_checkpoints_of_every_loss_share_one_layout():
    weighted = _task(_Data([15.0, 7964.0])).state_dict()
    plain = DensityRegressionTask(nn.Linear(1, 1), functools.partial(torch.optim.Adam, lr=1e-3)).state_dict()
    assert set(weighted) == set(plain)
