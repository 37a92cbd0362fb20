"""Early stopping that counts its patience only once the run has taken ``min_steps`` optimizer steps."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's EarlyStopping, silent until the run has taken ``min_steps`` optimizer steps.

    Patience is counted in validations (epochs), but what a network has learned depends on its steps: at the seed
    study's batch sizes an epoch is one or two steps, and a patience of 15 epochs ended healthy runs after 16-19
    steps, before they had learned anything (B5: C01 at batch 256 and C02 at batch 192, test R² ~0, recorded
    ``aborted`` by the guard's final check). Before ``min_steps`` no check is made at all (no best value kept, no
    patience counted); afterwards this is Lightning's callback unchanged. At the CPU presets' 8+ steps per epoch,
    ``min_steps`` 50 is reached by epoch 7, before a patience of 15 epochs could end a run anyway.
    """

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_on_train_epoch_end: bool | None = None, log_rank_zero_only: bool = False,
                 min_steps: int = 0):
        # Lightning's parameters spelled out, so the config check can name an unknown key (a ``**kwargs`` would
        # accept any typo)
        super().__init__(monitor=monitor, min_delta=min_delta, patience=patience, verbose=verbose, mode=mode,
                         strict=strict, check_finite=check_finite, stopping_threshold=stopping_threshold,
                         divergence_threshold=divergence_threshold,
                         check_on_train_epoch_end=check_on_train_epoch_end, log_rank_zero_only=log_rank_zero_only)
        if min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {min_steps}")
        self.min_steps = int(min_steps)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= self.min_steps:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= self.min_steps:
            super().on_validation_end(trainer, pl_module)
