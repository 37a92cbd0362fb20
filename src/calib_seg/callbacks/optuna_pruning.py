"""OptunaPruning: report each validated epoch to the job's Optuna trial and stop the run when the pruner says so.

The calib_seg Optuna sweeper (``hydra/sweeper=calib_seg_optuna``) asks a trial in the sweep process and launches
its job with ``hydra.job.num`` = the trial's number. The job finds its trial in the same study storage
(``hydra.sweeper.storage`` and ``study_name``, so nothing extra travels on the command line), reports
``monitor`` once per validated epoch (``trial.report(value, epoch)``) and asks ``trial.should_prune()`` of the
pruner configured here (e.g. ``optuna.pruners.MedianPruner``: stop a trial whose value is worse than the median
of the earlier trials at the same epoch). A pruned run stops like a guard abort: ``trainer.should_stop``,
``abort_reason``/``aborted_epoch`` (read by ``calib_seg.train`` into ``run.json``, status ``aborted``), and the
sweeper then tells Optuna PRUNED; TPE uses the reported intermediate values of pruned trials.

Outside an Optuna sweep (a single run, a grid) the callback switches itself off with one log line. Only rank 0
talks to the storage; its decision is broadcast, so DDP ranks stop together. Every job of a study writes to the
storage: a SQLite file is fine on a local disk, on a cluster's network filesystem use an RDB server
(``hydra.sweeper.storage=postgresql://...``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("calib_seg.optuna_pruning")

__all__ = ["OptunaPruning", "sweep_trial_address"]


def sweep_trial_address() -> tuple[str, str, int] | None:
    """(storage, study name, trial number) of the running job when it is a calib_seg Optuna sweep's job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    sweeper = hc.get("sweeper") or {}
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    is_optuna = "calib_seg_optuna_sweeper" in str(sweeper.get("_target_", ""))
    if hc.mode != RunMode.MULTIRUN or not is_optuna or not storage or not name or hc.job.get("num") is None:
        return None
    return str(storage), str(name), int(hc.job.num)


class OptunaPruning(pl.Callback):
    """Per-epoch ``trial.report`` + ``should_prune`` for the trial of this job (module docstring).

    Args:
        monitor: logged metric to report (the sweep's ``optimized_metric``).
        pruner: an ``optuna.pruners.BasePruner`` (Hydra instantiates it from ``_target_``).
        storage, study_name, trial_number: the trial's address; ``None`` = from the running sweep's Hydra config.
    """

    def __init__(self, monitor: str, pruner: Any, storage: str | None = None, study_name: str | None = None,
                 trial_number: int | None = None) -> None:
        self.monitor, self.pruner = monitor, pruner
        self.address = (storage, study_name, trial_number)
        self.trial: Any = None
        self.abort_reason: str | None = None
        self.aborted_epoch: int | None = None
        self.reported: dict[int, float] = {}

    def _open_trial(self) -> Any:
        """The job's RUNNING trial in the study, or None (with the reason logged) when there is none."""
        import optuna

        storage, name, number = self.address
        if storage is None or name is None or number is None:
            found = sweep_trial_address()
            if found is None:
                log.info("optuna_pruning: not a job of a calib_seg Optuna sweep, pruning is off")
                return None
            storage, name, number = (storage or found[0], name or found[1],
                                     found[2] if number is None else number)
        study = optuna.load_study(study_name=name, storage=storage, pruner=self.pruner)
        match = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not match or match[0].state != optuna.trial.TrialState.RUNNING:
            state = match[0].state.name if match else "missing"
            log.warning(f"optuna_pruning: trial {number} of study {name} is {state}, not RUNNING: pruning is off")
            return None
        log.info(f"optuna_pruning: reporting {self.monitor} to trial {number} of study {name} ({type(self.pruner).__name__})")
        return optuna.trial.Trial(study, match[0]._trial_id)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial = self._open_trial()

    def _decide(self, trainer: pl.Trainer) -> str | None:
        """Rank 0: report this epoch's value; the pruning message when the pruner stops the trial."""
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is None or value is None:
            return None
        value, epoch = float(value), int(trainer.current_epoch)
        if not math.isfinite(value) or epoch in self.reported:
            return None  # a non-finite value is the guard's business; an epoch is reported once (resumed runs)
        self.trial.report(value, epoch)
        self.reported[epoch] = value
        if not self.trial.should_prune():
            return None
        return (f"pruned by Optuna ({type(self.pruner).__name__}) at epoch {epoch}: {self.monitor} {value:.4g} "
                f"is worse than the study's earlier trials at this epoch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.abort_reason:
            return
        reason = self._decide(trainer) if trainer.is_global_zero else None
        reason = trainer.strategy.broadcast(reason, src=0)
        if reason:
            self.abort_reason, self.aborted_epoch = reason, int(trainer.current_epoch)
            trainer.should_stop = True
            log.warning(reason)
