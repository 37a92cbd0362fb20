"""Sweeps through a real scheduler: a single-node SLURM cluster brought up by scripts/slurm-local-up.

Runs when the machine allows it (root or passwordless sudo with apt-get or SLURM already installed, or a
SLURM cluster already answering ``sinfo``) and is skipped with the reason otherwise; set
CALIB_SEG_SKIP_SLURM=1 to skip on purpose. Every wait is bounded: bring-up by SLURM_UP_TIMEOUT_S, each
sweep by SWEEP_TIMEOUT_S, and the launchers themselves never wait forever on a killed job (the cancel
tests, marked slow, prove that).

- ``hydra/launcher=slurm`` (hydra-submitit-launcher, the project's conf/hydra/launcher/slurm.yaml):
  2-job sweep of the real ``calib_seg.train`` at toy size, one SLURM job array.
- ``hydra/launcher=pbs`` (our plugin) through Debian's slurm-wlm-torque ``qsub``/``qstat`` wrappers over
  the same cluster: the PBS Pro script the plugin writes is accepted as is (sbatch reads the ``#PBS``
  lines: -N, -J/-t arrays, select/ncpus/mem, walltime, -q, -A, -r). What it does not honour is listed in
  docs/cluster.md (ngpus in select, max_run_subjobs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.paths import REPO

SWEEP_TIMEOUT_S = 170

# calib_seg.train at toy size: one epoch on a few tiny synthetic images (~15 s per job, mostly imports)
TOY_TRAIN = [
    "data=beads_synth",
    "trainer.max_epochs=1",
    "data.source.n_per_level=4",
    "data.source.physics.image_size=64",
    "data.batch_size=8",
    # these tests check the launchers: a 1-epoch model on 44 images is no result (test R² ~0.03), and the final
    # check would record every job aborted
    "callbacks.guard.final_r2_min=null",
]

TINY_APP = '''
"""Tiny Hydra app (no torch) for the cancel tests: writes run.json like calib_seg.train."""
import json, os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    time.sleep(float(cfg.get("sleep", 0)))
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "run.json").write_text(json.dumps({"status": "completed",
        "provenance": {"slurm_job_id": os.environ.get("SLURM_JOB_ID")}}))

if __name__ == "__main__":
    main()
'''


def sweep(
    env: dict, cwd: Path, *args: str, timeout: float = SWEEP_TIMEOUT_S
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"sweep did not return within {timeout}s: {args}\n{e.stdout}\n{e.stderr}")
    return r, time.monotonic() - t0


def job_records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


def test_two_job_sweep_through_real_slurm_completes_and_records_slurm_job_ids(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    r, wall = sweep(
        slurm_cluster,
        tmp_path,
        "calib_seg.train",
        "-m",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep_dir}",
        *TOY_TRAIN,
        "seed=1,2",
        # toy job on a 2-core, GPU-less node; timeout_min stays above submitit's 2-minute USR2 warning
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=5",
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    recs = job_records(sweep_dir)
    assert len(recs) == 2, f"expected 2 job folders with run.json in {sweep_dir}, got {list(recs)}"
    for name, rec in recs.items():
        assert rec["status"] == "completed", (name, rec.get("reason"))
        assert str(rec["provenance"]["slurm_job_id"]).isdigit(), (name, rec["provenance"])
    ids = {rec["provenance"]["slurm_job_id"] for rec in recs.values()}
    arrays = {rec["provenance"].get("slurm_array_job_id") for rec in recs.values()}
    assert len(ids) == 2, f"one SLURM job per sweep member, got {ids}"
    assert None not in arrays and len(arrays) == 1, f"one SLURM array for the sweep, got {arrays}"
    print(f"real SLURM 2-job sweep: {wall:.1f}s, job ids {sorted(ids)}, array {arrays}")


def test_pbs_launcher_sweep_runs_through_the_torque_qsub_wrappers_on_real_slurm(slurm_cluster, tmp_path):
    if (
        not Path("/usr/bin/qsub").exists()
        or "slurm" not in Path("/usr/bin/qsub").read_text(errors="ignore")[:4000].lower()
    ):
        pytest.skip("Debian's slurm-wlm-torque qsub wrapper is not installed")
    sweep_dir = tmp_path / "sweep"
    r, wall = sweep(
        slurm_cluster,
        tmp_path,
        "calib_seg.train",
        "-m",
        "hydra/launcher=pbs",
        f"hydra.sweep.dir={sweep_dir}",
        *TOY_TRAIN,
        "seed=1,2",
        "hydra.launcher.ngpus=0",
        "hydra.launcher.ncpus=1",
        "hydra.launcher.mem=2gb",
        "hydra.launcher.walltime=00:10:00",
        "hydra.launcher.poll_interval_s=2",
        "hydra.launcher.grace_s=10",
        "hydra.launcher.wait_timeout_s=150",
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    script = (sweep_dir / ".pbs" / "batch_0000" / "job.pbs").read_text()
    assert "#PBS -J 0-1" in script and "#PBS -l select=1:ncpus=1:mem=2gb" in script
    recs = job_records(sweep_dir)
    assert len(recs) == 2, list(recs)
    for name, rec in recs.items():
        assert rec["status"] == "completed", (name, rec.get("reason"))
        assert str(rec["provenance"]["slurm_job_id"]).isdigit(), (name, rec["provenance"])
    print(
        f"PBS (pbspro script) via torque wrappers: {wall:.1f}s, "
        f"job ids {sorted(rec['provenance']['slurm_job_id'] for rec in recs.values())}"
    )


def _cancel_array_when_running(squeue_name: str, limit_s: float = 60) -> str:
    """scancel the whole array (%F = array job id) as soon as one of its tasks runs."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-n", squeue_name, "-t", "R", "-o", "%F"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        if out:
            subprocess.run(["scancel", out[0]], timeout=15, check=True)
            return out[0]
        time.sleep(0.5)
    pytest.fail(f"no running job named {squeue_name} within {limit_s}s")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["slurm", "pbs"])
def test_cancelled_job_ends_the_sweep_instead_of_hanging_it(slurm_cluster, tmp_path, launcher):
    if launcher == "pbs" and not Path("/usr/bin/qsub").exists():
        pytest.skip("Debian's slurm-wlm-torque qsub wrapper is not installed")
    (tmp_path / "cancelme.py").write_text(TINY_APP)
    common = [
        "cancelme",
        "-m",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "+sleep=300,301",
        f"hydra.searchpath=[file://{REPO / 'conf'}]",
        f"hydra/launcher={launcher}",
    ]
    if launcher == "slurm":
        extra = [
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10",
        ]
    else:
        extra = [
            "hydra.launcher.app_module=cancelme",
            "hydra.launcher.ngpus=0",
            "hydra.launcher.ncpus=1",
            "hydra.launcher.mem=1gb",
            "hydra.launcher.poll_interval_s=1",
            "hydra.launcher.grace_s=5",
        ]
    proc = subprocess.Popen(
        [sys.executable, "-m", *common, *extra],
        cwd=tmp_path,
        env=slurm_cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _cancel_array_when_running("cancelme")
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    except BaseException:
        proc.kill()
        subprocess.run(["scancel", "-n", "cancelme"], timeout=15)
        raise
    finally:
        subprocess.run(["scancel", "-n", "cancelme"], timeout=15)
    assert proc.returncode != 0, out[-2000:]
    print(f"{launcher}: sweep returned {time.monotonic() - t0:.1f}s after scancel")
