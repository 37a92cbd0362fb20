"""calib_seg: experiment framework for microscopy deep learning (bead density regression, mito segmentation)."""

__version__ = "0.1.0"
