"""Run records (`run.json`): what ran, how it ended, its numbers, and the code and data that produced them.

Written atomically (temporary file + rename) so a killed job never leaves half a record. The report reads
only these files; it never re-trains.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calib_seg.fileio import atomic_write_text

log = logging.getLogger(__name__)

RECORD_NAME = "run.json"
#: Top-level keys every run.json has, whatever its status (null when not known, e.g. a run that failed early).
RECORD_FIELDS = (
    "status", "reason", "aborted_epoch", "task", "choices", "run_dir", "optimized_metric", "best_val", "best_epoch",
    "epochs", "metrics", "val_metrics_best", "val_metrics_final", "test_metrics", "calibration", "wall_time_s", "time_per_epoch_s",
    "peak_rss_mb", "peak_cuda_mb", "params", "device", "metric_definitions", "data_fingerprint", "provenance",
    "config",
)
_PACKAGES = ("calib_seg", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core", "omegaconf",
             "segmentation-models-pytorch", "numpy", "matplotlib", "tensorboard")


def _jsonable(obj: Any) -> Any:
    """Convert tensors, numpy scalars and non-finite floats into plain JSON values (NaN -> null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def new_record(**known: Any) -> dict[str, Any]:
    """A record with every field of :data:`RECORD_FIELDS` present (None), updated with ``known``."""
    _code_snapshot()  # a run's record starts with its run: take the code state now, not after training
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(known)
    return record


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``run.json`` into ``run_dir`` atomically and return its path."""
    path = Path(run_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(_jsonable(record), indent=2, sort_keys=False) + "\n")
    return path


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The record of a run folder, or None if it has none (or an unreadable one)."""
    path = Path(run_dir) / RECORD_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _code_snapshot() -> tuple[str | None, bool | None, str]:
    """(commit, dirty, diff) of the source tree, taken once per process.

    Once per process because that is the code actually running: in a multirun with the in-process launcher all
    jobs execute the modules imported at start, even if someone commits or edits files while the sweep runs.
    """
    src = Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], src)
    if commit is None:
        return None, None, ""
    status = _git(["status", "--porcelain", "--untracked-files=no"], src) or ""
    dirty = bool(status.strip())
    return commit.strip(), dirty, (_git(["diff", "HEAD"], src) or "") if dirty else ""


def code_state(run_dir: str | Path | None = None) -> dict[str, Any]:
    """Git commit of the calib_seg source tree and whether it was dirty; saves the diff beside the record."""
    commit, dirty, diff = _code_snapshot()
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    info: dict[str, Any] = {"git_commit": commit, "git_dirty": dirty}
    if dirty and run_dir is not None:
        atomic_write_text(Path(run_dir) / "git_diff.patch", diff)
        info["git_diff"] = "git_diff.patch"
    return info


def versions() -> dict[str, str | None]:
    """Installed versions of python and the packages whose behaviour shapes the numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def scheduler_job_id() -> dict[str, str | None]:
    """SLURM / PBS job identifiers of this process, if it runs under a scheduler."""
    env = os.environ
    return {
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "pbs_job_id": env.get("PBS_JOBID"),
        "pbs_array_index": env.get("PBS_ARRAY_INDEX") or env.get("PBS_ARRAYID"),
    }


def provenance(run_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything that ties a number to the code, environment and machine that produced it."""
    return {**code_state(run_dir), "versions": versions(), "host": socket.gethostname(),
            "platform": platform.platform(), **scheduler_job_id()}


# --- filling a record from the objects of a run (history callback, task, data, trainer) ---------------------
# Every helper tolerates missing pieces: a failed run records whatever it got to before the error.


def _history(callbacks: list[Any]) -> Any:
    """The run's MetricHistory callback, if any (imported here: this module stays free of Lightning)."""
    from calib_seg.callbacks.history import MetricHistory

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
    """Fill params, device, metric definitions and data fingerprint where still unknown (never raises).

    ``datamodule`` must be one whose ``setup`` finished (or None): :class:`calib_seg.lifecycle.RunRecorder`
    holds one only from then on.
    """
    try:
        if task is not None:
            if record.get("params") is None:
                from calib_seg.models import count_parameters

                record["params"] = count_parameters(task.model)
            if record.get("metric_definitions") is None and hasattr(task, "metric_definitions"):
                record["metric_definitions"] = task.metric_definitions()
            if record.get("device") is None:
                n = getattr(trainer, "num_devices", 1) if trainer is not None else 1
                record["device"] = str(task.device) if n == 1 else f"{n}x{task.device.type}"
        # callers pass only a datamodule that already holds its data (set up without error): re-loading it here
        # could raise the error again
        if record.get("data_fingerprint") is None and datamodule is not None and hasattr(datamodule, "fingerprint"):
            record["data_fingerprint"] = datamodule.fingerprint()
    except Exception as exc:  # noqa: BLE001  (the record must still be written)
        log.warning("could not describe the run fully: %s: %s", type(exc).__name__, exc)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config with interpolations resolved (what actually ran); unresolved if resolution fails."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  (e.g. ${hydra:...} outside a Hydra app)
        return OmegaConf.to_container(cfg, resolve=False)


def peak_memory_mb() -> dict[str, float | None]:
    """Peak resident memory of this process and, on GPU, the peak CUDA allocation (MiB)."""
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}
