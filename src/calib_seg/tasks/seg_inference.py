"""Whole-image inference extras for binary segmentation: test-time augmentation and post-processing.

Both act on **probabilities** so the metrics, the Jaccard-vs-threshold curve and the written masks all see the
same map:

* :func:`tta_proba` averages the foreground probability over the 8 flips/90-degree rotations of the image (the
  dihedral group D4), each mapped back before averaging. A model that is exactly flip/rotation-equivariant gets
  its plain prediction back.
* :func:`postprocess_proba` optionally median-filters the probability map and removes connected foreground
  components (at the task threshold) smaller than ``min_size`` pixels by setting their probability to 0.

The segmentation task applies them in its test step, in ``predict_proba`` (used by ``calib_seg.predict``) and
therefore in ``calib_seg.evaluate``; validation during training stays plain (8x cheaper).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["D4", "tta_proba", "PostProcess", "postprocess_proba", "make_postprocess"]

# (k rotations by 90 degrees, horizontal flip first) for the 8 elements of the dihedral group D4
D4: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))


def _forward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, (-2, -1)) if k else x


def _inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if k:
        x = torch.rot90(x, -k, (-2, -1))
    return x.flip(-1) if flip else x


def tta_proba(proba_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Mean of ``proba_fn`` over the 8 flips/rotations of ``images`` ``(..., H, W)``, each mapped back.

    ``proba_fn`` must accept any ``H, W`` (rotations swap them for non-square images), e.g. the task's tiled
    whole-image predictor.
    """
    total = None
    for k, flip in D4:
        p = _inverse(proba_fn(_forward(images, k, flip)), k, flip)
        total = p if total is None else total + p
    return total / len(D4)


@dataclass(frozen=True)
class PostProcess:
    """Post-processing of a probability map.

    Args:
        median: odd side of a median filter applied to the probability map (0 or 1 = off).
        min_size: connected foreground components (8-connectivity, at ``threshold``) with fewer pixels get
            probability 0 (0 = off).
        threshold: the threshold that defines foreground for ``min_size``.
    """

    median: int = 0
    min_size: int = 0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.median < 0 or (self.median > 1 and self.median % 2 == 0):
            raise ValueError(f"postprocess median must be 0, 1 or an odd size, got {self.median}")
        if self.min_size < 0:
            raise ValueError(f"postprocess min_size must be >= 0, got {self.min_size}")

    @property
    def active(self) -> bool:
        """True when any step changes the map."""
        return self.median > 1 or self.min_size > 0

    def describe(self) -> str:
        """Plain-text description for metric definitions and run records."""
        if not self.active:
            return "none"
        parts = []
        if self.median > 1:
            parts.append(f"{self.median}x{self.median} median filter of the probabilities")
        if self.min_size > 0:
            parts.append(f"components < {self.min_size} px at threshold {self.threshold} removed")
        return ", then ".join(parts)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return postprocess_proba(probs, self)


def postprocess_proba(probs: torch.Tensor, pp: PostProcess) -> torch.Tensor:
    """Apply ``pp`` to every 2-D map of ``probs`` ``(..., H, W)``; returns a new tensor (same device/dtype)."""
    if not pp.active:
        return probs
    arr = probs.detach().float().cpu().numpy()
    flat = arr.reshape(-1, *arr.shape[-2:]).copy()
    structure = np.ones((3, 3), dtype=bool)
    for i, p in enumerate(flat):
        if pp.median > 1:
            p = ndimage.median_filter(p, size=pp.median, mode="reflect")
        if pp.min_size > 0:
            labels, n = ndimage.label(p > pp.threshold, structure=structure)
            if n:
                sizes = np.bincount(labels.ravel())
                small = sizes < pp.min_size
                small[0] = False
                p = np.where(small[labels], 0.0, p)
        flat[i] = p
    return torch.from_numpy(flat.reshape(arr.shape)).to(device=probs.device, dtype=probs.dtype)


def make_postprocess(spec: Mapping[str, Any] | PostProcess | None, threshold: float) -> PostProcess:
    """A :class:`PostProcess` from a config mapping ``{median, min_size}`` (None = off) at ``threshold``."""
    if isinstance(spec, PostProcess):
        return spec
    spec = dict(spec or {})
    unknown = set(spec) - {"median", "min_size"}
    if unknown:
        raise ValueError(f"unknown task.postprocess keys {sorted(unknown)}; expected median, min_size")
    return PostProcess(
        median=int(spec.get("median") or 0), min_size=int(spec.get("min_size") or 0), threshold=float(threshold)
    )
