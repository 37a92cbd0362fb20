"""Epochs as people count them (1..max_epochs) on the console and in the run's log.

- :class:`EpochLine`: one plain line per epoch for non-interactive runs (cluster logs), where progress bars only
  add noise; the same line always goes to the run's ``train.log``.
- :class:`EpochProgressBar`: Lightning's progress bar, titled ``Epoch 3/30`` like the plain lines (Lightning's
  own bar counts from 0 and shows no total).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

from calib_seg.cli import to_log

#: shown for every task; the task's descriptor adds its own validation metrics (``spec.progress_keys``)
_KEYS = ("train/loss", "val/loss")


def epoch_label(trainer: pl.Trainer) -> str:
    """``3/30`` for the running epoch: 1-based, the numbering of the guard, history.json and checkpoint names."""
    return f"{trainer.current_epoch + 1}/{trainer.max_epochs}"


class EpochLine(pl.Callback):
    """Print ``epoch 3/30 | train/loss 0.12 | val/loss 0.10 | val/r2 0.953 | 1.8 s`` after each epoch.

    Silent on the console when a progress bar is shown (interactive terminal) unless ``always=True``; the line
    goes to the run's log file either way.
    """

    def __init__(self, always: bool = False) -> None:
        self.always = always
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # in Lightning 2 validation runs inside the training epoch, so here both losses are known
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {epoch_label(trainer)}"]
        spec = getattr(pl_module, "spec", None)
        keys = _KEYS + (spec.progress_keys if spec is not None else ())
        parts += [f"{k} {float(m[k]):.4g}" for k in keys if k in m]
        parts.append(f"{time.perf_counter() - self._t0:.1f} s")
        line = " | ".join(parts)
        to_log(line)
        if trainer.progress_bar_callback is None or self.always:
            print(line, file=sys.stdout, flush=True)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar with the epoch shown as ``Epoch 3/30`` (1-based, with the total)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Lightning's method with our title; calling it first would draw one "Epoch 0" line before ours
        if getattr(self, "_leave", False):
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {epoch_label(trainer)}")


def with_progress_bar(callbacks: list[Any], enabled: bool | None) -> list[Any]:
    """``callbacks`` plus an :class:`EpochProgressBar` when the trainer shows a bar and none is configured.

    (Lightning refuses a progress-bar callback when ``enable_progress_bar`` is false, so it cannot simply sit
    in conf/callbacks/default.yaml.)
    """
    if not enabled or any(isinstance(cb, ProgressBar) for cb in callbacks):
        return callbacks
    return [*callbacks, EpochProgressBar()]
