"""Structured config of the sweeper, registered as ``hydra/sweeper: calib_seg_optuna`` (needs the ``hpo`` extra).

It is the stock ``OptunaSweeperConf`` (sampler, direction, storage, study_name, n_trials, n_jobs, params) with
calib_seg's target and two options. Without hydra-optuna-sweeper installed nothing is registered, and
``hydra/sweeper=calib_seg_optuna`` fails with Hydra's "could not find" message.
"""

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035  (OmegaConf structured configs read typing generics)

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
except ImportError:  # the hpo extra is not installed
    OptunaSweeperConf = None

if OptunaSweeperConf is not None:

    @dataclass
    class CalibSegOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.calib_seg_optuna_sweeper.sweeper.CalibSegOptunaSweeper"
        # how often the parameters of a trial interrupted by a kill are tried again (in a new trial)
        retry_interrupted: int = 1
        # name of the run record each job writes into its own folder (its status decides COMPLETE/PRUNED/FAIL)
        run_record: str = "run.json"
        # set by the sweeper for each trial's job (the search-space keys); names the job folder (resolvers.py)
        swept_keys: Optional[List[str]] = field(default=None)  # noqa: UP006, UP045

    ConfigStore.instance().store(group="hydra/sweeper", name="calib_seg_optuna", node=CalibSegOptunaSweeperConf,
                                 provider="calib_seg")
