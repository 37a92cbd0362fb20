"""calib_seg's grid sweeper for Hydra (``hydra/sweeper=calib_seg_basic``, the default of ``conf/hydra/default.yaml``).

Hydra's BasicSweeper (cartesian product of ``hydra.sweeper.params`` and command-line ``a=1,2``) with two additions:

- every job is told which keys the grid sweeps (``hydra.sweeper.swept_keys``), so its folder is named by the swept
  values only (``${job_dirname:}``, :mod:`calib_seg.resolvers`), never by the fixed overrides;
- with ``+resume=true`` the jobs are matched to the sweep folder's finished jobs by their swept values before
  anything is launched, and a changed fixed override or a changed grid is refused (exit 2,
  :func:`calib_seg.resume.check_resumed_grid`).
"""
