"""Hydra launcher that runs a sweep batch as one PBS Pro / Torque array job (``hydra/launcher=pbs``).

How one Hydra job is re-run on a compute node: Hydra composes each sweep job's config with
``load_sweep_config``, which is just the primary config loaded in RUN mode with the sweep's hydra
overrides plus that job's overrides. A task therefore runs::

    python -m <app_module> [--config-dir D] --config-name N <hydra overrides> <job overrides> \
        hydra.mode=RUN hydra.run.dir=<job folder> hydra.job.num=<n> hydra.job.id=<n>

where ``<job folder>`` is ``hydra.sweep.dir/hydra.sweep.subdir`` resolved here, in the submitting
process, exactly as the basic launcher would name it (the sweep folder's timestamp is resolved once,
so every task agrees). ``hydra.mode=RUN`` keeps a config that sets ``hydra.mode: MULTIRUN`` (e.g. an
``hparams_search`` preset) from starting a nested sweep.

Results: the job folder's ``run.json`` (written by calib_seg.train) is the truth, not the scheduler's
exit state. ``completed`` and ``aborted`` (an expected guard abort) come back as COMPLETED JobReturns;
a failed or missing record comes back FAILED with a message naming the log to read.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .script import Resources, overrides_line, render_script

log = logging.getLogger(__name__)

# run.json statuses that end a job; anything else ("running", ...) means it is still going
TERMINAL_STATUSES = {"completed", "aborted", "failed"}
OK_STATUSES = {"completed", "aborted"}
# qstat states of a job that is over: C (Torque, and the SLURM wrapper), F (PBS Pro -x), X (expired subjob)
FINISHED_STATES = {"C", "F", "X"}
# what qstat says (with a non-zero exit) about a job the server has already forgotten
_GONE = re.compile(r"unknown job|has finished|job.*not found|invalid job id|does not exist", re.IGNORECASE)
# hydra overrides that must not follow the job to the compute node: launcher/sweeper settings are
# meaningless in RUN mode and may not even compose there; run/sweep dirs and mode are set explicitly
_DROP_HYDRA_OVERRIDE = re.compile(r"^[~+]*hydra(/|\.)(launcher|sweeper|sweep\.|run\.dir|mode)")


class PBSLauncher(Launcher):
    """Launch each batch of a Hydra sweep as one PBS array job; see the module docstring."""

    def __init__(self, **params: Any) -> None:
        # plain containers: the values are resolved now, while ${hydra.sweep.dir} etc. are resolvable
        self.params: dict[str, Any] = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in params.items()
        }
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # ------------------------------------------------------------------ launch
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        p = self.params
        n = len(job_overrides)
        if n == 0:
            return []
        res = Resources(
            dialect=str(p["dialect"]),
            job_name=str(p["job_name"]),
            queue=p.get("queue"),
            account=p.get("account"),
            nodes=int(p["nodes"]),
            ncpus=int(p["ncpus"]),
            ngpus=int(p["ngpus"]),
            mem=p.get("mem"),
            walltime=str(p["walltime"]),
            array_parallelism=p.get("array_parallelism"),
            rerunnable=bool(p["rerunnable"]),
            export_env=bool(p["export_env"]),
            directives=tuple(p.get("directives") or ()),
        )
        cwd = str(self.config.hydra.runtime.cwd)
        sweep_dir = Path(cwd, str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        batch_dir = Path(cwd, str(p["scripts_dir"])).resolve() / f"batch_{initial_job_idx:04d}"
        (batch_dir / "logs").mkdir(parents=True, exist_ok=True)
        (batch_dir / "status").mkdir(parents=True, exist_ok=True)

        jobs = [self._prepare_job(list(ov), initial_job_idx + i) for i, ov in enumerate(job_overrides)]
        log.info(f"PBS ({res.dialect}) sweep output dir: {sweep_dir}")
        for j in jobs:
            log.info(f"\t#{j['num']} : {' '.join(filter_overrides(j['overrides']))}")

        (batch_dir / "overrides.txt").write_text("".join(overrides_line(j["argv"]) + "\n" for j in jobs))
        meta = [{k: j[k] for k in ("num", "job_dir", "overrides", "argv")} for j in jobs]
        (batch_dir / "jobs.json").write_text(json.dumps(meta, indent=2))
        script = batch_dir / "job.pbs"
        script.write_text(
            render_script(
                n_tasks=n,
                res=res,
                batch_dir=str(batch_dir),
                workdir=cwd,
                python=str(p.get("python") or sys.executable),
                app_module=str(p["app_module"]),
                setup=list(p.get("setup") or ()),
                header=(
                    f"calib_seg PBS launcher: {n} Hydra job(s) of {sweep_dir}\n"
                    f"array task i runs line i+1 of overrides.txt; resubmit with: qsub {script.name}"
                ),
            )
        )
        script.chmod(0o755)

        if p.get("dry_run"):
            log.info(f"dry_run: wrote {script} (and overrides.txt, jobs.json); nothing submitted")
            return [self._job_return(j, JobStatus.COMPLETED, None) for j in jobs]

        job_id = self._submit(script, batch_dir)
        log.info(f"submitted {script} as {job_id} ({n} task(s)); task logs in {batch_dir / 'logs'}")
        if not p.get("wait", True):
            log.info("wait=false: not waiting; results land in each job folder's run.json")
            return [self._job_return(j, JobStatus.COMPLETED, None) for j in jobs]
        outcomes = self._wait(job_id, jobs, batch_dir)
        return [self._collect(j, outcomes[i], batch_dir, i) for i, j in enumerate(jobs)]

    # ------------------------------------------------------------------ per job
    def _prepare_job(self, overrides: list[str], num: int) -> dict[str, Any]:
        """Compose the job's config as the basic launcher would, and derive its folder and argv."""
        assert self.config is not None and self.hydra_context is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        # the subdir may use ${hydra:...} resolvers, which read the *current* HydraConfig
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)
        try:
            cwd = str(self.config.hydra.runtime.cwd)
            job_dir = str(
                Path(cwd, str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir)).resolve()
            )
        finally:
            if saved is not None:
                HydraConfig.instance().set_config(saved)
        with read_write(sweep_config.hydra.runtime):
            with open_dict(sweep_config.hydra.runtime):
                sweep_config.hydra.runtime.output_dir = job_dir

        argv: list[str] = []
        for src in self.config.hydra.runtime.config_sources:
            if src.provider == "command-line" and src.schema == "file":
                argv += ["--config-dir", str(src.path)]
        if self.config.hydra.job.config_name is not None:  # apps without a primary config have none
            argv += ["--config-name", str(self.config.hydra.job.config_name)]
        hydra_ovs = [o for o in self.config.hydra.overrides.hydra if not _DROP_HYDRA_OVERRIDE.match(str(o))]
        argv += [str(o) for o in hydra_ovs] + [str(o) for o in overrides]
        argv += [
            "hydra.mode=RUN",
            f"hydra.run.dir={_quote_value(job_dir)}",
            f"hydra.job.num={num}",
            f"hydra.job.id={num}",
        ]
        return {"num": num, "job_dir": job_dir, "overrides": overrides, "argv": argv, "config": sweep_config}

    def _job_return(self, job: dict[str, Any], status: JobStatus, value: Any) -> JobReturn:
        cfg = job["config"]
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
        ret = JobReturn(
            overrides=job["overrides"],
            cfg=task_cfg,
            hydra_cfg=cfg,
            working_dir=job["job_dir"],
            task_name=str(cfg.hydra.job.name),
            status=status,
        )
        ret.return_value = value
        return ret

    # ------------------------------------------------------------------ scheduler
    def _run(self, cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=float(self.params["command_timeout_s"])
        )

    def _submit(self, script: Path, batch_dir: Path) -> str:
        cmd = [str(self.params["qsub"]), *map(str, self.params.get("qsub_args") or ()), script.name]
        # cwd = batch folder: the scheduler's own output files (PBS_O_WORKDIR) land next to the script
        try:
            proc = self._run(cmd, cwd=batch_dir)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"could not run {' '.join(cmd)} in {batch_dir}: {e}") from e
        out = (proc.stdout or "").strip()
        if proc.returncode != 0 or not out:
            raise RuntimeError(
                f"qsub rejected {script} (exit {proc.returncode}):\n{out}\n{(proc.stderr or '').strip()}"
            )
        # PBS Pro/Torque print "123[].server"; the SLURM wrapper prints "123"; both: last token
        job_id = out.splitlines()[-1].split()[-1]
        (batch_dir / "job_id").write_text(job_id + "\n")
        return job_id

    def scheduler_state(self, job_id: str) -> str:
        """'active', 'finished' (done or forgotten by the server) or 'error' (qstat itself failed)."""
        try:
            proc = self._run([str(self.params["qstat"]), job_id])
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning(f"qstat {job_id} failed: {e}")
            return "error"
        text = f"{proc.stdout}\n{proc.stderr}"
        if proc.returncode != 0:
            if _GONE.search(text):
                return "finished"
            log.warning(f"qstat {job_id} exited {proc.returncode}: {text.strip()[:300]}")
            return "error"
        states = parse_qstat_states(proc.stdout)
        if not states:
            return "finished"
        return "finished" if all(s in FINISHED_STATES for s in states) else "active"

    def _cancel(self, job_id: str) -> None:
        try:
            proc = self._run([str(self.params["qdel"]), job_id])
            log.warning(f"qdel {job_id}: exit {proc.returncode} {proc.stdout.strip()} {proc.stderr.strip()}")
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning(f"qdel {job_id} failed: {e}")

    # ------------------------------------------------------------------ waiting
    def _task_outcome(self, job: dict[str, Any], batch_dir: Path, i: int, gone: bool) -> str | None:
        """'record' (terminal run.json), 'exit' (python returned), 'killed', or None (not over yet)."""
        rec = read_record(Path(job["job_dir"]) / str(self.params["run_record"]))
        if rec is not None and str(rec.get("status", "")).lower() in TERMINAL_STATUSES:
            return "record"
        if (batch_dir / "status" / f"{i}.exit").exists():
            return "exit"
        # a signalled task may still be requeued while the scheduler lists the job
        if gone:
            return "killed"
        return None

    def _wait(self, job_id: str, jobs: list[dict[str, Any]], batch_dir: Path) -> list[str]:
        """Poll until every task is over, the scheduler has forgotten the job (plus grace), or timeout.

        Never waits unbounded: a task killed without writing anything (SIGKILL, node failure) ends
        the wait once qstat stops listing the job; a scheduler that never lets go ends it at
        wait_timeout_s.
        """
        p = self.params
        interval = max(0.2, float(p["poll_interval_s"]))
        deadline = time.monotonic() + float(p["wait_timeout_s"])
        gone_since: float | None = None
        outcomes: list[str | None] = [None] * len(jobs)
        try:
            while True:
                for i, j in enumerate(jobs):
                    if outcomes[i] is None:
                        outcomes[i] = self._task_outcome(j, batch_dir, i, gone=False)
                if all(o is not None for o in outcomes):
                    break
                now = time.monotonic()
                if now > deadline:
                    left = [j["num"] for j, o in zip(jobs, outcomes) if o is None]
                    log.error(
                        f"PBS job {job_id}: wait_timeout_s={p['wait_timeout_s']} reached, jobs {left} unfinished"
                    )
                    if p.get("cancel_on_timeout", True):
                        self._cancel(job_id)
                    outcomes = [o or "timeout" for o in outcomes]
                    break
                state = self.scheduler_state(job_id)
                if state == "finished":
                    gone_since = gone_since if gone_since is not None else now
                    if now - gone_since >= float(p["grace_s"]):
                        outcomes = [
                            o or self._task_outcome(j, batch_dir, i, gone=True)
                            for i, (j, o) in enumerate(zip(jobs, outcomes))
                        ]
                        break
                else:
                    gone_since = None
                time.sleep(min(interval, max(0.0, deadline - time.monotonic()) + 0.05))
        except KeyboardInterrupt:
            log.warning(f"interrupted: cancelling PBS job {job_id}")
            self._cancel(job_id)
            raise
        return [str(o) for o in outcomes]

    def _collect(self, job: dict[str, Any], outcome: str, batch_dir: Path, i: int) -> JobReturn:
        record_path = Path(job["job_dir"]) / str(self.params["run_record"])
        rec = read_record(record_path)
        task_log = batch_dir / "logs" / f"{i}.out"
        status = str(rec.get("status", "")).lower() if rec else ""
        if status in OK_STATUSES:
            if status == "aborted":
                log.warning(f"job #{job['num']} aborted: {rec.get('reason')} ({record_path})")
            return self._job_return(job, JobStatus.COMPLETED, record_return_value(rec))
        why = {
            "timeout": "still unfinished when the launcher's wait_timeout_s ran out",
            "killed": "the scheduler no longer lists the job but the task never finished (killed: qdel, "
            "walltime, memory or node failure)",
            "exit": "python exited without a terminal run record",
            "record": "the run record says it failed",
        }.get(outcome, outcome)
        sig = batch_dir / "status" / f"{i}.signal"
        extra = f"; stopped by SIG{sig.read_text().strip()}" if sig.exists() else ""
        code = batch_dir / "status" / f"{i}.exit"
        extra += f"; exit code {code.read_text().strip()}" if code.exists() else ""
        reason = f" ({rec.get('reason')})" if rec and rec.get("reason") else ""
        msg = f"job #{job['num']} in {job['job_dir']}: {why}{reason}{extra}; log: {task_log}"
        log.error(msg)
        return self._job_return(job, JobStatus.FAILED, RuntimeError(msg))


# ---------------------------------------------------------------------- helpers (pure, tested)
def parse_qstat_states(out: str) -> list[str]:
    """Job states from qstat's default table (Torque, PBS Pro and the SLURM wrapper share its shape).

    Rows follow a '----' separator line; the state is the second-to-last column ("S").
    """
    states: list[str] = []
    seen_sep = False
    for line in out.splitlines():
        if line.startswith("---"):
            seen_sep = True
            continue
        cols = line.split()
        if seen_sep and len(cols) >= 3:
            states.append(cols[-2])
    return states


def read_record(path: Path) -> dict[str, Any] | None:
    """The run record, or None while it is missing or half-written (records are written atomically,
    but a shared filesystem may still show a partial file for a moment)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_return_value(rec: dict[str, Any]) -> Any:
    """What the sweeper gets back: the optimized metric's value when the record names it, else None.

    calib_seg.train returns the value of ``optimized_metric`` (e.g. val/r2); the record carries the
    name and the metrics, so an Optuna-style sweeper sees the same number over PBS as locally.
    """
    for key in ("return_value", "optimized_value"):
        if key in rec:
            return rec[key]
    name, metrics = rec.get("optimized_metric"), rec.get("metrics")
    if isinstance(name, str) and isinstance(metrics, dict):
        return metrics.get(name)
    return None


def _quote_value(value: str) -> str:
    """Quote a path for Hydra's override grammar when it holds characters the grammar would parse
    (e.g. '=' and ',' from override_dirname, brackets from list overrides)."""
    if re.fullmatch(r"[A-Za-z0-9_./:+-]+", value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


__all__ = ["PBSLauncher", "parse_qstat_states", "read_record", "record_return_value"]
