"""Training entry point: ``python -m calib_seg.train [-m] [overrides...]`` (a Hydra app over conf/train.yaml).

The data flow of one run reads top to bottom in :func:`run`: seed -> datamodule, task(model), callbacks,
loggers -> fit -> test on the best checkpoint -> ``run.json`` -> the optimised metric for the sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict, read_write
from pytorch_lightning.utilities import rank_zero_only

from calib_seg import resolvers  # noqa: F401  (registers ${uniq:} etc. before Hydra composes)
from calib_seg.callbacks.guard import TrainingGuard, final_check
from calib_seg.callbacks.progress import with_progress_bar
from calib_seg.callbacks.tensorboard import log_outcome
from calib_seg.cli import launch, quiet_known_noise, tee_to_log, to_log
from calib_seg.config import CONF_DIR
from calib_seg.errors import input_errors
from calib_seg.lifecycle import RunRecorder, check_config, clean_exit
from calib_seg.records import peak_memory_mb, time_per_epoch, val_summary
from calib_seg.resume import completed_record, refuse_overwrite, resume_checkpoint
from calib_seg.summary import print_summary

log = logging.getLogger("calib_seg.train")


def cpu_trainer_fixes(cfg: DictConfig) -> dict[str, Any]:
    """Trainer arguments that override the config on CPU: torch's SyncBatchNorm works only on CUDA modules, so
    ``trainer=ddp`` (``sync_batchnorm: true``) over CPU processes keeps per-rank BatchNorm statistics instead of
    failing in DDP setup."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    if cfg.trainer.get("sync_batchnorm") and (accelerator == "cpu" or not torch.cuda.is_available()):
        log.info("sync_batchnorm=true needs CUDA; training on CPU with per-process BatchNorm statistics")
        return {"sync_batchnorm": False}
    return {}


class RunAborted(SystemExit):
    """Raised (as a non-zero exit) when a single, non-sweep run was stopped by the training guard."""


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to ``_target_`` nodes (null entries skipped)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run folder's ``checkpoints/last.ckpt`` (resume after a kill)."""
    if cfg.get("ckpt_path") in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
    return str(path)


def abort_reason(callbacks: list[Any]) -> tuple[str, int] | None:
    """(reason, epoch) from the first callback that stopped the run on purpose (the training guard)."""
    for cb in callbacks:
        reason = getattr(cb, "abort_reason", None)
        if reason:
            return reason, getattr(cb, "aborted_epoch", None)
    return None


def preflight_result(callbacks: list[Any]) -> dict[str, Any] | None:
    """The training guard's pre-flight measurements (``None`` when it did not run: off, resumed, no guard)."""
    return next((cb.preflight_result for cb in callbacks if getattr(cb, "preflight_result", None)), None)


def final_rules(callbacks: list[Any]) -> dict[str, Any]:
    """The guard's R² and Jaccard thresholds for the final check (its defaults when the guard is off)."""
    guard = next((cb for cb in callbacks if isinstance(cb, TrainingGuard)), None)
    return {k: guard.rules[k] for k in ("final_r2_min", "jaccard_margin")} if guard is not None else {}


def best_epoch(callbacks: list[Any]) -> tuple[int | None, float | None]:
    """1-based epoch and score of the best checkpoint (from the ModelCheckpoint filename ``best-epochNNN``)."""
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.best_model_path:
            stem = Path(cb.best_model_path).stem
            score = cb.best_model_score
            try:  # the file name counts epochs from 1 (callbacks.checkpoint.Checkpoint)
                epoch = int(stem.split("best-epoch")[1].split("-")[0])
            except (IndexError, ValueError):
                epoch = None
            return epoch, (float(score) if score is not None else None)
    return None, None


def key_choices(cfg: DictConfig) -> dict[str, Any]:
    """The choices a reader of a sweep table wants next to the numbers."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    model = cfg.model
    return {
        "experiment": choices.get("experiment"),
        "data": choices.get("data"),
        "model": choices.get("model"),
        "model_target": model.get("_target_"),
        "arch": model.get("arch"),
        "filters": list(model.filters) if "filters" in model else None,
        "base_filters": model.get("base_filters"),
        "batch_size": cfg.data.get("batch_size"),
        "lr": cfg.task.optimizer.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "seed": cfg.get("seed"),
    }


def pin_ddp_children(cfg: DictConfig) -> None:
    """Make Lightning's DDP worker processes re-run *this* job in *this* job's folder.

    Without SLURM or torchrun, Lightning starts ranks > 0 by re-running ``python -m calib_seg.train
    <sys.argv[1:]> hydra.run.dir=<HydraConfig run.dir>``. Inside a sweep that command is the whole multirun
    again (``-m`` and the comma lists are in sys.argv) and ``run.dir`` is not the job folder; even in a single
    run a re-resolved ``${uniq:}`` could name another folder. So hand the workers this job's own overrides, RUN
    mode (hparams_search files set ``hydra.mode: MULTIRUN``) and the folder this job already writes to.
    """
    if not HydraConfig.initialized() or "ddp" not in str(cfg.trainer.get("strategy") or ""):
        return
    hc = HydraConfig.get()
    with read_write(hc), open_dict(hc):
        hc.run.dir = str(Path(cfg.paths.output_dir).resolve())
    sys.argv = [sys.argv[0], *hc.overrides.task, "hydra.mode=RUN"]


#: what Lightning's subprocess launcher sets in the *launching* process's environment (and never unsets)
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def ddp_job_scope(cfg: DictConfig) -> Iterator[None]:
    """Leave the process as a DDP job found it, so the next job of an in-process sweep can start its own ranks.

    Lightning keeps the gloo/nccl process group and the rank variables it put into ``os.environ`` after fit;
    the next job would then believe its ranks were started externally and talk to the finished job's dead
    workers. Only the launching process cleans up: under SLURM/torchrun (``LOCAL_RANK`` set before the job)
    the scheduler owns ranks and environment.
    """
    launching = "ddp" in str(cfg.trainer.get("strategy") or "") and "LOCAL_RANK" not in os.environ
    saved = {k: os.environ.get(k) for k in _DDP_ENV}
    try:
        yield
    finally:
        if launching:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; always leaves a ``run.json`` (completed, aborted or failed)."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refuse_overwrite(cfg, out_dir)  # an earlier finished run in this folder is never trained over
    check_config(cfg, out_dir)  # a bad key/value stops here: nothing seeded or built, run.json says failed
    done = completed_record(cfg, out_dir)  # resume=true: a job that already completed is not trained again
    if done is not None:
        return done
    with training_recorder(cfg, out_dir) as rec:
        pl.seed_everything(cfg.seed, workers=True)
        if cfg.get("torch_threads"):  # on a shared machine, fewer threads than cores avoids oversubscription
            torch.set_num_threads(int(cfg.torch_threads))
        with input_errors():  # read and check every file now: a bad folder is one message + exit 2 (clean_exit)
            datamodule = instantiate(cfg.data)
            datamodule.setup(None)
        rec.datamodule = datamodule
        rec.task = task = instantiate(cfg.task, model=instantiate(cfg.model))
        if cfg.get("init_from"):  # fine-tuning: another run's weights, a fresh optimizer and schedule
            from calib_seg.checkpoints import init_weights

            with input_errors():
                rec.record["init_from"] = str(init_weights(task, cfg.init_from))
        rec.loggers, rec.callbacks = loggers, callbacks = loggers_and_callbacks(cfg)
        pin_ddp_children(cfg)
        rec.trainer = trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                            **cpu_trainer_fixes(cfg))
        if cfg.get("train", True):
            ckpt = resolve_ckpt_path(cfg, out_dir) or resume_checkpoint(cfg, out_dir)
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
        fit = fit_summary(trainer, callbacks, rec.elapsed())  # before testing: test() replaces callback_metrics
        test_metrics: dict[str, float] = {}
        if cfg.get("test", True) and not fit["aborted"]:
            choice = choose_on_validation(task, datamodule, callbacks)  # task.threshold=auto etc.: before test
            test_metrics = test_best(trainer, task, datamodule, callbacks)
            if choice is not None:
                rec.record["inference_choice"] = choice
                test_metrics["test/threshold"] = float(choice["threshold"])
        rec.record.update(outcome(cfg, rec, fit, test_metrics))
    return rec.record


def training_recorder(cfg: DictConfig, out_dir: Path) -> RunRecorder:
    """The lifecycle of a training run's record: a failure records the epochs run and the validation history,
    the written record also goes to TensorBoard (HParams entry + outcome text)."""
    rec = RunRecorder(out_dir, cfg, resume_hint=True, status="running", task=cfg.task_name,
                      choices=key_choices(cfg), optimized_metric=cfg.optimized_metric,
                      failure_fields=lambda: {"epochs": rec.trainer.current_epoch if rec.trainer is not None else 0,
                                              **val_summary(rec.callbacks, cfg.optimized_metric, None)},
                      on_written=lambda record: log_outcome(rec.loggers, record))
    return rec


def loggers_and_callbacks(cfg: DictConfig) -> tuple[list[Any], list[Any]]:
    """The configured loggers and callbacks (no LR monitor without a logger; a 1-based progress bar if shown)."""
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # an LR monitor has nowhere to write without a logger (and Lightning refuses it)
        callbacks = [cb for cb in callbacks if not isinstance(cb, pl.callbacks.LearningRateMonitor)]
    return loggers, with_progress_bar(callbacks, cfg.trainer.get("enable_progress_bar"))


def fit_summary(trainer: pl.Trainer, callbacks: list[Any], fit_time: float) -> dict[str, Any]:
    """What fit left: epochs, fit time, the guard's abort (reason, epoch) or None, the last val/train metrics."""
    return {"aborted": abort_reason(callbacks), "epochs": trainer.current_epoch, "fit_time": fit_time,
            "val_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith(("val/", "train/"))}}


def choose_on_validation(task: Any, datamodule: Any, callbacks: list[Any]) -> dict[str, Any] | None:
    """The task's ``"auto"`` inference options (threshold, TTA, post-processing) chosen on the whole validation
    images with the best checkpoint's weights, before any test data is read; None when nothing is ``"auto"``."""
    if not getattr(task, "auto", None):
        return None
    from calib_seg.checkpoints import read_checkpoint

    best = next((cb.best_model_path for cb in callbacks
                 if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.best_model_path), None)
    if best:
        task.load_state_dict(read_checkpoint(best, map_location=task.device)["state_dict"])
    choice = task.choose_on_validation(datamodule.whole_val_dataloader())
    log.info("chosen on %d validation images: threshold %.2f, tta %s, postprocess %s (val Jaccard %.4f)",
             choice["n_images"], choice["threshold"], choice["tta"], choice["postprocess"], choice["val_jaccard"])
    return choice


def test_best(trainer: pl.Trainer, task: Any, datamodule: Any, callbacks: list[Any]) -> dict[str, float]:
    """Test metrics of the best checkpoint (the last weights without one), plus the data's reference metrics."""
    has_best = any(isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.best_model_path for cb in callbacks)
    results = trainer.test(task, datamodule=datamodule, ckpt_path="best" if has_best else None, verbose=False)
    test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if hasattr(datamodule, "reference_metrics"):
        test_metrics.update(datamodule.reference_metrics("test"))
    return test_metrics


def outcome(cfg: DictConfig, rec: RunRecorder, fit: dict[str, Any], test_metrics: dict[str, float]) -> dict[str, Any]:
    """The record fields of a run that ended without an error: status (completed or aborted), the numbers, and
    the calibration verdict. The final check judges runs that trained (train=false only evaluates a model)."""
    callbacks, epochs, aborted = rec.callbacks, fit["epochs"], fit["aborted"]
    if cfg.get("train", True) and not aborted and test_metrics:
        verdict = final_check(test_metrics, **final_rules(callbacks))
        aborted = (f"aborted at epoch {epochs}: {verdict}", epochs) if verdict else None
    b_epoch, b_score = best_epoch(callbacks)
    fields: dict[str, Any] = {}
    if test_metrics:  # the second, independent verdict: never aborts, never changes the status
        fields["calibration"] = calibration_verdict(rec.task, rec.datamodule, cfg, rec.out_dir, b_epoch)
    return {
        **fields,
        "status": "aborted" if aborted else "completed",
        "reason": aborted[0] if aborted else None,
        "aborted_epoch": aborted[1] if aborted else None,
        "preflight": preflight_result(callbacks),
        "optimized_metric": cfg.optimized_metric,
        "best_val": b_score,
        "best_epoch": b_epoch,
        "epochs": epochs,
        "metrics": {**fit["val_metrics"], **test_metrics},
        **val_summary(callbacks, cfg.optimized_metric, b_epoch),
        "test_metrics": test_metrics,
        "wall_time_s": rec.elapsed(),
        "time_per_epoch_s": time_per_epoch(callbacks, fit["fit_time"], epochs),
        **peak_memory_mb(),
    }


def calibration_verdict(task: Any, datamodule: Any, cfg: DictConfig, out_dir: Path,
                        b_epoch: int | None) -> dict[str, Any] | None:
    """Per-level calibration of the test (and validation) predictions; rank 0 writes test_predictions.csv.

    A problem here is recorded and logged, never raised: the calibration verdict must not turn a finished run
    into a failed one (docs/calibration.md).
    """
    from calib_seg.metrics.predictions import run_calibration

    try:
        return run_calibration(task, datamodule, cfg.get("calibration"),
                               out_dir if rank_zero_only.rank == 0 else None, b_epoch)
    except Exception as exc:  # noqa: BLE001
        log.warning("no calibration verdict: %s: %s", type(exc).__name__, exc)
        return {"verdict": None, "error": f"{type(exc).__name__}: {exc}"}


# an absolute config path: run as the calib-seg-train console script, Hydra would look for a `conf` package
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def train_app(cfg: DictConfig) -> float:
    """The Hydra app (the task function launchers and sweepers call); returns the optimised metric (NaN for
    aborted runs) to the sweeper."""
    quiet_known_noise()  # also here: launchers such as submitit call this function without launch()
    with clean_exit(cfg), ddp_job_scope(cfg):  # bad config/input: message + exit 2; SIGTERM 143, Ctrl-C 130
        record = run(cfg)
    if rank_zero_only.rank != 0:  # DDP worker: rank 0 prints, records and answers the sweeper
        return math.nan
    with tee_to_log():  # the summary also goes, as plain text, into the run's train.log
        print_summary(record)
    if record["status"] == "aborted":
        # the one console line of an abort (the guard only logs it to train.log): the last line of a single run
        line = f"run aborted: {record['reason']}"
        to_log(line)
        print(line, file=sys.stderr, flush=True)
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if not multirun:
            raise RunAborted(3)
        return math.nan
    value = record.get("best_val")
    return float(value) if value is not None else math.nan


def main() -> None:
    """The command line, ``python -m calib_seg.train`` and the ``calib-seg-train`` console script alike: the
    override check of :func:`calib_seg.cli.launch` (every typo at once, exit 2), then the Hydra app."""
    launch(train_app, "train")


if __name__ == "__main__":
    main()
