"""Per-image predictions of a density split on disk (``test_predictions.csv``) and their calibration block.

The density task keeps, per evaluated split, the predictions with each image's index into the data set
(``last_test`` / ``last_val``, gathered over DDP ranks by torchmetrics). This module turns them into one row per
image (DDP padding removed), writes and reads the CSV, and computes :func:`calib_seg.metrics.calibration.calibrate`
from exactly those rows, so the table in ``run.json`` can always be recomputed from the file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calib_seg.metrics.calibration import CalibrationSettings, calibrate

#: columns of test_predictions.csv (docs/calibration.md); densities in beads/mm², count = realised beads in the FOV
COLUMNS = ("file", "dilution", "nominal", "predicted", "count")


def prediction_columns(out: Mapping[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """One entry per image from a task's stored outputs (``pred``, ``target`` and optional ``dilution``,
    ``count``, ``index``), sorted by image index; an index seen twice (DDP sampler padding) is kept once."""
    pred = np.asarray(out["pred"], float).reshape(-1)
    n = pred.size

    def col(key: str) -> np.ndarray:
        v = out.get(key)
        return np.full(n, np.nan) if v is None or len(v) != n else np.asarray(v, float).reshape(-1)

    index = col("index")
    indexed = bool(np.all(np.isfinite(index)) and np.all(index >= 0))
    # sorted by index, duplicates dropped; without indices every row is kept in loader order
    keep = np.unique(index, return_index=True)[1] if indexed else np.arange(n)
    if indexed and names is not None:
        files = np.array([names[int(i)] for i in index[keep]], dtype=object)
    else:
        ids = index[keep].astype(int) if indexed else keep
        files = np.array([f"sample_{int(i):05d}" for i in ids], dtype=object)
    return {"file": files, "dilution": col("dilution")[keep], "nominal": col("target")[keep],
            "predicted": pred[keep], "count": col("count")[keep]}


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    v = float(v)
    if not math.isfinite(v):
        return ""
    # shortest text that reads back to the same float: the table recomputed from the file is the recorded one
    return f"{v:.0f}" if v.is_integer() and abs(v) < 1e15 else repr(v)


def write_predictions_csv(path: str | Path, cols: Mapping[str, np.ndarray]) -> Path:
    """Write the rows (empty cell = unknown) atomically; extra keys of ``cols`` become extra columns."""
    from calib_seg.fileio import atomic_write_text

    names = list(COLUMNS) + [k for k in cols if k not in COLUMNS]
    buf = [",".join(names)]
    for i in range(len(cols["predicted"])):
        buf.append(",".join(_csv_escape(_cell(cols[k][i])) for k in names))
    path = Path(path)
    atomic_write_text(path, "\n".join(buf) + "\n")
    return path


def _csv_escape(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def read_predictions_csv(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a predictions CSV (numbers as float, empty cells as NaN, ``file`` as text)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in ("file", "nominal", "predicted") if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(rows[0])}")
    out: dict[str, np.ndarray] = {"file": np.array([r["file"] for r in rows], dtype=object)}
    for key in ("dilution", "nominal", "predicted", "count"):
        out[key] = np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])
    return out


def calibration_of(cols: Mapping[str, np.ndarray], area_mm2: float | np.ndarray | None,
                   settings: CalibrationSettings | Mapping[str, Any] | None = None, split: str = "test") -> dict[str, Any]:
    """The calibration block of prediction rows (see :func:`~calib_seg.metrics.calibration.calibrate`)."""
    if not isinstance(settings, CalibrationSettings):
        settings = CalibrationSettings.from_mapping(settings)
    count = cols.get("count")
    return calibrate(cols["predicted"], cols["nominal"], cols.get("dilution"),
                     None if count is None or np.isnan(count).all() else count, area_mm2, settings, split)


def datamodule_facts(datamodule: Any) -> tuple[list[str] | None, float | None]:
    """(image names, FOV area in mm²) of a density datamodule that holds its data, else (None, None)."""
    beads = getattr(datamodule, "beads", None)
    if beads is None:
        return None, None
    return list(beads.names), beads.fov_area_mm2


def split_calibration(out: Mapping[str, np.ndarray], datamodule: Any, settings: Any = None,
                      split: str = "test") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(prediction rows, calibration block) of one split's stored task outputs."""
    names, area = datamodule_facts(datamodule)
    cols = prediction_columns(out, names)
    return cols, calibration_of(cols, area, settings, split)


def run_calibration(task: Any, datamodule: Any, settings: Any, out_dir: str | Path | None,
                    best_epoch: int | None = None) -> dict[str, Any] | None:
    """Test (and validation) calibration of a finished density run; writes ``test_predictions.csv`` (and
    ``val_predictions.csv``) into ``out_dir`` when given. None when the task kept no test predictions."""
    last_test = getattr(task, "last_test", None)
    if not last_test or "pred" not in last_test or len(last_test["pred"]) == 0:
        return None
    cols, block = split_calibration(last_test, datamodule, settings, "test")
    if out_dir is not None:
        write_predictions_csv(Path(out_dir) / "test_predictions.csv", cols)
    # validation: the epoch of the best checkpoint (the weights that were tested), else the last validated one
    by_epoch = getattr(task, "val_by_epoch", None) or {}
    epoch0 = best_epoch - 1 if best_epoch else None
    val_out = by_epoch.get(epoch0) if epoch0 in by_epoch else getattr(task, "last_val", None)
    if val_out and len(val_out.get("pred", [])) and "index" in val_out:
        val_cols, val_block = split_calibration(val_out, datamodule, settings, "val")
        val_block["epoch"] = (epoch0 + 1) if epoch0 in by_epoch else None
        block["val"] = val_block
        if out_dir is not None:
            write_predictions_csv(Path(out_dir) / "val_predictions.csv", val_cols)
    return block
