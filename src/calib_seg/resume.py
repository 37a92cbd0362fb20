"""Resume runs safely: never train over a finished run, skip completed jobs when a sweep is re-run with
``+resume=true``, continue from ``last.ckpt``, and say how to resume an interrupted run.

Called from :func:`calib_seg.train.run`; the record and exit codes of an interrupted run are
:mod:`calib_seg.lifecycle`'s; user-facing description in docs/reliability.md.

- ``+resume=true`` in a run folder that already holds a *completed* or *aborted* ``run.json`` returns that
  record without training (a re-run sweep hands the sweeper the recorded metric, NaN for an abort); any other
  state (no record, failed, killed) trains again, from ``checkpoints/last.ckpt`` when the folder has one.
- ``ckpt_path=last`` resumes from ``checkpoints/last.ckpt`` of the run folder (``hydra.run.dir=<same folder>``).
- A folder that already holds a completed or aborted run is never trained over: without ``ckpt_path`` or
  ``resume=true`` the run stops before anything is written (:class:`RunFolderTaken`, exit 2).
- A run stopped by SIGTERM (Lightning stops at the next batch boundary) or Ctrl-C records ``status: failed``
  with the reason and how to resume, and exits non-zero (143 / 130) -- never ``completed``, never ``running``.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from calib_seg.errors import InputError
from calib_seg.records import read_record

log = logging.getLogger("calib_seg.resume")


class RunFolderTaken(FileExistsError):
    """The run folder already holds a finished run that a new training would overwrite."""


def refuse_overwrite(cfg: DictConfig, out_dir: Path) -> None:
    """Raise :class:`RunFolderTaken` when ``out_dir`` holds a completed/aborted run and this is not a resume.

    Run folders get a unique suffix, so this only happens when ``hydra.run.dir`` / ``hydra.sweep.dir`` names an
    existing folder on purpose. A failed record may be trained over (that is a retry, not a result).
    """
    if cfg.get("ckpt_path") not in (None, "") or cfg.get("resume", False):
        return
    record = read_record(out_dir)
    if record is not None and record.get("status") in ("completed", "aborted"):
        raise RunFolderTaken(
            f"run folder {out_dir} already holds a {record['status']} run (run.json); nothing was overwritten. "
            "Use a new folder (leave hydra.run.dir / hydra.sweep.dir unset), resume it with ckpt_path=last, or "
            "re-run a sweep with +resume=true to skip its completed jobs"
        )


class SweepChanged(RunFolderTaken):
    """``resume=true`` in a sweep folder whose jobs ran with other fixed overrides (a re-run would train them all
    again into new folders beside the old ones)."""


def _overrides_of(job_name: str) -> set[str]:
    """The ``key=value`` items of a job folder name ``<num>_<overrides>`` (commas inside ``[..]`` kept)."""
    import re

    rest = job_name.partition("_")[2]
    return set(re.split(r",(?![^\[]*\])", rest)) if rest else set()


def refuse_changed_sweep(cfg: DictConfig, out_dir: Path) -> None:
    """With ``resume=true`` in a sweep: raise :class:`SweepChanged` when this job's number already has another
    folder in the sweep (the folder name holds the job's overrides, so the overrides changed since)."""
    num = out_dir.name.partition("_")[0]
    if not cfg.get("resume", False) or not num.isdigit() or not out_dir.parent.is_dir():
        return
    earlier = sorted(d for d in out_dir.parent.glob(f"{num}_*")
                     if d.is_dir() and d != out_dir and ((d / "run.json").exists() or (d / ".hydra").is_dir()))
    if not earlier:
        return
    before, now = _overrides_of(earlier[0].name), _overrides_of(out_dir.name)
    if not (out_dir / "run.json").exists() and not (out_dir / "checkpoints").exists():
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)  # the folder Hydra just made for the changed job: empty
    raise SweepChanged(
        f"resume=true: job {num} of sweep {out_dir.parent} ran as {earlier[0].name}, with other overrides "
        f"(then: {', '.join(sorted(before - now)) or 'none'}; now: {', '.join(sorted(now - before)) or 'none'}); "
        "resuming would train every job again beside the old ones. Re-run with the sweep's original overrides, "
        "or start a new sweep (leave hydra.sweep.dir unset)")


def completed_record(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """With ``resume=true``: the folder's completed or aborted record (then the job is skipped), else None."""
    if not cfg.get("resume", False):
        return None
    record = read_record(out_dir)
    # an abort is a verdict (guard, pre-flight or final check), not an interruption: re-running it would only
    # repeat the verdict, or let a resumed run slip past rules it already failed
    if record is not None and record.get("status") in ("completed", "aborted"):
        log.info("resume=true: %s already %s (%s=%s); not training again", out_dir, record["status"],
                 record.get("optimized_metric"), record.get("best_val"))
        return record
    return None


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> str | None:
    """With ``resume=true`` and no explicit ``ckpt_path``: the folder's ``checkpoints/last.ckpt`` if it exists."""
    if not cfg.get("resume", False) or cfg.get("ckpt_path") not in (None, ""):
        return None
    last = out_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


def is_sigterm(exc: BaseException) -> bool:
    return type(exc).__name__ == "SIGTERMException"  # pytorch_lightning.utilities.exceptions


def is_ctrl_c(exc: BaseException) -> bool:
    """Ctrl-C, raw or as Lightning reports it (``sys.exit(1)`` while handling the KeyboardInterrupt)."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 1
                                                  and isinstance(exc.__context__, KeyboardInterrupt))


def failure_reason(exc: BaseException, out_dir: Path | str | None = None) -> str:
    """The ``reason`` of a failed run; interruptions say how to resume."""
    how = f" -- resume with ckpt_path=last hydra.run.dir={out_dir}" if out_dir is not None else ""
    if is_sigterm(exc):
        return f"interrupted: SIGTERM received, stopped at the next batch boundary{how}"
    if is_ctrl_c(exc):
        return f"interrupted: Ctrl-C (KeyboardInterrupt){how}"
    if isinstance(exc, InputError):
        return f"{exc.kind}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def resume_command(cfg: DictConfig | None) -> str | None:
    """The exact command that continues this run (or, in a sweep, the sweep) where it stopped.

    A single run: its own overrides + ``ckpt_path=last hydra.run.dir=<its folder>``. A sweep job: the sweep's
    command line + ``hydra.sweep.dir=<sweep folder> +resume=true`` (completed jobs are skipped).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg is None or not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        keep = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "+resume=", "resume="))]
        tail = [f"hydra.sweep.dir={Path(hc.sweep.dir).resolve()}", "+resume=true"]
    else:
        keep = [o for o in hc.overrides.task if not o.startswith(("hydra.run.dir=", "ckpt_path=", "hydra.mode="))]
        tail = ["ckpt_path=last", f"hydra.run.dir={Path(cfg.paths.output_dir).resolve()}"]
    return " ".join(["python -m calib_seg.train", *map(shlex.quote, [*keep, *tail])])
