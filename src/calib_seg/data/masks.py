"""Binary masks of the segmentation sources: validated once at load time, binarised when sampled.

A mask may hold {0, 1} or {0, 255} (or be boolean); anything else is an error naming the file and the values.
After validation ``mask > 0`` is the correct binarisation.
"""

from __future__ import annotations

import numpy as np


def mask_values(mask: np.ndarray) -> np.ndarray:
    """Distinct values of a mask; uses a histogram for 8-bit data (fast on memory-mapped stacks)."""
    m = np.asarray(mask)
    if m.dtype == np.uint8:
        counts = np.zeros(256, dtype=np.int64)
        # chunked so a memory-mapped stack is streamed, not loaded at once
        flat = m.reshape(m.shape[0], -1) if m.ndim > 1 else m[None]
        for start in range(0, flat.shape[0], 16):
            counts += np.bincount(flat[start : start + 16].ravel(), minlength=256)
        return np.nonzero(counts)[0].astype(np.uint8)
    return np.unique(m)


def check_binary_mask(mask: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the offending values unless the mask holds {0,1} or {0,255}."""
    vals = mask_values(mask)
    ok = set(vals.tolist()) <= {0, 1} or set(vals.tolist()) <= {0, 255}
    if mask.dtype == np.bool_:
        ok = True
    if not ok:
        shown = vals.tolist()
        if len(shown) > 12:
            shown = shown[:6] + ["..."] + shown[-6:]
        raise ValueError(
            f"{name}: mask values must be {{0,1}} or {{0,255}}, found {len(vals)} distinct values {shown}"
        )


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Mask (already validated) -> float32 {0, 1}."""
    return (np.asarray(mask) > 0).astype(np.float32)
