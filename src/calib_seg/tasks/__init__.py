"""calib_seg.tasks"""
