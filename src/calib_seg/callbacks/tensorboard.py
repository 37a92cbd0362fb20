"""Run outcome in TensorBoard: the HParams view (hyperparameters with final metrics) and a status text.

Lightning logs the task's hyperparameters at fit start without metrics (``default_hp_metric: false`` keeps it
from inventing an ``hp_metric``). Once the run has ended we know its numbers, so :func:`log_outcome` writes one
HParams entry per run whose metrics are the record's headline numbers: a whole sweep can then be sorted and
compared in the HParams tab.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


def hp_metric_keys(record: dict[str, Any]) -> tuple[str, ...]:
    """Metrics shown in the HParams tab: the task descriptor's ``hp_metrics`` (every task's when unknown).

    They are logged as scalar tags ``hp/<name>``, prefixed so they never clash with logged curves.
    """
    from calib_seg.tasks.spec import all_specs, spec_of

    spec = spec_of(record)
    specs = [spec] if spec is not None else list(all_specs().values())
    return tuple(dict.fromkeys(k for s in specs for k in s.hp_metrics))


def hparams_of(record: dict[str, Any]) -> dict[str, Any]:
    """Flat, TensorBoard-friendly hyperparameters (str/int/float/bool) from a run record's key choices."""
    out: dict[str, Any] = {}
    for k, v in (record.get("choices") or {}).items():
        if v is None:
            continue
        out[k] = v if isinstance(v, (int, float, bool, str)) else str(v)
    out["status"] = record.get("status", "unknown")
    return out


def outcome_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The finite headline numbers of a record, under ``hp/`` names."""
    m = record.get("metrics") or {}
    values = {f"hp/{k}": m.get(k) for k in hp_metric_keys(record)}
    values.update({"hp/best_val": record.get("best_val"), "hp/best_epoch": record.get("best_epoch"),
                   "hp/epochs": record.get("epochs"), "hp/wall_time_s": record.get("wall_time_s")})
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_outcome(loggers: list[Any], record: dict[str, Any]) -> None:
    """Write the HParams entry and a one-line outcome text to every TensorBoard logger (never raises)."""
    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        try:
            _log_one(logger, record)
        except Exception as exc:  # noqa: BLE001  (a dashboard problem must not change the run's outcome)
            log.warning("could not write the run outcome to TensorBoard: %s: %s", type(exc).__name__, exc)


def _log_one(logger: TensorBoardLogger, record: dict[str, Any]) -> None:
    metrics = outcome_metrics(record) or {"hp/epochs": 0.0}  # the HParams plugin needs >= 1 metric
    logger.log_hyperparams(hparams_of(record), metrics)
    text = f"**{record.get('status')}**"
    if record.get("reason"):
        text += f": {record['reason']}"
    logger.experiment.add_text("run/outcome", text, global_step=0)
    calibration = record.get("calibration") or {}
    if calibration.get("levels"):  # the second verdict, beside the status (docs/calibration.md)
        from calib_seg.metrics.calibration import summary_head, table_text

        # Markdown: paragraphs need blank lines between them
        text = "\n\n".join([*summary_head(calibration), table_text(calibration)])
        logger.experiment.add_text("calibration/verdict", text, global_step=0)
    logger.experiment.flush()
    logger.experiment.close()  # Lightning already finalized it; close the writer this call reopened
