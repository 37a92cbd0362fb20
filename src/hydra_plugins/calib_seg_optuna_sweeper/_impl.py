"""The resumable Optuna sweep loop (imported only when ``hydra/sweeper=calib_seg_optuna`` is instantiated).

Reuses the stock ``OptunaSweeperImpl`` for everything but the loop: search-space parsing (``hydra.sweeper.params``
with ``choice``/``interval``/``tag(log, ...)``), sampler and direction handling, suggesting a trial's overrides.
The loop differs in four ways (see the package docstring): ``n_trials`` is the study's total of answered trials,
trials left RUNNING by a kill are recovered or retried, a job's outcome is read from its ``run.json``
(aborted -> PRUNED, failed -> FAIL), and job folders are numbered by trial number and named by the
trial's parameters only.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState, create_trial

from calib_seg.resume import check_resumed_study
from hydra_plugins.calib_seg_basic_sweeper.sweeper import refuse_changed, swept_keys_override

log = logging.getLogger(__name__)

#: exit codes of an interrupted job (calib_seg.resume: SIGTERM 143, Ctrl-C 130): the sweep stops with them
INTERRUPT_EXIT_CODES = (130, 143)
ANSWERED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def answered_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: finished with an answer, not interrupted by a kill."""
    return [t for t in study.get_trials(deepcopy=False, states=ANSWERED) if not t.user_attrs.get("interrupted")]


def read_record(job_dir: Path | None, name: str = "run.json") -> dict[str, Any]:
    """A job's run record (``{}`` when there is none or it cannot be read)."""
    if job_dir is None or not (job_dir / name).is_file():
        return {}
    try:
        return json.loads((job_dir / name).read_text())
    except (OSError, ValueError):
        return {}


def outcome(ret: JobReturn | None, record: dict[str, Any]) -> tuple[TrialState, float | None, str | None]:
    """(state, value, reason) of one finished job: the run record decides, the job's return value is the score.

    An aborted run (training guard) is PRUNED, a failed job or one without a finite score FAIL: Optuna never sees
    a made-up worst value. Without a run record (an app that writes none) the return value alone decides.
    """
    status = record.get("status")
    if status == "aborted":
        return TrialState.PRUNED, None, record.get("reason")
    job_ok = ret is not None and ret.status == JobStatus.COMPLETED
    if status == "completed" or (status is None and job_ok):
        value = ret.return_value if job_ok else record.get("best_val")
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value):
            return TrialState.COMPLETE, value, None
        return TrialState.FAIL, None, f"finished without a finite {record.get('optimized_metric', 'score')}"
    if ret is not None and ret.status == JobStatus.FAILED:
        exc = ret._return_value
        return TrialState.FAIL, None, record.get("reason") or f"{type(exc).__name__}: {exc}"
    return TrialState.FAIL, None, record.get("reason") or "the job left no run record"


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    """The stock sweeper with calib_seg's loop (see the module docstring)."""

    def __init__(self, *, retry_interrupted: int = 1, run_record: str = "run.json", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry_interrupted = int(retry_interrupted)
        self.run_record = run_record

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(distributions, fixed overrides) from ``hydra.sweeper.params`` and the command line, as the stock one."""
        if getattr(self.sampler, "func", None) is optuna.samplers.GridSampler:
            raise ValueError("hydra/sweeper=calib_seg_optuna needs a model-based or random sampler; "
                             "grids are the hparams_search files with the basic sweeper")
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        space = {**(self.search_space_distributions or {}), **space}
        for name in fixed:
            space.pop(name, None)
        return space, fixed

    def sweep(self, arguments: list[str]) -> None:
        """Run or continue the study until ``n_trials`` trials are answered (COMPLETE, PRUNED or FAIL)."""
        space, fixed = self._search_space(arguments)
        # a continued study: its finished trials must have run with these fixed overrides (calib_seg.resume)
        refuse_changed(check_resumed_study, self.config, [f"{k}={v}" for k, v in fixed.items()], list(space))
        directions = self._get_directions()
        if len(directions) != 1:
            raise ValueError("hydra/sweeper=calib_seg_optuna optimises one metric (optimized_metric)")
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        done = len(answered_trials(study))
        log.info(f"Study {study.study_name} in {self.storage}: {done} of {self.n_trials} trials answered")
        self._recover(study)
        while (todo := self.n_trials - len(answered_trials(study))) > 0:
            trials = [study.ask() for _ in range(min(todo, self.n_jobs))]
            tag = swept_keys_override(list(space))  # the trial's folder is named by its parameters only
            overrides = [[*ov, tag] for ov in self._configure_trials(trials, space, fixed)]
            for trial, ret in zip(trials, self._launch(trials, overrides)):
                self._finish(study, trial, ret)
        self._save_results(study)

    def _job_dir(self, number: int, ret: JobReturn | None) -> Path | None:
        """The trial's job folder: from the job's Hydra config, else the one ``<sweep dir>/<number>_*`` folder."""
        out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret and ret.hydra_cfg else None
        if out:
            return Path(out)
        sweep = Path(self.sweep_dir)
        found = [p for p in sweep.glob(f"{number}_*") if p.is_dir()] + [p for p in [sweep / str(number)] if p.is_dir()]
        return found[0] if len(found) == 1 else None

    def _launch(self, trials: Sequence[optuna.Trial], overrides: Sequence[Sequence[str]]) -> list[JobReturn | None]:
        """Launch one batch with ``hydra.job.num`` = trial number (``None`` for a job that left no return).

        A job that ends with ``SystemExit`` inside this process (basic launcher: a bad config or input exits 2)
        fails its trial instead of the sweep; an interruption (SIGTERM 143, Ctrl-C 130) stops the sweep, and the
        next run recovers the trial.
        """
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            groups = [(numbers[0], list(overrides))]
        else:  # a retried trial took an earlier number: one launch per trial keeps folder = trial number
            groups = [(n, [o]) for n, o in zip(numbers, overrides)]
        returns: list[JobReturn | None] = []
        for start, batch in groups:
            try:
                returns.extend(self.launcher.launch(batch, initial_job_idx=start))
            except SystemExit as exc:
                if exc.code in INTERRUPT_EXIT_CODES:
                    raise
                log.warning(f"job {start} exited with {exc.code}: its trial is failed, the study goes on")
                returns.extend([None] * len(batch))
        return returns

    def _finish(self, study: optuna.Study, trial: optuna.Trial | FrozenTrial, ret: JobReturn | None) -> None:
        """Tell Optuna one job's outcome, with the run's status, reason, epochs and time as user attributes."""
        job_dir = self._job_dir(trial.number, ret)
        record = read_record(job_dir, self.run_record)
        state, value, reason = outcome(ret, record)
        attrs = {"job_dir": str(job_dir) if job_dir else None, "run_status": record.get("status"),
                 "reason": reason, "epochs": record.get("epochs"), "wall_time_s": record.get("wall_time_s")}
        for key, val in attrs.items():
            if val is not None:
                study._storage.set_trial_user_attr(trial._trial_id, key, val)
        study.tell(trial.number, values=value if state == TrialState.COMPLETE else None, state=state)
        shown = f"value {value:.6g}" if value is not None else f"({reason})"
        log.info(f"Trial {trial.number} {state.name} {shown} params {trial.params}")

    def _recover(self, study: optuna.Study) -> None:
        """Finish or retry the trials a killed sweep left RUNNING (one sweep process per study at a time).

        A job that ended after all (a cluster job outlives the sweep process) is told from its ``run.json``; one
        that did not is FAIL with ``user_attrs.interrupted`` (it does not count towards ``n_trials``) and its
        parameters are queued again as a new trial, up to ``retry_interrupted`` times per original trial.
        """
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            record = read_record(self._job_dir(t.number, None), self.run_record)
            if record.get("status") in ("completed", "aborted"):
                self._finish(study, t, None)
                continue
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted: the sweep stopped while it ran")
            study.tell(t.number, state=TrialState.FAIL)
            retry = int(t.user_attrs.get("retry", 0)) + 1
            if retry > self.retry_interrupted:
                log.warning(f"Trial {t.number} was interrupted again: not retried")
                continue
            origin = t.user_attrs.get("retry_of", t.number)
            with warnings.catch_warnings():  # add_trial/create_trial are "experimental" in optuna 2.10
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": t.params},
                                             user_attrs={"retry_of": origin, "retry": retry}))
            log.warning(f"Trial {t.number} was interrupted by a kill: failed, its parameters are tried again")

    def _save_results(self, study: optuna.Study) -> None:
        """``optimization_results.yaml`` like the stock sweeper's, plus the count of trials per state."""
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": str(self.storage),
                                   "n_trials": self.n_trials, "states": {s: states.count(s) for s in sorted(set(states))}}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            results.update(best_params=None, best_value=None, best_trial=None)
            log.warning("No trial completed: no best parameters")
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml")
