"""Stratified splits by dilution and the extrapolation hold-out; contiguous slice blocks of one volume."""

import numpy as np
import pytest

from calib_seg.data.splits import contiguous_blocks, stratified_split


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


@pytest.mark.parametrize("block", ["first", "middle", "last"])
def test_contiguous_blocks_are_one_run_each_disjoint_and_cover_the_volume(block):
    for n in range(3, 43):
        for val_fraction, test_fraction in ((0.2, 0.0), (0.15, 0.15), (0.3, 0.1)):
            s = contiguous_blocks(n, val_fraction, test_fraction, block)
            for part in (s.val, s.test):
                assert len(part) == 0 or np.array_equal(part, np.arange(part[0], part[-1] + 1)), (n, part)
            assert len(s.val) == max(1, round(n * val_fraction))
            assert len(s.test) == (max(1, round(n * test_fraction)) if test_fraction else 0)
            assert np.array_equal(np.sort(np.concatenate([s.train, s.val, s.test])), np.arange(n)), (n, s)
            # validation always borders training on one side at most: it is never split by training slices
            assert not ((s.train > s.val.min()) & (s.train < s.val.max())).any()


def test_contiguous_blocks_gap_drops_training_slices_on_both_sides_of_a_middle_block():
    s = contiguous_blocks(20, 0.2, 0.0, "middle", gap=2)
    assert s.val.tolist() == [8, 9, 10, 11]
    assert s.train.tolist() == [0, 1, 2, 3, 4, 5, 14, 15, 16, 17, 18, 19]
