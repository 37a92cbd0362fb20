"""calib_seg's PBS Pro / Torque launcher for Hydra (``hydra/launcher=pbs``).

Neither Hydra nor submitit ships a PBS launcher, so this plugin writes one array job script per sweep
batch, submits it with ``qsub``, optionally waits for it (bounded) and turns each job folder's
``run.json`` into a Hydra ``JobReturn``. It lives under the ``hydra_plugins`` namespace package
because that is where Hydra looks for plugins; keep this subpackage import-light (no torch) so
plugin discovery stays fast for every Hydra app in the environment.
"""
