"""A run in TensorBoard: the logger (named by the run, epoch on the x axis, a scalar layout) and the outcome.

:class:`RunTensorBoardLogger` is Lightning's TensorBoard logger with three changes a reader of the dashboard
needs: the run's event files sit in ``<run folder>/<run_name>_<run folder name>/``, so TensorBoard lists the run
under that name (not "tensorboard" for every run); epoch-level scalars are written at the 1-based epoch, not at
the optimizer step; and a Custom Scalars layout puts ``train/loss`` beside ``val/loss``, then the optimised metric
and the other ``val/*`` curves, first.

Lightning logs the task's hyperparameters at fit start without metrics (``default_hp_metric: false`` keeps it
from inventing an ``hp_metric``). Once the run has ended we know its numbers, so :func:`log_outcome` writes one
HParams entry per run whose metrics are the record's headline numbers (a whole sweep can then be sorted and
compared in the HParams tab), the references the run was measured against (oracle counter, calibration verdict)
as scalars, and the outcome as text.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

#: the Custom Scalars category that holds the training curves (listed first in that tab)
LAYOUT_CATEGORY = "1. training, per epoch"


def tensorboard_run_name(run_name: str, save_dir: str | Path) -> str:
    """The name TensorBoard shows for a run: ``<run_name>_<run folder name>`` (file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.,=+\-\[\]]+", "_", str(run_name)).strip("_") or "run"
    return f"{safe}_{Path(save_dir).name}"


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's :class:`TensorBoardLogger`, named by the run, with the epoch as the x axis of every
    epoch-level scalar and a Custom Scalars layout.

    Every metric the tasks log is epoch-level (``on_step=False``), and Lightning hands each such call the
    0-based ``epoch``: those scalars go to step ``epoch + 1`` (the 1-based epoch of ``best-epoch012.ckpt``);
    test metrics to step ``epoch`` (the number of epochs trained, the last point of the curves). Lightning's
    own ``epoch`` scalar is not written (on an epoch axis it is the diagonal). The learning-rate monitor writes
    at the start of an epoch without saying which: its ``lr-*`` values are held and written with that epoch's
    metrics. Anything else (the HParams metrics) is written as Lightning would.

    Args:
        save_dir: the run folder.
        run_name: the config's ``run_name``; with the run folder's name it names the TensorBoard run.
        optimized_metric: the metric charted first after the losses in the layout.
        default_hp_metric: as Lightning's (false: no made-up ``hp_metric``).
        kwargs: passed to :class:`TensorBoardLogger` (e.g. ``log_graph``).
    """

    def __init__(self, save_dir: str, run_name: str = "run", optimized_metric: str | None = None,
                 default_hp_metric: bool = False, **kwargs: Any) -> None:
        super().__init__(save_dir, name=tensorboard_run_name(run_name, save_dir), version="",
                         default_hp_metric=default_hp_metric, **kwargs)
        self.optimized_metric = optimized_metric
        self._pending: dict[str, Any] = {}
        self._layout_written = False

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Write ``metrics``; epoch-level calls (they carry ``epoch``) at the 1-based epoch."""
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if epoch is None:
            lr = {k: v for k, v in metrics.items() if k.startswith("lr-")}
            self._pending.update(lr)
            rest = {k: v for k, v in metrics.items() if k not in lr}
            if rest:
                super().log_metrics(rest, step)
            return
        testing = bool(metrics) and all(k.startswith("test/") for k in metrics)
        if not testing:
            metrics, self._pending = {**self._pending, **metrics}, {}
            self._write_layout(metrics)
        super().log_metrics(metrics, int(epoch) if testing else int(epoch) + 1)

    def _write_layout(self, metrics: Mapping[str, Any]) -> None:
        """The Custom Scalars layout, once, from the first validation metrics: losses, the optimised metric, the
        other ``val/*`` (each ``val/<x>_all_foreground`` baseline in its metric's chart), the learning rate."""
        if self._layout_written or not any(k.startswith("val/") for k in metrics):
            return
        names = sorted(k for k in metrics if k.startswith("val/") and k != "val/loss")
        baselines = {k for k in names if k.endswith("_all_foreground") and k.removesuffix("_all_foreground") in names}
        names = [k for k in names if k not in baselines]
        if self.optimized_metric in names:
            names.insert(0, names.pop(names.index(self.optimized_metric)))

        def tags(*keys: str) -> list[str]:
            return [f"^{re.escape(k)}$" for k in keys]

        charts: dict[str, list[Any]] = {"loss (train/loss, val/loss)": ["Multiline", tags("train/loss", "val/loss")]}
        for k in names:
            base = f"{k}_all_foreground"
            charts[k] = ["Multiline", tags(k, base) if base in baselines else tags(k)]
        charts["learning rate"] = ["Multiline", ["^lr-"]]
        self.experiment.add_custom_scalars({LAYOUT_CATEGORY: charts})
        self._layout_written = True


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


def reference_scalars(record: dict[str, Any]) -> dict[str, float]:
    """What the run is measured against, as scalars: the oracle counter's test R² and MAE where the data knows
    the realised counts (``test/r2_oracle``, ``test/mae_oracle``, as in ``run.json``) and the calibration verdict
    (``calibration/levels_passed`` of ``calibration/levels``, ``calibration/pass`` 1 or 0)."""
    m = record.get("test_metrics") or {}
    out = {k: m.get(k) for k in ("test/r2_oracle", "test/mae_oracle")}
    calibration = record.get("calibration") or {}
    levels = calibration.get("levels") or []
    if levels:
        out["calibration/levels_passed"] = sum(bool(lv.get("passed")) for lv in levels)
        out["calibration/levels"] = len(levels)
        out["calibration/pass"] = 1.0 if calibration.get("verdict") == "pass" else 0.0
    return {k: float(v) for k, v in out.items()
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
    step = int(record.get("epochs") or 0)  # beside the test metrics: the last epoch trained
    for tag, value in reference_scalars(record).items():
        logger.experiment.add_scalar(tag, value, global_step=step)
    calibration = record.get("calibration") or {}
    if calibration.get("levels"):  # the second verdict, beside the status (docs/calibration.md)
        from calib_seg.metrics.calibration import summary_head, table_text

        # Markdown: paragraphs need blank lines between them
        text = "\n\n".join([*summary_head(calibration), table_text(calibration)])
        logger.experiment.add_text("calibration/verdict", text, global_step=0)
    logger.experiment.flush()
    logger.experiment.close()  # Lightning already finalized it; close the writer this call reopened
