"""Segmentation metrics: our Jaccard is scikit-learn's on thresholded probabilities, not the seed's formula.

The seed computed "Jaccard" as sum(y*p) / (sum(y) + sum(p) - sum(y*p)) on raw probabilities, which reported
~0.08 for models that segmented well. These tests pin down what we compute, through the real task and Lightning.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score
from torch import nn
from torch.utils.data import DataLoader

from calib_seg.tasks.segmentation import SegmentationTask, build_loss


class Passthrough(nn.Module):
    """'Model' whose logits are its input, so a test can dictate the logits exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def seed_bug_jaccard(y: np.ndarray, p: np.ndarray) -> float:
    """The seed's broken formula: intersection of raw probabilities (no threshold)."""
    inter = float((y * p).sum())
    return inter / (float(y.sum()) + float(p.sum()) - inter)


def run(task: SegmentationTask, logits: torch.Tensor, masks: torch.Tensor, stage: str, batch_size: int = 2):
    """Evaluate ``task`` on the given (N,1,H,W) logits/masks with a real Trainer; returns the logged metrics."""
    items = [{"image": lg, "mask": m} for lg, m in zip(logits, masks)]
    loader = DataLoader(items, batch_size=batch_size)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, devices=1)
    fn = trainer.test if stage == "test" else trainer.validate
    return fn(task, loader, verbose=False)[0]


def sk(masks: torch.Tensor, pred: torch.Tensor, metric=jaccard_score) -> float:
    return float(
        metric(masks.flatten().numpy().astype(int), pred.flatten().numpy().astype(int), zero_division=0)
    )


@pytest.fixture(scope="module")
def data():
    """Six 24x24 masks with different foreground fractions and noisy logits (several batches, pooled)."""
    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 1, 24, 24)
    for i in range(6):
        r = 3 + i
        masks[i, 0, 12 - r : 12 + r, 5 : 5 + 2 * r] = 1
    logits = (masks * 2 - 1) * 1.5 + torch.randn(masks.shape, generator=g) * 1.2
    return logits, masks


@pytest.fixture(scope="module")
def test_results(data):
    logits, masks = data
    return run(SegmentationTask(Passthrough(), threshold=0.5), logits, masks, "test")


def test_test_jaccard_equals_sklearn_jaccard_score_on_thresholded_probabilities_pooled_over_batches(
    data, test_results
):
    logits, masks = data
    probs = torch.sigmoid(logits)
    assert test_results["test/jaccard"] == pytest.approx(sk(masks, probs > 0.5), abs=1e-6)


def test_dice_precision_recall_equal_sklearn(data, test_results):
    logits, masks = data
    pred = torch.sigmoid(logits) > 0.5
    assert test_results["test/dice"] == pytest.approx(sk(masks, pred, f1_score), abs=1e-6)
    assert test_results["test/precision"] == pytest.approx(sk(masks, pred, precision_score), abs=1e-6)
    assert test_results["test/recall"] == pytest.approx(sk(masks, pred, recall_score), abs=1e-6)


def test_all_foreground_baseline_equals_foreground_fraction(data, test_results):
    _, masks = data
    assert test_results["test/jaccard_all_foreground"] == pytest.approx(float(masks.mean()), abs=1e-6)
    assert test_results["test/jaccard"] > test_results["test/jaccard_all_foreground"] + 0.3


def test_threshold_curve_matches_sklearn_at_every_threshold_and_reports_the_best(data, test_results):
    logits, masks = data
    probs = torch.sigmoid(logits)
    ref = {}
    for i in range(1, 10):
        t = round(0.1 * i, 2)
        ref[t] = sk(masks, probs > t)
        assert test_results[f"test/jaccard_t{t:.2f}"] == pytest.approx(ref[t], abs=1e-6), t
    assert test_results["test/best_threshold"] == pytest.approx(max(ref, key=ref.get))
    # the headline stays at the configured threshold, whatever the curve's best is
    assert test_results["test/jaccard"] == pytest.approx(ref[0.5], abs=1e-6)


def test_jaccard_differs_from_seed_product_of_probabilities_formula_on_a_constructed_example():
    # A perfect segmentation at threshold 0.5 with unconfident probabilities: foreground pixels p=0.7,
    # background p=0.3, 8 % foreground like EM mitochondria. Correct Jaccard: 1.0. Seed formula: ~0.16.
    masks = torch.zeros(2, 1, 25, 25)
    masks[:, :, 5:12, 5:12] = 1
    probs = torch.where(masks > 0, torch.tensor(0.7), torch.tensor(0.3))
    logits = torch.logit(probs)
    res = run(SegmentationTask(Passthrough()), logits, masks, "test")
    bug = seed_bug_jaccard(masks.numpy(), torch.sigmoid(logits).numpy())
    assert res["test/jaccard"] == pytest.approx(1.0)
    assert res["test/jaccard"] == pytest.approx(sk(masks, torch.sigmoid(logits) > 0.5))
    assert bug < 0.25
    assert abs(res["test/jaccard"] - bug) > 0.7


def test_task_passes_probabilities_not_logits_to_the_metrics():
    # All logits inside [0, 1]: torchmetrics would threshold such *logits* at 0.5 directly (no sigmoid), which
    # calls logit 0.3 background. As probabilities sigmoid(0.3)=0.57 > 0.5, so it is foreground.
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, :12] = 1
    logits = torch.where(masks > 0, torch.tensor(0.9), torch.tensor(0.1))
    logits[:, :, :4] = 0.3  # a third of the foreground has logit 0.3
    res = run(SegmentationTask(Passthrough()), logits, masks, "val")
    on_probs = sk(masks, torch.sigmoid(logits) > 0.5)  # everything foreground -> 12/16 = 0.75
    on_logits = sk(masks, logits > 0.5)  # only the logit-0.9 rows -> 8/12 = 0.667
    assert on_probs != pytest.approx(on_logits)
    assert res["val/jaccard"] == pytest.approx(on_probs, abs=1e-6)


def test_validation_logs_every_documented_name_and_metric_definitions_cover_them(data):
    logits, masks = data
    task = SegmentationTask(Passthrough())
    val = run(task, logits, masks, "val")
    expected = {
        "val/loss",
        "val/jaccard",
        "val/dice",
        "val/precision",
        "val/recall",
        "val/jaccard_all_foreground",
    }
    assert expected <= set(val)
    defs = task.metric_definitions()
    assert expected <= set(defs)
    assert "sigmoid probabilities" in defs["val/jaccard"] and "threshold=0.5" in defs["val/jaccard"]


def test_metric_definitions_cover_all_test_names(test_results):
    defs = SegmentationTask(Passthrough()).metric_definitions()
    assert set(test_results) <= set(defs)
    assert "train/loss" in defs


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_configured_threshold_is_used_by_the_headline_metric(data, threshold):
    logits, masks = data
    res = run(SegmentationTask(Passthrough(), threshold=threshold), logits, masks, "val")
    assert res["val/jaccard"] == pytest.approx(sk(masks, torch.sigmoid(logits) > threshold), abs=1e-6)


def test_mask_values_outside_zero_one_are_rejected_by_the_metrics(data):
    logits, masks = data
    with pytest.raises(RuntimeError, match="target"):
        run(SegmentationTask(Passthrough()), logits, masks * 255, "val")


SEG_LOSSES = ("focal", "dice", "focal_dice", "bce", "bce_dice", "bce_lovasz")


def _lovasz_hinge_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge over all pixels, from Berman et al. 2018 (Alg. 1): hinge errors 1 - logit * sign sorted
    in decreasing order, dotted with the increments of the Jaccard loss along that order."""
    x, y = logits.double().ravel().numpy(), target.double().ravel().numpy()
    err = 1 - x * (2 * y - 1)
    order = np.argsort(-err, kind="stable")
    err, y = err[order], y[order]
    inter, union = y.sum() - np.cumsum(y), y.sum() + np.cumsum(1 - y)
    increments = np.diff(1 - inter / union, prepend=0.0)
    return torch.tensor(float(np.maximum(err, 0) @ increments), dtype=logits.dtype)


def test_losses_by_name_and_unknown_loss_is_a_clear_error():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    p = torch.sigmoid(logits)
    # independent references: binary focal loss (gamma 2, no alpha) and soft Dice, written out from their formulas
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = torch.where(target == 1, p, 1 - p)
    focal_ref = ((1 - pt) ** 2 * bce).mean()
    dice_ref = 1 - (2 * (p * target).sum() + 0.0) / (p.sum() + target.sum()).clamp_min(1e-7)
    lovasz_ref = _lovasz_hinge_reference(logits, target)
    losses = {name: build_loss(name)(logits, target) for name in SEG_LOSSES}
    torch.testing.assert_close(losses["focal"], focal_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["dice"], dice_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["focal_dice"], focal_ref + dice_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["bce"], bce.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["bce_dice"], bce.mean() + dice_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["bce_lovasz"], bce.mean() + lovasz_ref, rtol=1e-5, atol=1e-6)
    uint8_target = build_loss("bce")(logits, target.to(torch.uint8))  # masks may arrive as uint8
    torch.testing.assert_close(uint8_target, bce.mean(), rtol=1e-5, atol=1e-6)
    # orderings: confident right predictions cost less than a coin flip, which costs less than confident wrong ones
    for name, loss in ((n, build_loss(n)) for n in losses):
        right, flip, wrong = (loss(s * (2 * target - 1), target) for s in (8.0, 0.0, -8.0))
        assert right < flip < wrong, name
    with pytest.raises(ValueError, match="loss must be one of"):
        SegmentationTask(Passthrough(), loss="hinge")
