"""Figures of a run, rendered once at the end of fit and of test (never per epoch: it would cost throughput).

PNGs go to ``<run folder>/figures/`` and, when a TensorBoard logger is attached, to its Images tab. The
callback asks the task's descriptor (``task.spec.test_figures``) which figures to draw at the end of test; those
functions read the task's public attributes (``last_test`` of the density task, ``predict_proba`` of the
segmentation task) and logged metrics; the drawing itself lives in :mod:`calib_seg.plots`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from calib_seg import plots
from calib_seg.callbacks.history import MetricHistory, read_history

log = logging.getLogger(__name__)


class RunFigures(pl.Callback):
    """Training curves at the end of fit; task figures at the end of test.

    Args:
        dirpath: folder for the PNGs (default ``<trainer.default_root_dir>/figures``).
        title: run name used in figure titles (the run folder's name is appended).
        n_overlays: test images shown in the segmentation overlay figure.
        enabled: switch off without removing the callback (e.g. for benchmarks).
        calibration: thresholds of the density calibration verdict (the ``calibration`` config; defaults if None).
        split: what the test stage runs on, named in the test figures' titles (``evaluate split=all``: "all").
        checkpoint: the weights tested, named in the test figures (default: the checkpoint ``trainer.test``
            loaded, i.e. the best one of a training run; none: the model's last weights).
    """

    def __init__(self, dirpath: str | None = None, title: str | None = None, n_overlays: int = 3,
                 enabled: bool = True, calibration: Mapping[str, Any] | None = None, split: str = "test",
                 checkpoint: str | None = None) -> None:
        self.split, self.checkpoint = str(split), checkpoint
        self.dirpath = Path(dirpath) if dirpath else None
        self.calibration = dict(calibration or {})  # thresholds of the calibration verdict (config ``calibration``)
        self.title = title
        self.n_overlays = int(n_overlays)
        self.enabled = enabled
        self.written: list[Path] = []

    # --- plumbing -------------------------------------------------------------------------------------------
    def _dir(self, trainer: pl.Trainer) -> Path:
        return self.dirpath or Path(trainer.default_root_dir) / "figures"

    def title_for(self, trainer: pl.Trainer) -> str:
        folder = self._dir(trainer).parent.name
        return f"{self.title} [{folder}]" if self.title else folder

    def emit(self, trainer: pl.Trainer, name: str, fig: Any) -> None:
        """Send one figure to every TensorBoard logger, then save it as PNG (which closes it). Its step is the
        number of epochs trained: the last epoch of the scalars' epoch axis (callbacks.tensorboard)."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"figures/{name}", fig, global_step=trainer.current_epoch, close=False)
                logger.experiment.flush()
        self.written.append(plots.save_figure(fig, self._dir(trainer) / f"{name}.png"))

    def tested_checkpoint(self, trainer: pl.Trainer) -> str | None:
        """The checkpoint whose weights the test figures show (None: the weights in memory)."""
        return self.checkpoint or trainer.ckpt_path

    def _safe(self, trainer: pl.Trainer, what: str, fn: Any) -> None:
        # a figure must never turn a finished run into a failed one: log and go on
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not draw %s figures: %s: %s", what, type(exc).__name__, exc)

    def _history(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        for cb in trainer.callbacks:
            if isinstance(cb, MetricHistory) and cb.rows:
                return cb.rows
        return read_history(self._dir(trainer).parent)

    # --- hooks ----------------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            self._safe(trainer, "training-curve", lambda: self._curves(trainer, pl_module))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        spec = getattr(pl_module, "spec", None)
        if spec is not None:
            draw = spec.resolve("test_figures")
            self._safe(trainer, spec.name, lambda: draw(self, trainer, pl_module))

    # --- figures --------------------------------------------------------------------------------------------
    def _curves(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = self._history(trainer)
        if history:
            spec = getattr(pl_module, "spec", None)
            score, mode = (spec.optimized_metric, spec.mode) if spec is not None else ("val/loss", "min")
            self.emit(trainer, "training_curves",
                      plots.training_curves(history, self.title_for(trainer), score, mode=mode))


def density_figures(figs: RunFigures, trainer: pl.Trainer, pl_module: Any) -> None:
    """Predicted vs actual, residuals and (nominal densities > 0) the calibration figure of the test set."""
    out: dict[str, np.ndarray] = getattr(pl_module, "last_test", None) or {}
    if not out:
        return
    title = figs.title_for(trainer)
    pred, target = out["pred"], out["target"]
    dilution = out.get("dilution", np.full_like(target, np.nan))
    where = {"split": figs.split, "checkpoint": figs.tested_checkpoint(trainer)}
    figs.emit(trainer, "pred_vs_actual", plots.density_pred_vs_actual(pred, target, dilution, title, **where))
    figs.emit(trainer, "residuals", plots.density_residuals(pred, target, dilution, title, **where))
    if np.all(target > 0):  # the floor and relative errors need nominal densities > 0
        from calib_seg.metrics.predictions import split_calibration

        _, block = split_calibration(out, trainer.datamodule, figs.calibration, "test")
        figs.emit(trainer, "calibration", plots.calibration_figure(block, title))


@torch.no_grad()
def segmentation_figures(figs: RunFigures, trainer: pl.Trainer, pl_module: Any) -> None:
    """Jaccard vs threshold (from the logged curve) and overlays of the first test images."""
    title = figs.title_for(trainer)
    m = trainer.callback_metrics
    curve = {float(k.split("_t")[-1]): float(v) for k, v in m.items() if k.startswith("test/jaccard_t")}
    if curve:
        base = m.get("test/jaccard_all_foreground")
        figs.emit(trainer, "jaccard_vs_threshold", plots.jaccard_vs_threshold(
            curve, title, baseline=float(base) if base is not None else None,
            headline=getattr(pl_module, "threshold", None)))
    dm = trainer.datamodule
    if dm is None or figs.n_overlays < 1:
        return
    images, masks, probs = [], [], []
    was_training = pl_module.training
    pl_module.eval()
    for batch in dm.test_dataloader():
        x = batch["image"][: figs.n_overlays - len(images)]
        p = pl_module.predict_proba(x.to(pl_module.device)).float().cpu()
        images += [a[0].numpy() for a in x]
        masks += [a[0].numpy() for a in batch["mask"][: len(x)]]
        probs += [a[0].numpy() for a in p]
        if len(images) >= figs.n_overlays:
            break
    pl_module.train(was_training)
    if images:  # the test loader keeps the split's order, so the first images are its first names
        split = dm.get_split("test") if hasattr(dm, "get_split") else None
        names = list(getattr(split, "names", None) or [])[: len(images)] or None
        figs.emit(trainer, "test_overlays", plots.segmentation_overlays(
            images, masks, probs, title, threshold=getattr(pl_module, "threshold", 0.5), names=names,
            split=figs.split))
