"""Resume runs safely: never train over a finished run, skip completed jobs when a sweep is re-run with
``+resume=true``, continue from ``last.ckpt``, and say how to resume an interrupted run.

Called from :func:`calib_seg.train.run`; the record and exit codes of an interrupted run are
:mod:`calib_seg.lifecycle`'s; user-facing description in docs/reliability.md.

- ``+resume=true`` in a run folder that already holds a *completed* or *aborted* ``run.json`` returns that
  record without training (a re-run sweep hands the sweeper the recorded metric, NaN for an abort); any other
  state (no record, failed, killed) trains again, from ``checkpoints/last.ckpt`` when the folder has one.
- Before a grid sweep with ``resume=true`` launches anything, :func:`check_resumed_grid` (called by the
  ``calib_seg_basic`` sweeper) matches the sweep folder's finished jobs to the planned ones by their swept values
  and refuses (:class:`SweepChanged`, exit 2) a changed fixed override or grid; :func:`check_resumed_study` does
  the same for a continued Optuna study. Job folders are named by the swept values (``resolvers.job_dirname``).
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
    """``resume=true`` in a sweep folder whose jobs ran with other fixed overrides or another grid (resuming would
    mix two configurations in one sweep, or train every job again beside the old ones)."""


def _by_key(overrides: list[str]) -> dict[str, str]:
    """``key -> value`` of a job's override strings (``+``/``~`` dropped; a deletion's value is ``~``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = {}
    for o in OverridesParser.create().parse_overrides([str(x) for x in overrides]):
        out[o.key_or_group] = "~" if o.is_delete() else o.get_value_element_as_str()
    return out


def _finished_jobs(sweep: Path) -> dict[str, dict[str, str]]:
    """Folder name -> overrides (``key -> value``, from its ``.hydra/overrides.yaml``) of the sweep's started jobs."""
    from omegaconf import OmegaConf

    out = {}
    for d in sorted(sweep.iterdir()) if sweep.is_dir() else []:
        path = d / ".hydra" / "overrides.yaml"
        if d.is_dir() and path.is_file() and ((d / "run.json").exists() or (d / "checkpoints").is_dir()):
            out[d.name] = _by_key(list(OmegaConf.load(path)))
    return out


def _show(items: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in items.items()) or "nothing"


def _fixed_changed(sweep: Path, changed: list[tuple[str, dict[str, str], dict[str, str]]],
                   what: str = "resume=true") -> SweepChanged:
    """The refusal naming each fixed override that differs (``changed``: folder, fixed then, fixed now)."""
    folder, then_fixed, now_fixed = changed[0]
    keys = sorted(k for k in {*then_fixed, *now_fixed} if then_fixed.get(k) != now_fixed.get(k))
    diff = [f"{k}={then_fixed.get(k, '(not set)')} then, {now_fixed.get(k, '(not set)')} now" for k in keys]
    return SweepChanged(
        f"{what}: {len(changed)} finished job(s) of sweep {sweep} ran with other fixed overrides: "
        f"{'; '.join(diff)}. Resuming would mix two configurations in one sweep. Re-run with the sweep's "
        f"original overrides (in {sweep / folder / '.hydra' / 'overrides.yaml'}), or start a new sweep "
        "(leave hydra.sweep.dir unset)")


def _fixed_of(overrides: dict[str, str], swept: set[str], may_change: list[str]) -> dict[str, str]:
    """The overrides of a job that must not change on a resume: not swept, not in ``may_change``."""
    ignore = {k.lstrip("+~") for k in may_change} | {"resume", "ckpt_path"}
    return {k: v for k, v in overrides.items() if k not in swept and k not in ignore}


def check_resumed_study(sweep_dir: str | Path, fixed: list[str], swept: list[str], may_change: list[str]) -> None:
    """Before an Optuna study continues in its sweep folder: raise :class:`SweepChanged` when its finished trials'
    jobs ran with other fixed overrides than ``fixed`` (the overrides every new trial gets); the trials' own
    parameters (``swept``) and ``may_change`` keys may differ. Nothing is written either way."""
    sweep, keep = Path(sweep_dir), set(swept)
    now = _fixed_of(_by_key(fixed), keep, may_change)
    changed = [(folder, then_fixed, now) for folder, then in _finished_jobs(sweep).items()
               if (then_fixed := _fixed_of(then, keep, may_change)) != now]
    if changed:
        raise _fixed_changed(sweep, changed, "continuing the Optuna study")


def check_resumed_grid(sweep_dir: str | Path, jobs: list[list[str]], swept: list[str],
                       may_change: list[str]) -> None:
    """Before a grid sweep with ``resume=true`` launches: raise :class:`SweepChanged` unless every job the sweep
    folder already ran (a ``run.json`` or checkpoints) is the same job now.

    ``jobs`` are the job override lists in launch order (job ``i`` is folder ``i_<swept values>``), ``swept`` the
    keys the grid varies, ``may_change`` keys that may differ between the runs (data location, devices, launcher,
    ``resume`` itself: ``hydra.job.config.override_dirname.exclude_keys``). A finished folder is matched by its
    swept values: it must have the same job number (same grid, same order) and the same fixed overrides. A job
    folder that is new (a grid extended at its end) is fine. Nothing is written either way.
    """
    from calib_seg.resolvers import job_dirname, job_folder

    sweep = Path(sweep_dir)
    done = _finished_jobs(sweep)
    if not done:
        return
    keep = set(swept)
    planned = []
    for num, job in enumerate(jobs):
        values = _by_key(job)
        planned.append((job_folder(num, job_dirname(job, swept)), {k: v for k, v in values.items() if k in keep},
                        _fixed_of(values, keep, may_change)))
    by_values = {tuple(sorted(sw.items())): (name, fixed) for name, sw, fixed in planned}
    moved, changed = [], []  # grid problems; (folder, fixed then, fixed now) of jobs whose fixed overrides differ
    for folder, then in done.items():
        sw = {k: v for k, v in then.items() if k in keep}
        now = by_values.get(tuple(sorted(sw.items())))
        if now is None:
            moved.append(f"{folder} ({_show(sw)}) is not a job of this grid")
        elif now[0] != folder and now[0].partition("_")[0] == folder.partition("_")[0]:  # named by every override
            moved.append(f"{folder} is job {now[0]} in the older folder naming (rename the folder to {now[0]} "
                         "to resume it)")
        elif now[0] != folder:
            moved.append(f"{folder} ({_show(sw)}) would now be job {now[0]}")
        elif (fixed := _fixed_of(then, keep, may_change)) != now[1]:
            changed.append((folder, fixed, now[1]))
    if changed:
        raise _fixed_changed(sweep, changed)
    if moved:
        raise SweepChanged(
            f"resume=true: the grid of sweep {sweep} changed since its jobs ran (jobs are matched by their swept "
            f"values and numbered in grid order): {'; '.join(moved[:5])}"
            + (f"; and {len(moved) - 5} more" if len(moved) > 5 else "")
            + ". Resume with the original grid (new values may be added at its end), or start a new sweep "
            "(leave hydra.sweep.dir unset)")


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
