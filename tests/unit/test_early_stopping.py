"""Early stopping counts its patience only after ``min_steps`` optimizer steps (1-step epochs at the seed's batch)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from calib_seg.callbacks.early_stopping import EarlyStopping
from calib_seg.config import compose
from calib_seg.validation import problems_in


class _Flat(pl.LightningModule):
    """One optimizer step per epoch; its validation metric never improves."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return ((self.w - batch[0]) ** 2).mean()

    def validation_step(self, batch, _):
        self.log("val/metric", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _epochs_run(min_steps: int, patience: int = 2, max_epochs: int = 20) -> int:
    data = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[EarlyStopping(monitor="val/metric", mode="max", patience=patience,
                                                  min_steps=min_steps)])
    trainer.fit(_Flat(), data, data)
    return trainer.current_epoch


def test_patience_starts_only_after_min_steps():
    # Lightning's behaviour without min_steps: best at epoch 1, no improvement at 2 and 3 -> stop after 3
    assert _epochs_run(min_steps=0) == 3
    # the first check is at the end of epoch 6 (step 6), two epochs without improvement after it -> stop after 8
    assert _epochs_run(min_steps=6) == 8
    # max_epochs still wins
    assert _epochs_run(min_steps=50, max_epochs=10) == 10


def test_negative_min_steps_and_unknown_keys_are_errors():
    with pytest.raises(ValueError, match="min_steps must be >= 0"):
        EarlyStopping(monitor="val/r2", min_steps=-1)
    cfg = compose(["+callbacks.early_stopping.patiance=5"])
    assert any("callbacks.early_stopping.patiance" in p and "patience" in p for p in problems_in(cfg))
