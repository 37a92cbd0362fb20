"""Hold a training subprocess at a known epoch, so a test can signal it without racing a fast tiny epoch.

``pause_overrides(marker)`` adds :class:`PauseAfterEpoch` to a ``calib_seg.train`` command line (the subprocess
needs ``tests/`` on its PYTHONPATH: ``helpers.paths.pythonpath_with_tests``); ``wait_until_paused`` returns once
the run has written ``marker``. At the start of the epoch after ``epoch`` (so epoch ``epoch``'s checkpoints are
written: ModelCheckpoint saves in ``on_train_epoch_end``, after other callbacks) the callback writes ``marker`` and
waits until Lightning has seen a SIGTERM (or SIGINT raises KeyboardInterrupt in the loop).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAfterEpoch(pl.Callback):
    """Writes ``marker`` at the start of epoch index ``epoch`` and waits there for SIGTERM (at most ``timeout_s``)."""

    def __init__(self, epoch: int, marker: str, timeout_s: float = 300.0) -> None:
        self.epoch, self.marker, self.timeout_s = int(epoch), Path(marker), float(timeout_s)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:  # 0-based index of the next epoch = epochs done
            return
        self.marker.write_text(str(self.epoch))
        t0 = time.monotonic()
        while not trainer.received_sigterm and time.monotonic() - t0 < self.timeout_s:
            time.sleep(0.05)


def pause_overrides(marker: Path, epoch: int = 1) -> list[str]:
    """Command-line overrides that add the pause callback as ``callbacks.pause``."""
    return [f"+callbacks.pause._target_={PauseAfterEpoch.__module__}.PauseAfterEpoch",
            f"+callbacks.pause.epoch={epoch}", f"+callbacks.pause.marker={marker}"]


def wait_until_paused(proc: subprocess.Popen, marker: Path, timeout_s: float = 300.0) -> None:
    """Return once ``proc`` has written ``marker``; fail with its stderr if it exits first, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"run never reached the pause epoch within {timeout_s:.0f} s"
        time.sleep(0.2)
