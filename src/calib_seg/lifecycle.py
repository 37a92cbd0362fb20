"""The life of a run in one place: its record from start to end, and how an entry point exits.

- :class:`RunRecorder` (a context manager, the counterpart of lightning-hydra-template's task wrapper) opens the
  run's record, marks it ``failed`` when the body raises (SIGTERM and Ctrl-C included: a killed run must not stay
  ``running``) and always writes it once at the end, on rank 0, atomically, with provenance and the resolved
  config. The body fills in the science (``status``, metrics) and hands over the objects it built, so a failed
  run still records what it got to.
- :func:`check_config` validates a config before anything is built; a rejected config leaves a ``failed``
  record, so the folder is never taken for a result.
- :func:`clean_exit` turns a bad config or input into one message + exit 2 and an interruption into exit 143
  (SIGTERM) / 130 (Ctrl-C), printing the command that resumes the run (docs/reliability.md).

Used by ``train``, ``evaluate`` (records) and ``predict`` (exit codes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import DictConfig

from calib_seg.errors import InputError
from calib_seg.records import (
    describe_run,
    new_record,
    peak_memory_mb,
    provenance,
    resolved_config,
    write_record,
)
from calib_seg.resume import RunFolderTaken, failure_reason, is_ctrl_c, is_sigterm, resume_command
from calib_seg.validation import ConfigError, validate

#: exit status of a run stopped by a bad config or input (like argparse), SIGTERM (128+15) and Ctrl-C (128+2)
EXIT_CONFIG, EXIT_SIGTERM, EXIT_SIGINT = 2, 143, 130


class RunRecorder:
    """``with RunRecorder(out_dir, cfg, status="running", ...) as rec:`` -- the record of one run.

    Args:
        out_dir: the run folder (``run.json`` goes here).
        cfg: the run's config, stored resolved in the record (unless ``config`` is given).
        config: what to store as the record's ``config`` instead (called at write time).
        resume_hint: a failure's reason names how to resume from this folder (training runs).
        failure_fields: extra fields of a failed record, e.g. how many epochs ran (called on failure).
        on_written: called with the record once it is on disk (e.g. the TensorBoard outcome).
        known: the record's first fields (see :data:`calib_seg.records.RECORD_FIELDS`).

    The body sets ``task``, ``datamodule`` (once its data are loaded), ``trainer``, ``callbacks`` and ``loggers``
    as it builds them; params, device, metric definitions and the data fingerprint are read from them.
    """

    def __init__(self, out_dir: str | Path, cfg: DictConfig | None = None, *,
                 config: Callable[[], Any] | None = None, resume_hint: bool = False,
                 failure_fields: Callable[[], dict[str, Any]] | None = None,
                 on_written: Callable[[dict[str, Any]], None] | None = None, **known: Any) -> None:
        self.out_dir = Path(out_dir)
        self.cfg = cfg
        self.record: dict[str, Any] = new_record(run_dir=str(self.out_dir), **known)
        self._config, self._resume_hint = config, resume_hint
        self._failure_fields, self._on_written = failure_fields, on_written
        self.task: Any = None
        self.datamodule: Any = None
        self.trainer: Any = None
        self.callbacks: list[Any] = []
        self.loggers: list[Any] = []
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.t0

    def __enter__(self) -> RunRecorder:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            if exc is not None:
                self._mark_failed(exc, "".join(traceback.format_exception(exc_type, exc, tb)))
        finally:
            self.write()
        return False  # never swallow: the entry point's clean_exit turns it into an exit code

    def fail(self, exc: BaseException) -> dict[str, Any]:
        """Record ``exc`` as the reason the run failed and write the record now (outside a ``with`` block)."""
        self._mark_failed(exc, None)
        self.write()
        return self.record

    def _mark_failed(self, exc: BaseException, trace: str | None) -> None:
        self.record.update({"status": "failed",
                            "reason": failure_reason(exc, self.out_dir if self._resume_hint else None),
                            "wall_time_s": self.elapsed()})
        if trace is not None:
            self.record["traceback"] = trace
        if self._failure_fields is not None:
            self.record.update(self._failure_fields())

    def write(self) -> None:
        """Describe the run, add provenance and config, write ``run.json`` (rank 0 only: under DDP every rank
        runs the same code on the same folder, and synced metrics let rank 0 speak for all)."""
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank != 0:
            return
        if self.record.get("wall_time_s") is None and self.record.get("status") != "failed":
            self.record["wall_time_s"] = self.elapsed()
        self.record.update(peak_memory_mb())
        describe_run(self.record, self.task, self.datamodule, self.trainer)  # params, device, definitions, data
        self.record["provenance"] = provenance(self.out_dir)
        if self._config is not None:
            self.record["config"] = self._config()
        elif self.cfg is not None:
            self.record["config"] = resolved_config(self.cfg)
        write_record(self.out_dir, self.record)
        if self._on_written is not None:
            self._on_written(self.record)


def check_config(cfg: DictConfig, out_dir: Path) -> None:
    """:func:`~calib_seg.validation.validate` ``cfg``; on error write a ``failed`` run.json and re-raise.

    The record makes sure a folder left by a rejected config is never taken for a result (report.py and
    sweep resume read run.json).
    """
    try:
        validate(cfg)
    except ConfigError as exc:
        RunRecorder(out_dir, cfg, task=cfg.get("task_name"), optimized_metric=cfg.get("optimized_metric"),
                    epochs=0).fail(exc)
        raise


def _say(text: str) -> None:
    """On the console (stderr) and in the run's log file."""
    from calib_seg.cli import to_log

    to_log(text)
    print(text, file=sys.stderr, flush=True)


def _say_interrupted(what: str, cfg: DictConfig | None) -> None:
    command = resume_command(cfg)
    hint = f"; continue with:\n  {command}" if command else " (resume with ckpt_path=last)"
    _say(f"run interrupted by {what}; its run.json says failed{hint}")


@contextlib.contextmanager
def clean_exit(cfg: DictConfig | None = None) -> Iterator[None]:
    """Turn a bad config or input into one short message + exit 2, and an interruption into exit 143 / 130.

    An interruption prints the command that resumes ``cfg``'s run. (Lightning's SIGTERMException is a
    SystemExit without a code, i.e. exit status 0, and Ctrl-C inside fit becomes ``sys.exit(1)``; a scheduler
    must not read a killed job as a success, and docs/reliability.md promises 130 for Ctrl-C.)
    ``HYDRA_FULL_ERROR=1`` keeps the traceback of a bad input.
    """
    try:
        yield
    except ConfigError as exc:
        _say(f"config error: {exc}")
        raise SystemExit(EXIT_CONFIG) from None
    except (RunFolderTaken, InputError) as exc:
        if isinstance(exc, InputError) and os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _say(f"error: {exc}")
        raise SystemExit(EXIT_CONFIG) from None
    except SystemExit as exc:
        if is_sigterm(exc):
            _say_interrupted("SIGTERM", cfg)
            raise SystemExit(EXIT_SIGTERM) from None
        if is_ctrl_c(exc):
            _say_interrupted("Ctrl-C", cfg)
            raise SystemExit(EXIT_SIGINT) from None
        raise
    except KeyboardInterrupt:
        _say_interrupted("Ctrl-C", cfg)
        raise SystemExit(EXIT_SIGINT) from None
