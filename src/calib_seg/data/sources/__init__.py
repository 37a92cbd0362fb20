"""Data sources, one module per source (the protocol they implement: :mod:`calib_seg.data.sources.protocol`).

Density sources (``load() -> BeadSet``): ``beads_synth`` (simulated dilution series), ``bead_folder``
(images + manifest). Segmentation sources (``split(name) -> SegSplit``, ``fingerprint()``): ``epfl`` (TIFF
stacks), ``image_folder`` (image/mask folders, split or flat layout), ``mito_synth`` (synthetic EM).
"""
