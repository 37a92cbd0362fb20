"""Seeded train/val/test splits stratified by a label (dilution level), with an extrapolation hold-out.

One function for synthetic and folder sources alike, so both are split the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Indices of each split into the source's samples."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def stratified_split(
    labels: np.ndarray,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    holdout: list[float] | tuple[float, ...] | None = None,
) -> Split:
    """Split sample indices so every label (dilution) appears in each split in proportion.

    Within each label at least one sample goes to val and to test when the label has 3 or more samples.
    ``holdout`` labels are removed from train and val entirely and form the test split on their own (the
    extrapolation question: can a model trained on 100x..51200x predict 50x?).
    """
    labels = np.asarray(labels, dtype=float)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    holdout_set = {float(h) for h in (holdout or [])}
    present = set(np.unique(labels).tolist())
    missing = holdout_set - present
    if missing:
        raise ValueError(f"holdout dilutions {sorted(missing)} not in the data; present: {sorted(present)}")
    train, val, test = [], [], []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        if float(lab) in holdout_set:
            test.extend(idx.tolist())
            continue
        if holdout_set:  # extrapolation mode: test is only the held-out levels
            n_val = max(1, int(round(val_fraction / (1 - test_fraction) * len(idx)))) if len(idx) >= 2 else 0
            val.extend(idx[:n_val].tolist())
            train.extend(idx[n_val:].tolist())
            continue
        n = len(idx)
        n_val = int(round(val_fraction * n))
        n_test = int(round(test_fraction * n))
        if n >= 3:
            n_val, n_test = max(n_val, 1 if val_fraction > 0 else 0), max(n_test, 1 if test_fraction > 0 else 0)
        val.extend(idx[:n_val].tolist())
        test.extend(idx[n_val : n_val + n_test].tolist())
        train.extend(idx[n_val + n_test :].tolist())
    split = Split(np.sort(np.array(train, int)), np.sort(np.array(val, int)), np.sort(np.array(test, int)))
    for name, n in split.sizes().items():
        # R2Score needs two samples; an empty split would make metrics silently undefined
        if n < 2 and (name == "train" or (name == "val" and val_fraction > 0) or (name == "test" and (test_fraction > 0 or holdout_set))):
            raise ValueError(f"the {name} split has {n} sample(s) (sizes {split.sizes()}); R² needs at least 2: "
                             "use more images or larger fractions")
    return split
