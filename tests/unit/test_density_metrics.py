"""Target transform round trips, and our physical-unit metrics equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from calib_seg.metrics.collections import stage_metrics
from calib_seg.tasks.transforms import TargetTransform


@pytest.mark.parametrize("kind", ["standardize", "log_standardize", "none"])
def test_target_transform_round_trips_in_beads_per_mm2(kind):
    y = torch.tensor([15.0, 28.1, 647.3, 4252.3, 7964.0], dtype=torch.float64)
    tf = TargetTransform(kind).fit(y.numpy())
    assert torch.allclose(tf.inverse(tf(y)), y, rtol=1e-9)
    # exact standardisation of the fitted targets: mean 0, sample std 1 (of log1p(y) for log_standardize)
    f = {"standardize": y, "log_standardize": torch.log1p(y), "none": None}[kind]
    z = tf(y)
    if f is None:
        assert torch.equal(z, y)
    else:
        torch.testing.assert_close(z, (f - f.mean()) / f.std(), rtol=1e-12, atol=1e-12)
        assert abs(float(z.mean())) < 1e-12 and float(z.std()) == pytest.approx(1.0, rel=1e-12)


def test_target_transform_is_fitted_on_given_targets_only_and_refuses_use_before_fit():
    with pytest.raises(RuntimeError, match="before fit"):
        TargetTransform("standardize")(torch.ones(2))
    tf = TargetTransform("standardize").fit(np.array([10.0, 30.0]))
    assert float(tf.mean) == pytest.approx(20.0)


def test_transform_state_survives_a_state_dict_round_trip():
    a = TargetTransform("log_standardize").fit(np.array([15.0, 100.0, 7964.0]))
    b = TargetTransform("log_standardize")
    b.load_state_dict(a.state_dict())
    y = torch.tensor([50.0, 500.0])
    assert torch.allclose(a(y), b(y))


def test_metrics_equal_scikit_learn_on_the_same_predictions():
    rng = np.random.default_rng(0)
    target = rng.uniform(15, 7964, size=200)
    pred = target + rng.normal(0, 300, size=200)
    m = stage_metrics("density", "test")
    # two updates, as over two batches
    for sl in (slice(0, 77), slice(77, 200)):
        m.update(torch.tensor(pred[sl], dtype=torch.float32), torch.tensor(target[sl], dtype=torch.float32))
    got = {k: float(v) for k, v in m.compute().items()}
    assert got["test/r2"] == pytest.approx(skm.r2_score(target, pred), abs=1e-4)
    assert got["test/mae"] == pytest.approx(skm.mean_absolute_error(target, pred), rel=1e-4)
    assert got["test/mse"] == pytest.approx(skm.mean_squared_error(target, pred), rel=1e-4)
    assert got["test/rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(target, pred)), rel=1e-4)
    assert got["test/mape"] == pytest.approx(100.0 * skm.mean_absolute_percentage_error(target, pred), rel=1e-3)  # percent
    assert got["test/max_error"] == pytest.approx(skm.max_error(target, pred), rel=1e-5)


def test_constant_low_predictions_give_negative_r2_as_in_the_seed_failure():
    target = np.geomspace(15, 7964, 50)
    pred = np.full(50, 250.0)
    m = stage_metrics("density", "val")
    m.update(torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32))
    assert float(m.compute()["val/r2"]) < 0
