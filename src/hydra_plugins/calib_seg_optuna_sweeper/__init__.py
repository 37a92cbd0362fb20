"""calib_seg's Optuna sweeper for Hydra (``hydra/sweeper=calib_seg_optuna``): resumable, honest about aborts.

It extends hydra-optuna-sweeper (the ``hpo`` extra) where the stock sweeper does not fit calib_seg:

- **resume**: the study lives in ``<sweep dir>/optuna.db``; ``n_trials`` is the study's total, so a re-run of the
  same command continues where the killed one stopped instead of running ``n_trials`` new trials;
- **interrupted trials**: a trial left RUNNING by a kill is finished from its job's ``run.json`` when the job
  ended after all (cluster launchers), otherwise marked FAIL (``user_attrs.interrupted``) and retried once;
- **aborted and failed jobs**: a job the training guard aborted (``run.json`` ``status: aborted``) is PRUNED,
  a failed job FAIL, never a made-up worst score; neither stops the study;
- job folders are numbered by trial number (and named by the trial's parameters), so a resumed sweep never
  writes into an earlier trial's folder; continuing a study with another fixed override is refused (exit 2).

Import-light like every ``hydra_plugins`` subpackage (Hydra imports it for every app): optuna is imported only
when the sweeper is instantiated, and without the extra this plugin registers nothing.
"""
