"""Checkpoint file names that count epochs from 1, like every other place a person reads an epoch."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with ``{epoch}`` in ``filename`` 1-based.

    ``best-epoch012.ckpt`` is the 12th epoch: the ``best_epoch: 12`` of run.json, ``epoch 12/30`` on the
    console, epoch 12 in history.json and the guard's messages (Lightning's own counter starts at 0).
    """

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None,
                               ver: int | None = None, prefix: str | None = None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)
