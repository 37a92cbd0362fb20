"""The metrics room against independent references: scikit-learn and numpy on the same numbers.

Every metric class is also checked against its functional core and against the torchmetrics objects the tasks
used before (``BinaryJaccardIndex`` per threshold), bit for bit where the task's logged value depends on it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torchmetrics.classification import BinaryJaccardIndex

from calib_seg.metrics import functional as F
from calib_seg.metrics.collections import log_stage, stage_metrics
from calib_seg.metrics.regression import LevelAwareR2Score, MaxAbsoluteError, PerLevelMAE, SpreadStats
from calib_seg.metrics.segmentation import JaccardCurve

CURVE = tuple(round(0.1 * i, 2) for i in range(1, 10))


def density_data(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    dilution = rng.choice([50.0, 400.0, 3200.0, 25600.0], size=n)
    target = 8000.0 / dilution * 50.0 * rng.uniform(0.9, 1.1, size=n)
    pred = target + rng.normal(0, 0.1 * target.std(), size=n)
    return pred.astype(np.float32), target.astype(np.float32), dilution.astype(np.float32)


def seg_data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(6, 1, 20, 20, generator=g) > 0.7).float()
    probs = torch.sigmoid((masks * 2 - 1) * 1.2 + torch.randn(masks.shape, generator=g))
    return probs, masks


def sk_jaccard(probs: torch.Tensor, masks: torch.Tensor, t: float) -> float:
    return float(skm.jaccard_score(masks.flatten().numpy().astype(int), (probs > t).flatten().numpy().astype(int),
                                   zero_division=0))


# ------------------------------------------------------------------------------------------------ regression
def test_density_collection_equals_scikit_learn_and_numpy_per_dilution():
    pred, target, dil = density_data()
    m = stage_metrics("density", "test")
    for sl in (slice(0, 100), slice(100, None)):
        m.update(torch.from_numpy(pred[sl]), torch.from_numpy(target[sl]), level=torch.from_numpy(dil[sl]))
    got = {k: float(v) for k, v in m.compute().items()}
    p, t = pred.astype(float), target.astype(float)
    assert got["test/r2"] == pytest.approx(skm.r2_score(t, p), abs=1e-5)
    assert got["test/mae"] == pytest.approx(skm.mean_absolute_error(t, p), rel=1e-5)
    assert got["test/max_error"] == skm.max_error(t, p)  # float64 of the same float32 values: exact
    assert got["test/mape"] == pytest.approx(100 * skm.mean_absolute_percentage_error(t, p), rel=1e-4)
    for d in np.unique(dil):
        sel = dil == d
        assert got[f"test/mae_dilution_{d:g}x"] == skm.mean_absolute_error(t[sel], p[sel])
    assert {k for k in got if "dilution" in k} == {f"test/mae_dilution_{d:g}x" for d in (50, 400, 3200, 25600)}
    assert "stratified_mae" not in stage_metrics("density", "val")  # per-dilution MAE is a test-only number


def test_max_error_and_per_level_match_their_functional_core():
    pred, target, dil = density_data(60, seed=3)
    mx, per = MaxAbsoluteError(), PerLevelMAE()
    for sl in (slice(0, 7), slice(7, 7), slice(7, None)):  # an empty batch changes nothing
        mx.update(torch.from_numpy(pred[sl]), torch.from_numpy(target[sl]))
        per.update(torch.from_numpy(pred[sl]), torch.from_numpy(target[sl]), level=torch.from_numpy(dil[sl]))
    assert float(mx.compute()) == float(F.max_abs_error(torch.from_numpy(pred), torch.from_numpy(target)))
    assert {k: float(v) for k, v in per.compute().items()} == {
        f"mae_dilution_{d:g}x": v for d, v in F.per_level_mae(pred, target, dil).items()}


def test_per_level_without_levels_gives_one_nan_level():
    per = PerLevelMAE()
    per.update(torch.ones(3), torch.zeros(3))
    out = per.compute()
    assert list(out) == ["mae_dilution_nanx"] and torch.isnan(out["mae_dilution_nanx"])


def test_r2_is_nan_for_a_single_density_level_and_sklearns_otherwise():
    r2 = LevelAwareR2Score()
    r2.update(torch.tensor([1.0, 3.0, 2.0]), torch.full((3,), 2.0))
    assert torch.isnan(r2.compute())
    r2.reset()
    r2.update(torch.tensor([1.0, 3.0, 2.5]), torch.tensor([1.5, 2.5, 2.0]))
    assert float(r2.compute()) == pytest.approx(skm.r2_score([1.5, 2.5, 2.0], [1.0, 3.0, 2.5]), abs=1e-6)


def test_spread_stats_class_equals_the_functional_core_and_numpy():
    pred, target, _ = density_data(50, seed=5)
    s = SpreadStats()
    for sl in (slice(0, 20), slice(20, None)):
        s.update(torch.from_numpy(pred[sl]), torch.from_numpy(target[sl]))
    ref = F.spread_stats(pred, target)
    assert ref["pred_std"] == float(np.std(pred.astype(float))) and ref["target_range"] == float(np.ptp(target.astype(float)))
    got = {k: float(v) for k, v in s.compute().items()}
    assert got == pytest.approx(ref, rel=1e-10)
    assert F.spread_stats(pred[:1], target[:1]) == {} and SpreadStats().compute() == {}


def test_oracle_metrics_equal_scikit_learn_and_are_empty_without_counts():
    rng = np.random.default_rng(2)
    target = np.repeat([100.0, 1000.0, 5000.0], 10)
    oracle = rng.poisson(target * 0.05) / 0.05
    got = F.oracle_metrics(oracle, target, "test")
    assert got["test/r2_oracle"] == pytest.approx(skm.r2_score(target, oracle), rel=1e-12)
    assert got["test/mae_oracle"] == pytest.approx(skm.mean_absolute_error(target, oracle), rel=1e-12)
    assert F.oracle_metrics(None, target) == {}
    assert np.isnan(F.oracle_metrics(oracle[:10], target[:10], "val")["val/r2_oracle"])


# ------------------------------------------------------------------------------------------------ segmentation
def test_jaccard_curve_equals_sklearn_and_one_binary_jaccard_per_threshold_bit_for_bit():
    probs, masks = seg_data()
    curve, refs, base = JaccardCurve(CURVE), [BinaryJaccardIndex(threshold=t) for t in CURVE], BinaryJaccardIndex()
    for sl in (slice(0, 2), slice(2, None)):
        curve.update(probs[sl], masks[sl])
        base.update(torch.ones_like(probs[sl]), masks[sl])
        for r in refs:
            r.update(probs[sl], masks[sl])
    out = curve.compute()
    for t, r in zip(CURVE, refs):
        assert torch.equal(out[f"jaccard_t{t:.2f}"], r.compute()), t
        assert float(out[f"jaccard_t{t:.2f}"]) == pytest.approx(sk_jaccard(probs, masks, t), abs=1e-6)
    assert torch.equal(out["jaccard_all_foreground"], base.compute())
    assert float(out["jaccard_all_foreground"]) == pytest.approx(float(masks.mean()), abs=1e-7)
    values = torch.stack([r.compute() for r in refs])
    assert torch.equal(out["best_threshold"], torch.tensor(CURVE[int(values.argmax())]))


def test_threshold_is_compared_in_the_probabilities_dtype_as_torchmetrics_does():
    p = torch.tensor([0.1, 0.2], dtype=torch.float32)  # float32(0.1) > 0.1 in float64, == in float32
    stats = F.threshold_stats(p, torch.tensor([1.0, 1.0]), [0.1])
    ref = BinaryJaccardIndex(threshold=0.1)
    ref.update(p, torch.tensor([1, 1]))
    assert stats[1].tolist() == [1, 0, 1] and torch.equal(F.jaccard_from_stats(stats)[1], ref.compute())


def test_curve_without_thresholds_is_the_baseline_only_and_empty_masks_give_zero():
    c = JaccardCurve()
    c.update(torch.full((4,), 0.9), torch.zeros(4))
    assert c.compute() == {"jaccard_all_foreground": torch.tensor(0.0)}
    with pytest.raises(ValueError, match="thresholds"):
        JaccardCurve((0.0, 0.5))


def test_binary_jaccard_equals_sklearn_and_counts_two_empty_masks_as_perfect():
    rng = np.random.default_rng(4)
    a, b = rng.random((16, 16)) > 0.6, rng.random((16, 16)) > 0.5
    assert F.binary_jaccard(a, b) == pytest.approx(skm.jaccard_score(b.ravel(), a.ravel()))
    assert F.binary_jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_segmentation_collections_name_every_documented_key():
    probs, masks = seg_data()
    val = stage_metrics("segmentation", "val", threshold=0.5)
    test = stage_metrics("segmentation", "test", threshold=0.5, thresholds_curve=CURVE)
    val.update(probs, masks)
    test.update(probs, masks)
    head = {"jaccard", "dice", "precision", "recall", "jaccard_all_foreground"}
    assert set(val.compute()) == {f"val/{k}" for k in head}
    assert set(test.compute()) == ({f"test/{k}" for k in head} | {f"test/jaccard_t{t:.2f}" for t in CURVE}
                                   | {"test/best_threshold"})
    with pytest.raises(ValueError, match="no metrics for task"):
        stage_metrics("points", "val")


def test_log_stage_logs_every_value_once_as_float32_and_resets():
    class Recorder:
        def __init__(self):
            self.logged = {}

        def log(self, key, value, prog_bar=False):
            assert key not in self.logged
            self.logged[key] = (value, prog_bar)

    pred, target, dil = density_data(40)
    m = stage_metrics("density", "val")
    m.update(torch.from_numpy(pred), torch.from_numpy(target))
    rec = Recorder()
    values = log_stage(rec, m, prog_bar={"val/r2"})
    assert set(rec.logged) == set(values) and rec.logged["val/r2"][1] and not rec.logged["val/mae"][1]
    assert all(v.dtype == torch.float32 for v, _ in rec.logged.values())
    assert rec.logged["val/max_error"][0] == values["val/max_error"].float()
    assert all(metric.update_count == 0 for metric in m.values())  # reset for the next epoch
