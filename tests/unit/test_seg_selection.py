"""Inference choices on validation (task.threshold/tta/postprocess=auto): the pooled Jaccard is sklearn's, the
chosen threshold is the brute-force best of the grid, and only the options set to auto are searched (the tiny
training run that records and uses the choice: tests/integration/test_seg_selection_run.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from calib_seg.tasks.seg_selection import (
    POSTPROCESS_GRID,
    THRESHOLD_GRID,
    jaccard_curve,
    pooled_jaccard,
    select_inference,
)


def _maps(n: int = 3, size: int = 40, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy probability maps of disk-shaped masks whose best threshold is well away from 0.5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    probs, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(10, size - 10, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(30, 80)).astype(np.uint8)
        # foreground ~0.35, background ~0.1: a low threshold is best
        p = np.clip(0.1 + 0.25 * mask + rng.normal(0, 0.08, mask.shape), 0, 1).astype(np.float32)
        probs.append(p)
        masks.append(mask)
    return probs, masks


def _batches(probs, masks):
    return [{"image": torch.from_numpy(p)[None, None], "mask": torch.from_numpy(m)[None, None]}
            for p, m in zip(probs, masks)]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_pooled_jaccard_is_sklearns_on_the_concatenated_pixels():
    probs, masks = _maps()
    truth = np.concatenate([m.ravel() for m in masks])
    for t in (0.05, 0.2, 0.3, 0.5, 0.9):
        pred = np.concatenate([(p > t).ravel() for p in probs]).astype(int)
        assert pooled_jaccard(probs, masks, t) == pytest.approx(jaccard_score(truth, pred, zero_division=0))


def test_threshold_auto_picks_the_brute_force_best_threshold_of_the_grid():
    probs, masks = _maps()
    choice = select_inference(_identity, _batches(probs, masks), threshold="auto", tta=False, postprocess=None)
    truth = np.concatenate([m.ravel() for m in masks])
    reference = {t: jaccard_score(truth, np.concatenate([(p > t).ravel() for p in probs]).astype(int))
                 for t in THRESHOLD_GRID}
    best = max(reference.values())
    assert choice["threshold"] in THRESHOLD_GRID and reference[choice["threshold"]] == pytest.approx(best)
    assert choice["val_jaccard"] == pytest.approx(best)
    assert choice["threshold"] < 0.4 and best > reference[0.5] + 0.2  # the fixture's optimum is not 0.5
    assert choice["searched"] == ["threshold"] and choice["source"] == "val" and choice["n_images"] == 3
    # only the threshold was searched: one candidate per grid threshold, TTA and post-processing as configured
    assert len(choice["candidates"]) == len(THRESHOLD_GRID) and choice["tta"] is False
    assert choice["postprocess"] == {"median": 0, "min_size": 0}
    assert [r["val_jaccard"] for r in choice["candidates"]] == pytest.approx(jaccard_curve(probs, masks, THRESHOLD_GRID))


def test_fixed_options_are_kept_and_postprocess_auto_removes_specks_when_they_hurt():
    probs, masks = _maps(seed=1)
    fixed = select_inference(_identity, _batches(probs, masks), threshold=0.3, tta=True,
                             postprocess={"median": 0, "min_size": 0})
    assert (fixed["threshold"], fixed["tta"], fixed["searched"], len(fixed["candidates"])) == (0.3, True, [], 1)
    # clean maps plus isolated false-positive specks: removing small components is the best post-processing
    clean = [np.where(m > 0, 0.9, 0.05).astype(np.float32) for m in masks]
    for p in clean:
        p[::9, ::9] = 0.95
    choice = select_inference(_identity, _batches(clean, masks), threshold=0.5, tta=False, postprocess="auto")
    assert len(choice["candidates"]) == len(POSTPROCESS_GRID) and choice["searched"] == ["postprocess"]
    plain = pooled_jaccard(clean, masks, 0.5)
    assert choice["postprocess"]["median"] > 0 or choice["postprocess"]["min_size"] > 0
    assert choice["val_jaccard"] > plain + 0.1


def test_tta_auto_keeps_plain_inference_for_an_equivariant_model():
    probs, masks = _maps(seed=2)
    choice = select_inference(_identity, _batches(probs, masks), threshold=0.5, tta="auto", postprocess=None)
    # the identity map is D4-equivariant: TTA gives the same scores, and a tie goes to the plainer candidate
    on, off = ([r["val_jaccard"] for r in choice["candidates"] if r["tta"] is v] for v in (True, False))
    assert on == pytest.approx(off) and choice["tta"] is False


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"tta": "maybe"}])
def test_auto_values_are_the_only_strings_the_task_accepts(bad):
    from calib_seg.tasks.segmentation import SegmentationTask

    with pytest.raises(ValueError):
        SegmentationTask(torch.nn.Conv2d(1, 1, 1), **bad)
