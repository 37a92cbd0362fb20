"""Pure rendering of the PBS array job script and its overrides file (no Hydra, no scheduler).

Kept free of side effects so the tests can check every directive of both dialects without a cluster.

Layout of one batch folder (``<sweep dir>/.pbs/batch_<first job num>/``)::

    job.pbs          the array script: task i runs line i+1 of overrides.txt
    overrides.txt    one line per task: the shell-quoted argument list of `python -m <app>`
    jobs.json        task index -> Hydra job num, job folder, overrides (read back by the launcher)
    logs/<i>.out     stdout+stderr of task i (written by the script itself: the Debian SLURM qsub
                     wrapper sends all tasks of an array to one scheduler log file)
    status/<i>.started  scheduler job id, written when task i starts
    status/<i>.exit     exit code of python, written when it returns (absent if the task was killed)
    status/<i>.signal   the signal that stopped task i (TERM on qdel, walltime, preemption)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

DIALECTS = ("pbspro", "torque")

# Array index variable of each dialect. The third is what a task sees under Debian's slurm-wlm-torque
# qsub wrapper (it submits to SLURM, which sets neither PBS variable).
INDEX_VARS = ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_ARRAY_TASK_ID")
JOB_ID_VARS = ("PBS_JOBID", "SLURM_JOB_ID")

_WALLTIME = re.compile(r"^(\d+:)?\d{1,2}:\d{2}(:\d{2})?$|^\d+$")
_MEM = re.compile(r"^\d+(\.\d+)?[kmgtp]?b?$", re.IGNORECASE)


@dataclass(frozen=True)
class Resources:
    """Resources of one array task, validated at the edge so a bad value fails before qsub."""

    dialect: str = "pbspro"
    job_name: str = "calib_seg"
    queue: str | None = None
    account: str | None = None
    nodes: int = 1
    ncpus: int = 1
    ngpus: int = 0
    mem: str | None = None
    walltime: str = "01:00:00"
    array_parallelism: int | None = None
    rerunnable: bool = True
    export_env: bool = True
    directives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {self.dialect!r}")
        for name in ("nodes", "ncpus"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.ngpus) < 0:
            raise ValueError(f"ngpus must be >= 0, got {self.ngpus!r}")
        if self.array_parallelism is not None and int(self.array_parallelism) < 1:
            raise ValueError(f"array_parallelism must be >= 1 or null, got {self.array_parallelism!r}")
        if not _WALLTIME.match(str(self.walltime)):
            raise ValueError(f"walltime must look like HH:MM:SS, got {self.walltime!r}")
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise ValueError(f"mem must look like 16gb or 4000mb, got {self.mem!r}")


def sanitize_job_name(name: str, dialect: str) -> str:
    """A job name both PBS flavours accept: starts with a letter, no spaces or shell metacharacters.

    Torque truncates names beyond 15 characters (older servers reject them), PBS Pro allows 236.
    """
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "job"
    if not clean[0].isalpha():
        clean = "j" + clean
    return clean[:15] if dialect == "torque" else clean[:236]


def array_directive(n_tasks: int, res: Resources) -> list[str]:
    """The array line for n_tasks tasks (indices 0..n-1), or nothing for a single task.

    A one-task sweep is submitted as a plain job (the script then falls back to index 0): PBS Pro
    refuses single-index arrays, and an array of one buys nothing.
    """
    if n_tasks < 1:
        raise ValueError(f"need at least one task, got {n_tasks}")
    if n_tasks == 1:
        return []
    rng = f"0-{n_tasks - 1}"
    if res.dialect == "pbspro":
        lines = [f"#PBS -J {rng}"]
        if res.array_parallelism:
            lines.append(f"#PBS -W max_run_subjobs={int(res.array_parallelism)}")
        return lines
    suffix = f"%{int(res.array_parallelism)}" if res.array_parallelism else ""
    return [f"#PBS -t {rng}{suffix}"]


def resource_directives(res: Resources) -> list[str]:
    """'#PBS -l' lines in the syntax of the dialect."""
    if res.dialect == "pbspro":
        chunk = f"select={int(res.nodes)}:ncpus={int(res.ncpus)}"
        if res.ngpus:
            chunk += f":ngpus={int(res.ngpus)}"
        if res.mem:
            chunk += f":mem={res.mem}"
        lines = [f"#PBS -l {chunk}"]
    else:
        nodes = f"nodes={int(res.nodes)}:ppn={int(res.ncpus)}"
        if res.ngpus:
            nodes += f":gpus={int(res.ngpus)}"
        lines = [f"#PBS -l {nodes}"]
        if res.mem:
            lines.append(f"#PBS -l mem={res.mem}")
    lines.append(f"#PBS -l walltime={res.walltime}")
    return lines


def overrides_line(args: Sequence[str]) -> str:
    """One line of overrides.txt: the argv of one task, shell-quoted (the script `eval`s it back)."""
    line = " ".join(shlex.quote(str(a)) for a in args)
    if "\n" in line:
        raise ValueError(f"an override contains a newline, cannot go on one line: {list(args)!r}")
    return line


def render_script(
    *,
    n_tasks: int,
    res: Resources,
    batch_dir: str,
    workdir: str,
    python: str,
    app_module: str,
    setup: Sequence[str] = (),
    header: str = "",
) -> str:
    """The array job script: maps the array index to one line of overrides.txt and runs the app.

    Python runs in the background with the shell waiting on it, so a TERM from qdel, the walltime
    limit or preemption reaches the shell's trap at once: the trap forwards it to python and records
    ``status/<i>.signal``. The launcher treats a signalled task as not finished while the scheduler
    still lists the job (it may be requeued) and as killed once it does not.
    """
    q = shlex.quote
    idx_expr = "${" + ":-${".join(INDEX_VARS) + ":-0" + "}" * len(INDEX_VARS)
    jid_expr = "${" + ":-${".join(JOB_ID_VARS) + ":-unknown" + "}" * len(JOB_ID_VARS)
    lines = ["#!/bin/bash"]
    if header:
        lines += [f"# {h}" if h else "#" for h in header.splitlines()]
    lines.append(f"#PBS -N {sanitize_job_name(res.job_name, res.dialect)}")
    lines += array_directive(n_tasks, res)
    lines += resource_directives(res)
    if res.queue:
        lines.append(f"#PBS -q {res.queue}")
    if res.account:
        lines.append(f"#PBS -A {res.account}")
    lines.append("#PBS -j oe")
    lines.append(f"#PBS -r {'y' if res.rerunnable else 'n'}")
    if res.export_env:
        lines.append("#PBS -V")
    lines += [f"#PBS {d}" for d in res.directives]
    lines += [
        "",
        "set -u",
        f"BATCH_DIR={q(batch_dir)}",
        f"IDX={idx_expr}",
        'mkdir -p "$BATCH_DIR/logs" "$BATCH_DIR/status"',
        'exec >>"$BATCH_DIR/logs/$IDX.out" 2>&1',
        'LINE=$(sed -n "$((IDX + 1))p" "$BATCH_DIR/overrides.txt")',
        'if [ -z "$LINE" ]; then',
        '  echo "no line $((IDX + 1)) in $BATCH_DIR/overrides.txt for array index $IDX" >&2',
        '  echo 2 >"$BATCH_DIR/status/$IDX.exit"; exit 2',
        "fi",
        f'echo "{jid_expr}" >"$BATCH_DIR/status/$IDX.started"',
        'rm -f "$BATCH_DIR/status/$IDX.exit" "$BATCH_DIR/status/$IDX.signal"  # a requeued task starts clean',
        f'echo "[pbs-task $IDX] job {jid_expr} on $(hostname) at $(date -Is)"',
        f"cd {q(workdir)} || exit 2",
    ]
    lines += list(setup)
    lines += [
        'eval "set -- $LINE"',
        f'{q(python)} -m {q(app_module)} "$@" &',
        "CHILD=$!",
        "on_signal() {",
        '  echo "$1" >"$BATCH_DIR/status/$IDX.signal"',
        '  kill -s "$1" "$CHILD" 2>/dev/null; wait "$CHILD"; exit 143',
        "}",
        "trap 'on_signal TERM' TERM",
        "trap 'on_signal INT' INT",
        'wait "$CHILD"',
        "RC=$?",
        'echo "$RC" >"$BATCH_DIR/status/$IDX.exit"',
        'echo "[pbs-task $IDX] python exited with $RC at $(date -Is)"',
        'exit "$RC"',
        "",
    ]
    return "\n".join(lines)
