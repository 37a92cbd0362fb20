"""Helpers that fill a run record from the objects of a run (history callback, task, data, trainer).

Kept out of ``train.py`` so the entry point still reads as the data flow; every helper tolerates missing pieces
because a failed run records whatever it got to before the error.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calib_seg.callbacks.history import MetricHistory

log = logging.getLogger(__name__)


def _history(callbacks: list[Any]) -> MetricHistory | None:
    return next((cb for cb in callbacks if isinstance(cb, MetricHistory)), None)


def val_summary(callbacks: list[Any], optimized_metric: str, best_epoch: int | None) -> dict[str, Any]:
    """``val_metrics_best`` (the epoch of the best checkpoint, else the best epoch of the optimised metric)
    and ``val_metrics_final`` (the last epoch), from the per-epoch history."""
    hist = _history(callbacks)
    if hist is None or not hist.rows:
        return {}
    best = next((r for r in hist.rows if r["epoch"] == best_epoch), None) if best_epoch else None
    best = best or hist.best_row(optimized_metric, "max")

    def vals(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {"epoch": row["epoch"], **{k: v for k, v in row.items() if k.startswith("val/")}}

    return {"val_metrics_best": vals(best), "val_metrics_final": vals(hist.rows[-1])}


def time_per_epoch(callbacks: list[Any], fit_time: float, epochs: int) -> float:
    """Mean measured epoch time (training + validation) when the history has it, else fit time / epochs."""
    hist = _history(callbacks)
    times = [r["time_s"] for r in hist.rows] if hist is not None else []
    return sum(times) / len(times) if times else fit_time / max(epochs, 1)


def describe_run(record: dict[str, Any], task: Any, datamodule: Any, trainer: Any) -> None:
    """Fill params, device, metric definitions and data fingerprint where still unknown (never raises)."""
    try:
        if task is not None:
            if record.get("params") is None:
                record["params"] = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
            if record.get("metric_definitions") is None and hasattr(task, "metric_definitions"):
                record["metric_definitions"] = task.metric_definitions()
            if record.get("device") is None:
                n = getattr(trainer, "num_devices", 1) if trainer is not None else 1
                record["device"] = str(task.device) if n == 1 else f"{n}x{task.device.type}"
        # only a datamodule that already holds its data: re-loading it here could raise the error again
        if record.get("data_fingerprint") is None and datamodule is not None and hasattr(datamodule, "fingerprint"):
            if getattr(datamodule, "beads", True) is not None:
                record["data_fingerprint"] = datamodule.fingerprint()
    except Exception as exc:  # noqa: BLE001  (the record must still be written)
        log.warning("could not describe the run fully: %s: %s", type(exc).__name__, exc)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config with interpolations resolved (what actually ran); unresolved if resolution fails."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  (e.g. ${hydra:...} outside a Hydra app)
        return OmegaConf.to_container(cfg, resolve=False)
