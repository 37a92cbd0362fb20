"""One plain line per epoch for non-interactive runs (cluster logs), where progress bars only add noise."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl

_KEYS = ("train/loss", "val/loss", "val/r2", "val/mae", "val/jaccard", "val/dice")


class EpochLine(pl.Callback):
    """Print ``epoch 3/30 | train/loss 0.12 | val/loss 0.10 | val/r2 0.953 | 1.8 s`` after each epoch.

    Silent when a progress bar is shown (interactive terminal) unless ``always=True``.
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
        if trainer.progress_bar_callback is not None and not self.always:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{k} {float(m[k]):.4g}" for k in _KEYS if k in m]
        parts.append(f"{time.perf_counter() - self._t0:.1f} s")
        print(" | ".join(parts), file=sys.stdout, flush=True)
