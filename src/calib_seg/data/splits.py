"""Seeded train/val/test splits stratified by a label (dilution level), with an extrapolation hold-out.

One function for synthetic and folder sources alike, so both are split the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def split_note(split: Split, val_fraction: float, test_fraction: float, holdout: Sequence[float] | None = None,
               tolerance: float = 0.05) -> str | None:
    """A sentence for the log and run.json when the split sizes differ from the requested fractions.

    Small data sets cannot be split 70/15/15 per dilution (each dilution keeps at least one image in val and
    test, and rounding is per dilution): 33 images become 11/11/11. ``None`` when every share is within
    ``tolerance`` of what was asked. With a ``holdout`` the test split is the held-out levels by design, so only
    the val share of the remaining images is compared.
    """
    sizes = split.sizes()
    if holdout:
        rest = sizes["train"] + sizes["val"]
        asked = {"val": val_fraction / (1 - test_fraction)}
        got = {"val": sizes["val"] / rest if rest else 0.0}
    else:
        total = sum(sizes.values())
        asked = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        got = {k: sizes[k] / total if total else 0.0 for k in asked}
    if all(abs(got[k] - asked[k]) <= tolerance for k in asked):
        return None
    if holdout:
        return (f"val is {sizes['val']} of the {rest} images outside the held-out dilutions = {100 * got['val']:.0f} %, "
                f"not the requested {100 * asked['val']:.0f} % (too few images per dilution); "
                "metrics on small splits are noisy")
    names, counts = "/".join(asked), "/".join(str(sizes[k]) for k in asked)
    shares, wanted = ("/".join(f"{100 * d[k]:.0f}" for k in asked) for d in (got, asked))
    return (f"split {names} is {counts} images = {shares} %, not the requested {wanted} % (too few images per "
            "dilution: each keeps at least one in val and in test); "
            "metrics on small splits are noisy")
