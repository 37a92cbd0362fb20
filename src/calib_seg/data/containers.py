"""The two in-memory containers every source hands to its DataModule.

- :class:`BeadSet`: a whole density data set (images with nominal density, dilution, realised count), before
  any split; :class:`~calib_seg.data.density.DensityDataModule` splits it.
- :class:`SegSplit`: one segmentation split (2-D images with binary masks), already decided by the source;
  :class:`~calib_seg.data.segmentation.SegmentationDataModule` cuts it into patches, tiles or whole images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BeadSet:
    """Images with their labels, as loaded or simulated (before any split)."""

    images: np.ndarray  # (N, H, W) uint8 / uint16 / float32
    scale: float  # images / scale lies in [0, 1]
    density: np.ndarray  # (N,) nominal beads/mm²
    dilution: np.ndarray  # (N,) dilution factor (NaN when unknown)
    count: np.ndarray  # (N,) realised beads in the FOV (NaN when unknown)
    names: list[str]
    fov_area_mm2: float | None  # None when the pixel size is unknown
    fingerprint: dict[str, Any]
    #: bead centres (y, x) um per image for density-map targets; None = no image is point-annotated, a None entry
    #: = that image is labelled only by its density (image-level supervision of the map's integral)
    centres_um: list[np.ndarray | None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.density)


@dataclass
class SegSplit:
    """One split: images (2-D, stored dtype or float32) and masks (2-D, validated {0,1}/{0,255}), same shapes.

    ``images``/``masks`` may be lists or lazy views over memory-mapped stacks; index them to get one 2-D
    array. ``names`` label each item in error messages and predictions.
    """

    images: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def shapes(self) -> list[tuple[int, int]]:
        """(H, W) of every item."""
        return [tuple(self.images[i].shape[:2]) for i in range(len(self))]

    def foreground_fraction(self) -> float:
        """Fraction of foreground pixels over the whole split (pixel-weighted)."""
        fg = total = 0
        for i in range(len(self)):
            m = np.asarray(self.masks[i])
            fg += int(np.count_nonzero(m))
            total += m.size
        return fg / total if total else float("nan")

    def subset(self, idx: Sequence[int]) -> SegSplit:
        """The items at positions ``idx``, in that order."""
        return SegSplit([self.images[i] for i in idx], [self.masks[i] for i in idx], [self.names[i] for i in idx])
