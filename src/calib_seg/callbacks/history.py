"""Per-epoch metric history saved in the run folder (``history.json`` + ``metrics.csv``).

The sweep report draws its training-curve grid and "epochs to best" from this file, so it never has to parse
TensorBoard event files or re-train. Writing a few hundred bytes per epoch costs nothing next to an epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from calib_seg.fileio import atomic_write_text

HISTORY_NAME = "history.json"
CSV_NAME = "metrics.csv"


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run folder (empty list when absent or unreadable)."""
    try:
        rows = json.loads((Path(run_dir) / HISTORY_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return rows if isinstance(rows, list) else []


class MetricHistory(pl.Callback):
    """Collect epoch-level ``train/*``, ``val/*`` metrics, the learning rate and the epoch time.

    Args:
        dirpath: run folder to write ``history.json`` and ``metrics.csv`` into (None: keep in memory only).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None
        self.rows: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed run (ckpt_path=last) continues its own history instead of starting a second one;
        # on_train_start, not on_fit_start: Lightning restores the epoch counter between the two
        if self.dirpath is not None and not self.rows:
            self.rows = [r for r in read_history(self.dirpath) if r.get("epoch", 0) <= trainer.current_epoch]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning 2 runs validation inside the training epoch, so val/* of this epoch is known here
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "time_s": time.perf_counter() - self._t0}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(("train/", "val/")) and getattr(v, "numel", lambda: 1)() == 1:
                value = float(v)
                row[k] = value if math.isfinite(value) else None
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows.append(row)
        if self.dirpath is not None and trainer.is_global_zero:
            self.save()

    def save(self) -> None:
        """Write both files atomically (JSON for programs, CSV for spreadsheets)."""
        atomic_write_text(self.dirpath / HISTORY_NAME, json.dumps(self.rows, indent=1) + "\n")
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.dirpath / CSV_NAME, buf.getvalue())

    def best_row(self, metric: str, mode: str = "max") -> dict[str, Any] | None:
        """The epoch row with the best value of ``metric`` (first one on ties), or None if never logged."""
        rows = [r for r in self.rows if r.get(metric) is not None]
        if not rows:
            return None
        return (max if mode == "max" else min)(rows, key=lambda r: r[metric])
