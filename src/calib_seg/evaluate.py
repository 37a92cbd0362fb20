"""Test a checkpoint on any data config: ``python -m calib_seg.evaluate ckpt_path=... [data=...] [split=all]``.

The model and task configuration come from the checkpoint's run folder (``.hydra/config.yaml`` beside
``checkpoints/``, else the resolved config in its ``run.json``), so no model flags are needed. Without a ``data``
override the run's own data config is used. The evaluation writes, into its own output folder, ``run.json``
(status ``evaluated``: metrics, the checkpoint, provenance), figures (PNG + TensorBoard) and the usual logs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from calib_seg import resolvers  # noqa: F401  (registers ${uniq:} etc. before Hydra composes)
from calib_seg.callbacks.figures import RunFigures
from calib_seg.checkpoints import load_run_config, load_task, run_dir_of  # noqa: F401  (public here before)
from calib_seg.cli import launch, quiet_known_noise, tee_to_log
from calib_seg.errors import input_errors
from calib_seg.lifecycle import RunRecorder, clean_exit
from calib_seg.records import read_record, resolved_config
from calib_seg.summary import print_summary

log = logging.getLogger("calib_seg.evaluate")


def _data_overridden() -> bool:
    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").startswith(("data=", "data.", "data/")) for o in HydraConfig.get().overrides.task)


def evaluate(cfg: DictConfig, use_run_data: bool | None = None) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` on the configured data; write and return the evaluation record."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Path(cfg.ckpt_path)
    with input_errors():  # a missing checkpoint or run folder is one message + exit 2 (main's clean_exit)
        run_cfg = load_run_config(ckpt)
    if use_run_data is None:
        use_run_data = not _data_overridden()
    data_cfg = run_cfg.data if use_run_data else cfg.data
    trained = read_record(run_dir_of(ckpt)) or {}
    rec = RunRecorder(out_dir, config=lambda: {
        "evaluate": resolved_config(cfg), "data": OmegaConf.to_container(data_cfg),
        "model": OmegaConf.to_container(run_cfg.model), "task": OmegaConf.to_container(run_cfg.task)},
        status="running", task=run_cfg.get("task_name"), choices=trained.get("choices"),
        optimized_metric=run_cfg.get("optimized_metric"))
    rec.record.update({"checkpoint": str(ckpt.resolve()), "trained_run_dir": str(run_dir_of(ckpt).resolve()),
                       "trained_provenance": trained.get("provenance"), "split": cfg.get("split", "test")})
    with rec:
        pl.seed_everything(cfg.seed, workers=True)
        with input_errors():
            rec.task = task = load_task(ckpt, run_cfg)
            datamodule = instantiate(data_cfg)
            datamodule.setup(None)
        rec.datamodule = datamodule
        if cfg.get("split", "test") == "all":
            _test_on_everything(datamodule)
        loggers = [lg for lg in (instantiate(n) for n in (cfg.get("logger") or {}).values() if n) if lg]
        figures = RunFigures(dirpath=str(out_dir / "figures"), title=f"evaluate {run_cfg.get('run_name', '')}",
                             calibration=cfg.get("calibration"), split=str(cfg.get("split", "test")),
                             checkpoint=str(ckpt))
        rec.trainer = trainer = pl.Trainer(
            accelerator=cfg.trainer.get("accelerator", "auto"), devices=1, logger=loggers or False,
            callbacks=[figures], default_root_dir=str(out_dir), enable_checkpointing=False,
            enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", False)), enable_model_summary=False)
        results = trainer.test(task, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if hasattr(datamodule, "reference_metrics") and cfg.get("split", "test") == "test":
            metrics.update(datamodule.reference_metrics("test"))
        rec.record.update({"status": "evaluated", "metrics": metrics, "test_metrics": metrics,
                           "wall_time_s": rec.elapsed()})
        if getattr(task, "last_test", None):  # density: test_predictions.csv + the calibration verdict
            from calib_seg.metrics.predictions import run_calibration

            rec.record["calibration"] = run_calibration(task, datamodule, cfg.get("calibration"), out_dir)
    return rec.record


def _test_on_everything(datamodule: Any) -> None:
    """Make the density datamodule's test split every image (a new batch is all test data)."""
    if not hasattr(datamodule, "prepare") or not hasattr(datamodule, "split"):
        raise ValueError("split=all is supported for density data only; segmentation data has its own test split")
    beads = datamodule.prepare()
    datamodule.split = dataclasses.replace(datamodule.split, test=np.arange(len(beads)))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from calib_seg.validation import require

    quiet_known_noise()
    with clean_exit():  # bad config or input: one message + exit 2
        require(cfg, {"ckpt_path": "a checkpoint written by calib_seg.train, e.g. "
                                   "ckpt_path=outputs/density/<run>/checkpoints/best-epoch012.ckpt"})
        record = evaluate(cfg)
    with tee_to_log():  # the same table as train prints, also into the evaluation's log file
        print_summary(record)


if __name__ == "__main__":
    launch(main, "evaluate")
