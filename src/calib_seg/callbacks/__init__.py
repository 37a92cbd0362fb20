"""calib_seg.callbacks"""
