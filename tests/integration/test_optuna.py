"""Optuna sweeps (hydra/sweeper=calib_seg_optuna, the ``hpo`` extra): resumable studies, honest trial states.

The sweeper's decisions (a job's outcome, recovering a killed sweep's trials) are tested directly on a real
SQLite study; two real multiruns (``python -m calib_seg.train -m hparams_search=density_optuna debug=tiny_beads``)
check the whole chain: kill the sweep while trial 2 runs, re-run the same command, and the study ends with the
requested number of trials, numbered on, without training a finished trial again; an aborted job is PRUNED, a
failed one FAIL, and neither stops the study.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna", reason="the hpo extra is not installed (make install-hpo)")
from hydra.core.utils import JobReturn, JobStatus  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from calib_seg.callbacks.optuna_pruning import OptunaPruning  # noqa: E402
from calib_seg.report import build_report  # noqa: E402
from helpers.paths import REPO  # noqa: E402
from hydra_plugins.calib_seg_optuna_sweeper._impl import (  # noqa: E402
    ResumableOptunaSweeperImpl,
    answered_trials,
    outcome,
)

# a density trial in a few seconds: tiny beads, 1 epoch, no test pass
TINY = ["hparams_search=density_optuna", "debug=tiny_beads", "torch_threads=1", "test=false"]


def _ret(status: JobStatus, value: object) -> JobReturn:
    ret = JobReturn()
    ret.status, ret._return_value = status, value
    return ret


# --- the outcome of one job ------------------------------------------------------------------------------------
def test_aborted_run_is_pruned_with_the_guards_reason_not_given_a_score():
    state, value, reason = outcome(_ret(JobStatus.COMPLETED, math.nan),
                                   {"status": "aborted", "reason": "aborted at epoch 0: pre-flight fit probe"})
    assert (state, value, reason) == (TrialState.PRUNED, None, "aborted at epoch 0: pre-flight fit probe")


def test_completed_run_reports_its_score_and_a_non_finite_score_fails_the_trial():
    assert outcome(_ret(JobStatus.COMPLETED, 0.625), {"status": "completed"}) == (TrialState.COMPLETE, 0.625, None)
    # the sweeper died before telling: the record's best_val is the score
    assert outcome(None, {"status": "completed", "best_val": 0.5}) == (TrialState.COMPLETE, 0.5, None)
    state, value, reason = outcome(_ret(JobStatus.COMPLETED, math.nan),
                                   {"status": "completed", "optimized_metric": "val/r2"})
    assert (state, value) == (TrialState.FAIL, None) and "val/r2" in reason


def test_failed_job_fails_the_trial_with_the_records_reason_or_the_exception():
    assert outcome(_ret(JobStatus.FAILED, ValueError("Invalid learning rate")), {}) == (
        TrialState.FAIL, None, "ValueError: Invalid learning rate")
    assert outcome(_ret(JobStatus.FAILED, ValueError("x")), {"status": "failed", "reason": "out of memory"})[2] == \
        "out of memory"
    assert outcome(None, {}) == (TrialState.FAIL, None, "the job left no run record")


# --- recovering a killed sweep's trials --------------------------------------------------------------------------
def _sweeper(tmp_path: Path, n_trials: int = 3) -> ResumableOptunaSweeperImpl:
    impl = ResumableOptunaSweeperImpl(
        sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize",
        storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", n_trials=n_trials, n_jobs=1,
        max_failure_rate=0.0, search_space=None, custom_search_space=None, params=None)
    impl.sweep_dir = str(tmp_path)
    return impl


def _running_trial(study: optuna.Study, tmp_path: Path, record: dict | None, **user_attrs: object) -> int:
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 5e-3, log=True)
    for key, val in user_attrs.items():
        trial.set_user_attr(key, val)
    job = tmp_path / f"{trial.number}_lr={trial.params['lr']}"
    job.mkdir()
    if record is not None:
        (job / "run.json").write_text(json.dumps(record))
    return trial.number


def test_killed_trials_are_finished_from_their_record_or_failed_and_retried_once(tmp_path):
    impl = _sweeper(tmp_path)
    study = optuna.create_study(study_name="s", storage=impl.storage, direction="maximize")
    finished = _running_trial(study, tmp_path, {"status": "completed", "best_val": 0.7})  # job outlived the sweep
    killed = _running_trial(study, tmp_path, {"status": "running"})
    killed_twice = _running_trial(study, tmp_path, None, retry=1, retry_of=0)

    impl._recover(study)
    trials = study.get_trials()
    assert (trials[finished].state, trials[finished].value) == (TrialState.COMPLETE, 0.7)
    for n in (killed, killed_twice):
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs["interrupted"] is True
    # only the first kill is retried: one new WAITING trial with the killed trial's parameters
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": killed, "retry": 1}
    # interrupted trials do not count towards n_trials; the retry is asked next, with the same parameters
    assert [t.number for t in answered_trials(study)] == [finished]
    retry = study.ask()
    assert retry.number == waiting[0].number
    assert retry.suggest_float("lr", 1e-4, 5e-3, log=True) == trials[killed].params["lr"]


# --- real sweeps -------------------------------------------------------------------------------------------------
def _sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "calib_seg.train", "-m", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    try:
        err, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        err, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {err[-2000:]}")
    return err


def _study(sweep: Path, name: str = "density_optuna") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep}/optuna.db")


def test_killed_sweep_resumes_to_the_requested_trials_without_repeating_finished_ones(tmp_path):
    args = [*TINY, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}"]
    proc = _sweep(*args)
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob("2_*")):  # trial 2's job folder: trials 0 and 1 are answered, 2 is running
        assert proc.poll() is None, f"sweep ended before trial 2 started: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "trial 2 never started"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode != 0, err[-2000:]
    first = _study(tmp_path).get_trials()
    assert [t.state for t in first][2:] == [TrialState.RUNNING]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in first[:2])
    records_before = {p.parent.name: p.read_bytes() for p in tmp_path.glob("[01]_*/run.json")}
    assert len(records_before) == 2

    err = _finish(_sweep(*args))
    assert "Trial 2 was interrupted" in err, err[-3000:]
    trials = _study(tmp_path).get_trials()
    # numbers continue: 0, 1 answered before the kill, 2 interrupted (FAIL, not counted), 3 = 2's parameters again
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["interrupted"] is True
    assert trials[3].params == trials[2].params and trials[3].user_attrs["retry_of"] == 2
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(answered_trials(_study(tmp_path))) == 3
    # finished trials were not trained again: their records are untouched and no second folder has their number
    assert {p.parent.name: p.read_bytes() for p in tmp_path.glob("[01]_*/run.json")} == records_before
    assert sorted(int(p.name.split("_")[0]) for p in tmp_path.iterdir() if p.is_dir()) == [0, 1, 2, 3]
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "n_trials: 3" in results

    # the report lists every trial, the interrupted one and its retry included
    report = build_report(tmp_path, figures=False)
    table = report.split("## Optuna study `density_optuna`")[1].split("### ")[0]  # the trial table, not importance
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == \
        ["0", "1", "2", "3"]
    assert "interrupted by a kill" in table and "retry of 2" in table

    # a third run of the same command has nothing left to do
    err = _finish(_sweep(*args))
    assert len(_study(tmp_path).get_trials()) == 4 and "Launching" not in err
    # continuing it with a changed fixed override would mix two configurations in one study: refused, nothing run
    proc = _sweep(*[a.replace("torch_threads=1", "torch_threads=2") for a in args], "hydra.sweeper.n_trials=5")
    err = _finish(proc)
    assert proc.returncode == 2, err[-3000:]
    assert "error: continuing the Optuna study: " in err and "ran with other fixed overrides: torch_threads=1 then, 2 now" in err, err
    assert len(_study(tmp_path).get_trials()) == 4 and "Launching" not in err


def test_aborted_job_is_pruned_a_failed_job_fails_and_neither_stops_the_study(tmp_path):
    # a command-line choice(...) replaces the file's lr distribution; random sampler seed 0 draws lr -1.0 (Adam refuses it: the job fails) and then 1e-3, which the pre-flight
    # aborts at epoch 0 because no real fit can reach a probe loss ratio of 1e-6
    proc = _sweep(*TINY, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", "hydra/sweeper/sampler=random",
                  "hydra.sweeper.sampler.seed=0", "task.optimizer.lr=choice(1e-3,-1.0)",
                  "callbacks.guard.max_probe_ratio=1e-6")
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(tmp_path).get_trials()
    assert [(t.params["task.optimizer.lr"], t.state) for t in trials] == [(-1.0, TrialState.FAIL),
                                                                          (1e-3, TrialState.PRUNED)]
    assert all(t.value is None for t in trials)  # no made-up worst score
    assert "pre-flight" in trials[1].user_attrs["reason"] and trials[1].user_attrs["run_status"] == "aborted"
    assert json.loads(next(tmp_path.glob("1_*/run.json")).read_text())["status"] == "aborted"
    for t in trials:  # a trial's folder: its number and its parameters, in search-space order; no fixed override
        name = Path(t.user_attrs["job_dir"]).name
        assert name.startswith(f"{t.number}_model.filters="), name
        assert name.endswith(f"_task.optimizer.lr={t.params['task.optimizer.lr']}"
                             f"_data.batch_size={t.params['data.batch_size']}"), name
        assert not any(c in name for c in "[], '") and "debug" not in name and "threads" not in name
    assert "best_params: null" in (tmp_path / "optimization_results.yaml").read_text()
    report = build_report(tmp_path)
    assert "2 trial(s): 1 fail, 1 pruned." in report and "trained 0 of their 1 planned epochs" in report
    assert "optuna_history.png" not in report  # no completed trial: no history to draw


@pytest.mark.slow  # ~1 min of two toy trainings; the density sweeps above cover the sweeper in the fast tier
def test_mito_search_hands_each_trials_model_lr_and_batch_to_its_job(tmp_path):
    proc = _sweep("hparams_search=hpo_mito_optuna", "experiment=mito_quick", "debug=tiny_mito", "torch_threads=1",
                  "test=false", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}")
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(tmp_path, "hpo_mito_optuna").get_trials()
    assert len(trials) == 2
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("reason")
        assert t.params["model"] in ("unet", "attention_unet", "attention_resunet")
        assert 1e-4 <= t.params["task.optimizer.lr"] <= 5e-3 and t.params["data.batch_size"] in (8, 16, 32)
        record = json.loads((Path(t.user_attrs["job_dir"]) / "run.json").read_text())
        assert (record["choices"]["model"], record["choices"]["lr"], record["choices"]["batch_size"]) == (
            t.params["model"], t.params["task.optimizer.lr"], t.params["data.batch_size"])
        assert record["config"]["run_name"] == "mito_quick"
        if t.state == TrialState.COMPLETE:  # the told value is the job's best val/jaccard after its 1 epoch
            assert record["epochs"] == 1 and t.value == pytest.approx(record["best_val"])
        else:  # a guard abort (the pre-flight can stop a low-lr toy run at epoch 0)
            assert record["status"] == "aborted" and t.user_attrs["reason"] == record["reason"]


# --- in-job pruning (callbacks.optuna_pruning) -------------------------------------------------------------------
def _stub_trainer(value: float, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics={"val/r2": value}, current_epoch=epoch, sanity_checking=False,
                           is_global_zero=True, should_stop=False,
                           strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))


def test_pruning_reports_every_epoch_and_stops_a_trial_below_the_median_after_warm_up(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(4):  # four earlier trials that reached 0.9 at every epoch
        earlier = study.ask()
        for step in range(4):
            earlier.report(0.9, step)
        study.tell(earlier, 0.9)
    weak, strong = study.ask(), study.ask()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    callbacks = {}
    for trial, value in ((weak, 0.1), (strong, 0.95)):
        cb = OptunaPruning("val/r2", pruner, storage=storage, study_name="s", trial_number=trial.number)
        cb.on_fit_start(_stub_trainer(value, 0), None)
        for epoch in range(4):
            trainer = _stub_trainer(value, epoch)
            cb.on_validation_end(trainer, None)
            if trainer.should_stop:
                break
        callbacks[trial.number] = (cb, epoch, trainer.should_stop)
    cb, epoch, stopped = callbacks[weak.number]
    # epochs 0 and 1 are warm-up: the weak trial runs on, and is stopped at epoch 2 with a reason naming the pruner
    assert (stopped, epoch, cb.aborted_epoch) == (True, 2, 2)
    assert cb.abort_reason.startswith("pruned by Optuna (MedianPruner) at epoch 2: val/r2 0.1")
    cb, epoch, stopped = callbacks[strong.number]
    assert (stopped, epoch, cb.abort_reason) == (False, 3, None)
    values = {t.number: t.intermediate_values for t in optuna.load_study(study_name="s", storage=storage).get_trials()}
    assert values[weak.number] == {0: 0.1, 1: 0.1, 2: 0.1} and values[strong.number] == {s: 0.95 for s in range(4)}


def test_pruning_is_off_outside_an_optuna_sweep_and_for_a_trial_that_is_not_running(tmp_path):
    cb = OptunaPruning("val/r2", optuna.pruners.MedianPruner())
    cb.on_fit_start(_stub_trainer(0.0, 0), None)  # no Hydra sweep: nothing to report to
    cb.on_validation_end(_stub_trainer(0.0, 0), None)
    assert cb.trial is None and cb.abort_reason is None
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    done = study.ask()
    study.tell(done, 1.0)
    cb = OptunaPruning("val/r2", optuna.pruners.MedianPruner(), storage=storage, study_name="s", trial_number=0)
    cb.on_fit_start(_stub_trainer(0.0, 0), None)
    assert cb.trial is None


def test_a_job_pruned_inside_the_sweep_is_a_pruned_trial_with_its_epochs_reported(tmp_path):
    # a pruner no trial can satisfy (val/r2 > 2) prunes every job at its first validated epoch of three
    proc = _sweep(*TINY, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", "trainer.max_epochs=3",
                  "callbacks.guard.preflight=false",
                  "callbacks.optuna_pruning.pruner._target_=optuna.pruners.ThresholdPruner",
                  "~callbacks.optuna_pruning.pruner.n_startup_trials", "~callbacks.optuna_pruning.pruner.n_warmup_steps",
                  "+callbacks.optuna_pruning.pruner.lower=2.0")
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in trials:
        assert list(t.intermediate_values) == [0] and t.value is None
        assert t.user_attrs["reason"].startswith("pruned by Optuna (ThresholdPruner) at epoch 0: val/r2")
        record = json.loads((Path(t.user_attrs["job_dir"]) / "run.json").read_text())
        assert record["status"] == "aborted" and record["aborted_epoch"] == 0 and record["epochs"] == 1
        assert t.intermediate_values[0] == pytest.approx(record["metrics"]["val/r2"])
    report = build_report(tmp_path, figures=False)
    assert "trained 2 of their 6 planned epochs" in report and "pruner" in report


def test_report_ranks_the_parameter_that_drives_the_objective_first_and_draws_it(tmp_path):
    pytest.importorskip("sklearn", reason="parameter importance needs scikit-learn (dev extra)")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("lr", 0, 1) - 0.3) ** 2 + 0.01 * t.suggest_float("noise", 0, 1),
                   n_trials=30)
    from calib_seg.report_optuna import optuna_section

    md = "\n".join(optuna_section(tmp_path))
    rows = [line for line in md.split("### Parameter importance")[1].splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["lr", "noise"]
    assert float(rows[0].split("|")[2]) > 0.9
    assert (tmp_path / "report_figures" / "optuna_importance.png").stat().st_size > 1000
    # a minimised study's best is its lowest value
    assert f"Best: trial {study.best_trial.number}, value {study.best_value:.4g}" in md
