"""calib_seg.models"""
