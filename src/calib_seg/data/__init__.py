"""calib_seg.data"""
