"""The PBS launcher plugin (hydra/launcher=pbs) without a PBS server: rendered scripts for both dialects,
the overrides file, dry runs and full submit/wait cycles through a fake qsub/qstat, on a tiny Hydra app
written into tmp_path (fast: no torch import in the app). The same launcher against a real scheduler
(Debian's qsub wrappers over a local SLURM) is in test_slurm_real.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.paths import REPO
from hydra_plugins.calib_seg_pbs_launcher.pbs_launcher import (
    parse_qstat_states,
    record_return_value,
)
from hydra_plugins.calib_seg_pbs_launcher.script import (
    Resources,
    overrides_line,
    render_script,
    sanitize_job_name,
)

TINY_APP = '''
"""Tiny Hydra app standing in for calib_seg.train: writes run.json like it does, imports no torch."""
import json, os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    time.sleep(float(cfg.sleep))
    rec = {"status": "failed" if cfg.fail else "completed", "reason": "asked to fail" if cfg.fail else None,
           "optimized_metric": "val/score", "metrics": {"val/score": 2.0 * float(cfg.x)},
           "provenance": {"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "pbs_job_id": os.environ.get("PBS_JOBID"),
                          "job_num": HydraConfig.get().job.num, "mode": str(HydraConfig.get().mode)}}
    (out / "run.json").write_text(json.dumps(rec))
    if cfg.fail:
        raise RuntimeError("asked to fail")
    return rec["metrics"]["val/score"]

if __name__ == "__main__":
    main()
'''

TINY_CONFIG = """
x: 1
fail: false
sleep: 0
hydra:
  sweep:
    dir: multirun/sweep
    subdir: ${hydra.job.num}_${hydra.job.override_dirname}
"""

# Fake scheduler: qsub runs every array task of the script in the background (detached, so qsub returns
# at once like a real one) and remembers their pids; qstat lists the job while any task is alive and
# answers like a PBS server that has forgotten it afterwards. FAKE_QSUB_MODE=drop accepts the job and
# runs nothing (a job killed before it could write anything).
FAKE_QSUB = r"""#!/bin/bash
script="${@: -1}"
state="$FAKE_PBS_DIR"; mkdir -p "$state"; : >"$state/pids"
last=$(grep -oE '^#PBS -[Jt] 0-[0-9]+' "$script" | grep -oE '[0-9]+$' || echo 0)
if [ "${FAKE_QSUB_MODE:-run}" = run ]; then
  for i in $(seq 0 "$last"); do
    PBS_ARRAY_INDEX=$i PBS_JOBID="42[$i].fake" bash "$script" </dev/null >/dev/null 2>&1 &
    echo $! >>"$state/pids"
  done
fi
echo "42[].fake"
"""
FAKE_QSTAT = r"""#!/bin/bash
for p in $(cat "$FAKE_PBS_DIR/pids" 2>/dev/null); do
  if kill -0 "$p" 2>/dev/null; then
    printf 'Job id            Name             User              Time Use S Queue\n'
    printf -- '----------------  ---------------- ----------------  -------- - -----\n'
    printf '42[].fake         tinyapp          me                00:00:01 B workq\n'
    exit 0
  fi
done
echo "qstat: Unknown Job Id $1" >&2
exit 153
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    (tmp_path / "conf" / "config.yaml").write_text(TINY_CONFIG)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("qsub", FAKE_QSUB), ("qstat", FAKE_QSTAT), ("qdel", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run_app(app: Path, *overrides: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the tiny app as a multirun with the PBS launcher and the fake scheduler first on PATH."""
    full_env = {
        **os.environ,
        "PATH": f"{app / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_PBS_DIR": str(app / "fakepbs"),
        **env,
    }
    cmd = [
        sys.executable,
        "-m",
        "tinyapp",
        "-m",
        "hydra/launcher=calib_seg_pbs",
        "hydra.launcher.app_module=tinyapp",
        "hydra.launcher.poll_interval_s=0.2",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=app, env=full_env, capture_output=True, text=True, timeout=timeout)


def batch(app: Path) -> Path:
    return app / "multirun" / "sweep" / ".pbs" / "batch_0000"


def records(app: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (app / "multirun" / "sweep").glob("*/run.json")}


# ------------------------------------------------------------------ rendering (pure)
def render(dialect: str, n: int = 3, **kw) -> str:
    res = Resources(
        dialect=dialect,
        job_name="train",
        queue="gpuq",
        account="proj42",
        nodes=1,
        ncpus=8,
        ngpus=2,
        mem="32gb",
        walltime="12:00:00",
        **kw,
    )
    return render_script(
        n_tasks=n,
        res=res,
        batch_dir="/s/.pbs/batch_0000",
        workdir="/home/me/proj",
        python="/venv/bin/python",
        app_module="calib_seg.train",
        setup=["module load cuda"],
    )


def test_pbspro_script_is_one_J_array_with_select_chunk_and_array_index():
    s = render("pbspro")
    assert "#PBS -J 0-2" in s and "#PBS -t" not in s
    assert "#PBS -l select=1:ncpus=8:ngpus=2:mem=32gb" in s
    assert "#PBS -l walltime=12:00:00" in s
    assert "#PBS -q gpuq" in s and "#PBS -A proj42" in s and "#PBS -N train" in s
    assert "#PBS -r y" in s and "#PBS -V" in s
    assert "IDX=${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}}" in s
    assert '/venv/bin/python -m calib_seg.train "$@" &' in s
    # setup runs after cd into the submit folder and before python
    assert s.index("cd /home/me/proj") < s.index("module load cuda") < s.index("-m calib_seg.train")


def test_torque_script_is_one_t_array_with_nodes_ppn_gpus_and_job_mem():
    s = render("torque", array_parallelism=4)
    assert "#PBS -t 0-2%4" in s and "#PBS -J" not in s
    assert "#PBS -l nodes=1:ppn=8:gpus=2" in s
    assert "#PBS -l mem=32gb" in s
    assert "select=" not in s


def test_pbspro_array_parallelism_uses_max_run_subjobs():
    assert "#PBS -W max_run_subjobs=5" in render("pbspro", array_parallelism=5)


def test_single_job_sweep_is_submitted_as_a_plain_job():
    for dialect in ("pbspro", "torque"):
        s = render(dialect, n=1)
        assert "#PBS -J" not in s and "#PBS -t" not in s


def test_zero_gpus_and_no_mem_leave_them_out_of_the_request():
    res = Resources(dialect="pbspro", ncpus=2, ngpus=0, mem=None)
    s = render_script(n_tasks=2, res=res, batch_dir="/b", workdir="/w", python="py", app_module="m")
    assert "#PBS -l select=1:ncpus=2\n" in s


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(dialect="slurm"), r"dialect must be one of .*, got 'slurm'"),
        (dict(walltime="4h"), r"walltime must look like HH:MM:SS, got '4h'"),
        (dict(ncpus=0), r"ncpus must be >= 1, got 0"),
        (dict(ngpus=-1), r"ngpus must be >= 0, got -1"),
        (dict(mem="lots"), r"mem must look like 16gb or 4000mb, got 'lots'"),
        (dict(array_parallelism=0), r"array_parallelism must be >= 1 or null, got 0"),
    ],
)
def test_invalid_resources_fail_before_anything_is_submitted(bad, match):
    with pytest.raises(ValueError, match=match):
        Resources(**bad)


def test_job_names_are_made_acceptable_to_both_flavours():
    assert sanitize_job_name("0_model.lr=1e-3", "pbspro") == "j0_model.lr_1e-3"
    assert len(sanitize_job_name("a" * 40, "torque")) == 15
    assert sanitize_job_name("a b/c", "pbspro") == "a_b_c"


def test_overrides_line_round_trips_through_the_scripts_eval(tmp_path):
    args = [
        "--config-name",
        "train",
        "model.filters=[16,32,64]",
        "name='it''s'",
        "tag=a b",
        "x=$HOME",
        "hydra.run.dir='/s/0_model.filters=[16,32,64]'",
    ]
    (tmp_path / "overrides.txt").write_text("first line\n" + overrides_line(args) + "\n")
    # the same three steps as the job script: pick the line, eval it back into "$@"
    snippet = 'LINE=$(sed -n "2p" overrides.txt); eval "set -- $LINE"; printf "%s\\n" "$@"'
    out = subprocess.run(
        ["bash", "-c", snippet], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == args


def test_qstat_tables_of_pbspro_torque_and_the_slurm_wrapper_parse_to_states():
    wrapper = (
        "Job id              Name             Username        Time Use S Queue\n"
        "------------------- ---------------- --------------- -------- - ---------------\n"
        "8                   tinyapp          root            00:00:00 C debug\n"
        "10                  tinyapp          root            00:00:01 R debug\n"
    )
    assert parse_qstat_states(wrapper) == ["C", "R"]
    pbspro = (
        "Job id            Name             User              Time Use S Queue\n"
        "----------------  ---------------- ----------------  -------- - -----\n"
        "1234[].server     train            me                       0 B workq\n"
    )
    assert parse_qstat_states(pbspro) == ["B"]
    assert parse_qstat_states("") == []


def test_sweeper_gets_the_optimized_metric_from_the_run_record():
    rec = {"status": "completed", "optimized_metric": "val/r2", "metrics": {"val/r2": 0.93, "val/mae": 4.0}}
    assert record_return_value(rec) == 0.93
    assert record_return_value({"status": "aborted", "metrics": {}}) is None


# ------------------------------------------------------------------ through Hydra (subprocess)
def test_dry_run_writes_one_array_script_and_job_folders_named_like_the_basic_launcher(app: Path):
    r = run_app(app, "x=1,2,3", "hydra.launcher.dry_run=true", "hydra.launcher.queue=workq")
    assert r.returncode == 0, r.stderr
    b = batch(app)
    script = (b / "job.pbs").read_text()
    assert script.count("#PBS -J 0-2") == 1 and "#PBS -q workq" in script
    lines = (b / "overrides.txt").read_text().splitlines()
    assert len(lines) == 3 and all("hydra.mode=RUN" in ln for ln in lines)
    assert not (app / "fakepbs" / "pids").exists(), "dry run must not call qsub"
    planned = sorted(Path(j["job_dir"]).name for j in json.loads((b / "jobs.json").read_text()))

    basic = subprocess.run(
        [sys.executable, "-m", "tinyapp", "-m", "x=1,2,3", "hydra.sweep.dir=basic"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert basic.returncode == 0, basic.stderr
    assert planned == sorted(p.name for p in (app / "basic").iterdir() if p.is_dir())


def test_rendered_task_runs_its_own_line_into_its_own_folder(app: Path):
    assert run_app(app, "x=1,2", "hydra.launcher.dry_run=true").returncode == 0
    b = batch(app)
    for var in ("PBS_ARRAY_INDEX", "PBS_ARRAYID"):  # pbspro and torque name the index differently
        env = {**os.environ, var: "1"}
        subprocess.run(["bash", str(b / "job.pbs")], env=env, timeout=60, check=True)
        assert (b / "status" / "1.exit").read_text().strip() == "0"
    recs = records(app)
    assert list(recs) == ["1_x=2"]
    assert (
        recs["1_x=2"]["provenance"]["job_num"] == 1 and recs["1_x=2"]["provenance"]["mode"] == "RunMode.RUN"
    )


def test_wait_returns_results_from_each_jobs_run_record(app: Path):
    r = run_app(app, "x=1,2", "hydra.launcher.grace_s=1", "hydra.launcher.wait_timeout_s=60")
    assert r.returncode == 0, r.stderr
    recs = records(app)
    assert sorted(recs) == ["0_x=1", "1_x=2"]
    assert {k: v["provenance"]["pbs_job_id"] for k, v in recs.items()} == {
        "0_x=1": "42[0].fake",
        "1_x=2": "42[1].fake",
    }
    assert (batch(app) / "job_id").read_text().strip() == "42[].fake"


def test_failed_job_is_reported_with_its_log_after_the_others_finish(app: Path):
    r = run_app(app, "fail=false,true", "hydra.launcher.grace_s=1", "hydra.launcher.wait_timeout_s=60")
    assert r.returncode != 0
    assert "the run record says it failed (asked to fail)" in r.stderr
    assert str(batch(app) / "logs" / "1.out") in r.stderr
    assert records(app)["0_fail=False"]["status"] == "completed"


def test_job_killed_without_a_trace_ends_the_wait_instead_of_hanging(app: Path):
    r = run_app(
        app,
        "x=1,2",
        "hydra.launcher.grace_s=0.5",
        "hydra.launcher.wait_timeout_s=60",
        FAKE_QSUB_MODE="drop",
        timeout=30,
    )
    assert r.returncode != 0
    assert "scheduler no longer lists the job" in r.stderr


def test_wait_is_bounded_by_wait_timeout_s(app: Path):
    r = run_app(app, "x=1", "sleep=5", "hydra.launcher.wait_timeout_s=1", timeout=30)
    assert r.returncode != 0
    assert "wait_timeout_s ran out" in r.stderr


# ------------------------------------------------------------------ the project's launcher configs
LAUNCHER_ENV = (
    "CALIB_SEG_SLURM_PARTITION",
    "CALIB_SEG_SLURM_ACCOUNT",
    "CALIB_SEG_SLURM_GPUS",
    "CALIB_SEG_PBS_QUEUE",
    "CALIB_SEG_PBS_DIALECT",
    "CALIB_SEG_PBS_GPUS",
)


def compose_launcher(tmp_path: Path, name: str):
    """hydra.launcher as composed from conf/hydra/launcher/<name>.yaml (primary config kept trivial so
    only the launcher files are under test)."""
    from hydra import compose, initialize_config_dir

    (tmp_path / "primary.yaml").write_text(
        textwrap.dedent(f"""\
        x: 1
        hydra:
          searchpath: [file://{REPO / "conf"}]
        """)
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("primary", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return cfg.hydra.launcher


def test_launcher_configs_compose_with_site_settings_from_the_environment(tmp_path, monkeypatch):
    for var in LAUNCHER_ENV:
        monkeypatch.delenv(var, raising=False)
    assert compose_launcher(tmp_path, "local")._target_.endswith("BasicLauncher")
    assert compose_launcher(tmp_path, "submitit_local")._target_.endswith("LocalLauncher")

    slurm = compose_launcher(tmp_path, "slurm")
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.partition is None and slurm.account is None and slurm.gpus_per_node == 1
    assert slurm.max_num_timeout > 0 and slurm.timeout_min > slurm.signal_delay_s / 60
    pbs = compose_launcher(tmp_path, "pbs")
    assert pbs._target_.endswith("PBSLauncher") and pbs.dialect == "pbspro" and pbs.queue is None

    monkeypatch.setenv("CALIB_SEG_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("CALIB_SEG_SLURM_ACCOUNT", "proj42")
    monkeypatch.setenv("CALIB_SEG_SLURM_GPUS", "0")
    monkeypatch.setenv("CALIB_SEG_PBS_DIALECT", "torque")
    monkeypatch.setenv("CALIB_SEG_PBS_QUEUE", "batch")
    slurm = compose_launcher(tmp_path, "slurm")
    assert (slurm.partition, slurm.account, slurm.gpus_per_node) == ("gpu", "proj42", 0)
    pbs = compose_launcher(tmp_path, "pbs")
    assert (pbs.dialect, pbs.queue) == ("torque", "batch")


def test_launcher_yamls_start_with_package_header_then_a_usage_comment():
    # Hydra reads '# @package' only from the leading '# @' lines: a description line above it would
    # silently drop the directive
    for path in sorted((REPO / "conf" / "hydra" / "launcher").glob("*.yaml")):
        first, second = path.read_text().splitlines()[:2]
        assert first == "# @package hydra.launcher", path
        assert second.startswith("# ") and f"hydra/launcher={path.stem}" in second, path
