"""What a data source is: the protocol every module in :mod:`calib_seg.data.sources` implements.

A source turns configuration (``data.source`` in the config) into data in memory and says what identifies it.
There are two kinds, one per container, because the two DataModules split differently:

- a **density source** (:class:`DensitySource`: ``beads_synth``, ``bead_folder``) returns the whole set as a
  :class:`~calib_seg.data.containers.BeadSet` from ``load()``; the DataModule splits it, stratified by dilution,
  and the fingerprint travels inside the BeadSet.
- a **segmentation source** (:class:`SegmentationSource`: ``epfl``, ``image_folder``, ``mito_synth``) decides the
  splits itself, because only it knows which images are neighbours (slices of one volume) and must stay together:
  ``split(name)`` returns a :class:`~calib_seg.data.containers.SegSplit` for ``train``/``val``/``test``, and
  ``fingerprint()`` a dict whose ``sha256`` identifies the images.

Adding a source = one module here with one class, plus one ``conf/data/*.yaml``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from calib_seg.data.containers import BeadSet, SegSplit

#: the split names every segmentation source answers to
SPLITS = ("train", "val", "test")


@runtime_checkable
class DensitySource(Protocol):
    """A source for :class:`~calib_seg.data.density.DensityDataModule`."""

    def load(self, progress: bool = False) -> BeadSet: ...


@runtime_checkable
class SegmentationSource(Protocol):
    """A source for :class:`~calib_seg.data.segmentation.SegmentationDataModule`."""

    def split(self, name: str) -> SegSplit: ...

    def fingerprint(self) -> dict: ...


def check_split_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`SPLITS`."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected train, val or test")
