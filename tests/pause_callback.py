"""Test helper (not a test module): a callback that holds a training run after a given epoch until SIGTERM.

Used by tests/test_resume.py and tests/test_user_messages.py to stop a run at a known point: at the start of the epoch after ``epoch`` (so
epoch ``epoch``'s checkpoints are written: ModelCheckpoint saves in ``on_train_epoch_end``, after other
callbacks), it writes ``marker`` and waits until Lightning has seen a SIGTERM, so the test never races a fast
tiny epoch.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAfterEpoch(pl.Callback):
    def __init__(self, epoch: int, marker: str, timeout_s: float = 300.0) -> None:
        self.epoch, self.marker, self.timeout_s = int(epoch), Path(marker), float(timeout_s)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:  # 0-based index of the next epoch = epochs done
            return
        self.marker.write_text(str(self.epoch))
        t0 = time.monotonic()
        while not trainer.received_sigterm and time.monotonic() - t0 < self.timeout_s:
            time.sleep(0.05)


def wait_until_paused(proc: subprocess.Popen, marker: Path, timeout_s: float = 300.0) -> None:
    """Block until the run in ``proc`` (started with PauseAfterEpoch) writes ``marker``; fail with its stderr if
    it exits first, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"run never reached the pause epoch within {timeout_s:.0f} s"
        time.sleep(0.2)
