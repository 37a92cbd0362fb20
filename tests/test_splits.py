"""Stratified splits by dilution and the extrapolation hold-out."""

import numpy as np
import pytest

from calib_seg.data.splits import stratified_split


def test_every_dilution_is_in_every_split_and_nothing_leaks():
    labels = np.repeat([50.0, 100.0, 200.0], 20)
    s = stratified_split(labels, 0.15, 0.15, seed=0)
    for part in (s.train, s.val, s.test):
        assert set(labels[part]) == {50.0, 100.0, 200.0}
    all_idx = np.concatenate([s.train, s.val, s.test])
    assert len(all_idx) == len(labels) == len(set(all_idx.tolist()))


def test_split_is_seeded():
    labels = np.repeat([1.0, 2.0], 30)
    a, b, c = (stratified_split(labels, seed=k) for k in (3, 3, 4))
    assert np.array_equal(a.val, b.val) and not np.array_equal(a.val, c.val)


def test_holdout_dilution_is_only_in_test():
    labels = np.repeat([50.0, 100.0, 200.0], 10)
    s = stratified_split(labels, 0.2, 0.2, seed=0, holdout=[50])
    assert set(labels[s.test]) == {50.0}
    assert 50.0 not in set(labels[s.train]) | set(labels[s.val])


def test_unknown_holdout_and_too_small_splits_are_clear_errors():
    labels = np.repeat([1.0, 2.0], 5)
    with pytest.raises(ValueError, match="holdout dilutions"):
        stratified_split(labels, holdout=[3.0])
    with pytest.raises(ValueError, match="R² needs at least 2"):
        stratified_split(np.array([1.0, 1.0, 1.0]), 0.3, 0.3)
