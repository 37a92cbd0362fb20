"""calib_seg.data: everything between files (or a simulator) and the batches a task sees.

- ``sources/``: one module per data source behind one protocol (``sources/protocol.py``);
- ``simulators/``: the bead and EM image generators the synthetic sources use;
- ``containers.py``: ``BeadSet`` (density) and ``SegSplit`` (segmentation), what sources hand over;
- ``density.py``, ``segmentation.py``: the two LightningDataModules; ``patches.py``: segmentation datasets;
- ``splits.py``: stratified and contiguous-block splits; ``augment.py``: paired augmentations;
- ``images.py``: the one pixel-conversion rule; ``masks.py``: binary-mask validation.
"""
