"""Seeded train/val/test splits stratified by a label (dilution level), with an extrapolation hold-out.

One function for synthetic and folder bead sources alike, so both are split the same way; and contiguous
slice blocks (:func:`contiguous_blocks`) for the slices of one EM volume, where random hold-outs would leak.
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


BLOCK_POSITIONS = ("first", "middle", "last")


def _check_block(block: Sequence[int], n: int, name: str) -> tuple[int, int]:
    if len(block) != 2:
        raise ValueError(f"{name} must be [start, stop) slice indices, got {list(block)}")
    a, b = int(block[0]), int(block[1])
    if not 0 <= a < b <= n:
        raise ValueError(f"{name}={[a, b]} is not a non-empty range [start, stop) inside the {n} slices (0..{n})")
    return a, b


def _block_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction < 1, 0 <= test_fraction < 1 and their sum < 1, "
                         f"got val_fraction={val_fraction}, test_fraction={test_fraction}")
    n_val = max(1, int(round(n * val_fraction)))
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
    return n_val, n_test


def _held_out_ranges(
    n: int, val_fraction: float, test_fraction: float, block: str | None,
    val_block: Sequence[int] | None, test_block: Sequence[int] | None,
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``[start, stop)`` of the validation block and of the test block (None: no test) of ``n`` slices."""
    if val_block is not None:
        if test_fraction or block is not None:
            raise ValueError("val_block/test_block give the held-out slices explicitly: leave test_fraction=0 and "
                             f"block unset (got test_fraction={test_fraction}, block={block!r})")
        va = _check_block(val_block, n, "val_block")
        te = _check_block(test_block, n, "test_block") if test_block is not None else None
        if te is not None and te[0] < va[1] and va[0] < te[1]:
            raise ValueError(f"val_block={list(va)} and test_block={list(te)} overlap")
    elif test_block is not None:
        raise ValueError("test_block needs val_block too (or use val_fraction/test_fraction with block)")
    else:
        block = block or "last"
        if block not in BLOCK_POSITIONS:
            raise ValueError(f"block must be one of {BLOCK_POSITIONS}, got {block!r}")
        n_val, n_test = _block_sizes(n, val_fraction, test_fraction)
        start = {"first": 0, "last": n - n_val - n_test, "middle": (n - n_val - n_test) // 2}[block]
        if start < 0:
            raise ValueError(f"{n} slices cannot hold {n_val} validation and {n_test} test slices "
                             f"(val_fraction={val_fraction}, test_fraction={test_fraction})")
        # val borders training, test sits on the far side of it (mirrored for "first")
        va = (start + n_test, start + n_test + n_val) if block == "first" else (start, start + n_val)
        te = ((start, start + n_test) if block == "first" else (va[1], va[1] + n_test)) if n_test else None
    return va, te


def contiguous_blocks(
    n: int,
    val_fraction: float = 0.25,
    test_fraction: float = 0.0,
    block: str | None = None,
    val_block: Sequence[int] | None = None,
    test_block: Sequence[int] | None = None,
    gap: int = 0,
) -> Split:
    """Split ``n`` ordered slices of one volume into training and contiguous held-out blocks (never random slices).

    Neighbouring slices of a volume are nearly identical, so a slice held out at random sits between two
    training slices and validation leaks. Here validation (and optionally test) is one contiguous block each:

    - by fraction: ``round(n * val_fraction)`` slices (at least 1) for val and ``round(n * test_fraction)``
      (at least 1 when > 0) for test, placed together at the ``block`` position: ``last`` (None) -> train|val|test,
      ``first`` -> test|val|train, ``middle`` -> train|val|test|train (centred);
    - explicitly: ``val_block`` / ``test_block`` as ``[start, stop)`` indices (then the fractions and
      ``block`` must be left unset: ``test_fraction=0``, ``block=None``).

    ``gap`` slices at every boundary between a held-out block and training are dropped from training.

    Raises:
        ValueError: impossible fractions, blocks outside ``0..n`` or overlapping, or no training slice left.
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0 slices, got {gap}")
    va, te = _held_out_ranges(n, val_fraction, test_fraction, block, val_block, test_block)
    near = np.zeros(n, bool)  # held out, or within ``gap`` of a held-out block
    for a, b in [va] + ([te] if te else []):
        near[max(0, a - gap) : min(n, b + gap)] = True
    train = np.flatnonzero(~near)
    if len(train) < 1:
        raise ValueError(f"no training slice left: {n} slices, val {list(va)}, test {list(te) if te else None}, "
                         f"gap {gap}; lower the held-out fractions or the gap")
    test = np.arange(*te) if te else np.array([], int)
    return Split(train, np.arange(*va), test)
