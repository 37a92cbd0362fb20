"""Fixtures shared by more than one test module (and the CI rule for resource skips); helpers live in ``helpers/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from helpers.configs import TINY_BEADS, compose_run_cfg
from helpers.paths import REPO, SHARED
from helpers.slurm import SITE_VARS, SLURM_UP_TIMEOUT_S, STATE_DIR, can_admin, sinfo_state

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: fixtures whose skip means "this machine lacks the resource": fine on a laptop, a failure in CI (which runs as
#: root, can bring up SLURM, and has ../shared beside the clone), where a skip would hide an untested claim
REQUIRED_IN_CI = {
    "slurm_cluster": "a real one-node SLURM cluster (scripts/slurm-local-up)",
    "shared_dir": f"the shared data folder {SHARED}",
}


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but empty/0/false/no (CI platforms set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a skip of a test that needs SLURM or ../shared is reported as a failure, with the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and call.excinfo is not None):
        return
    if not call.excinfo.errisinstance(pytest.skip.Exception):  # xfail and friends are not resource skips
        return
    needed = [REQUIRED_IN_CI[f] for f in REQUIRED_IN_CI if f in getattr(item, "fixturenames", ())]
    if needed:
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI (CI={os.environ.get('CI')!r}) although CI must run it; it needs "
                           f"{' and '.join(needed)}. Skip reason: {call.excinfo.value}")


@pytest.fixture
def run_cfg(tmp_path):
    """Factory: ``run_cfg(overrides)`` -> composed config writing into tmp_path/run."""

    def make(overrides: Sequence[str] = ()) -> DictConfig:
        return compose_run_cfg(list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def shared_dir():
    """../shared beside the repository (real Lucchi slices, seed reports); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (it sits beside the repository on the team's machines)")
    return SHARED


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch tiny density run with TensorBoard: (config, record)."""
    from calib_seg.train import run

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_run_cfg([*TINY_BEADS, "logger=tensorboard", "trainer.max_epochs=2"], out)
    record = run(cfg)
    yield cfg, record
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running local SLURM cluster; brought up here (and down afterwards) if the machine allows it."""
    if os.environ.get("CALIB_SEG_SKIP_SLURM"):
        pytest.skip("CALIB_SEG_SKIP_SLURM is set")
    if not sys.platform.startswith("linux"):
        pytest.skip("local SLURM cluster needs Linux (Debian/Ubuntu packages)")
    started = False
    if can_admin() and (shutil.which("apt-get") or shutil.which("slurmctld")):
        try:
            up = subprocess.run(
                [str(REPO / "scripts" / "slurm-local-up")],
                capture_output=True,
                text=True,
                timeout=SLURM_UP_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/slurm-local-up did not finish within {SLURM_UP_TIMEOUT_S}s")
        if up.returncode != 0:
            if "apt-get" in up.stderr or "install" in up.stderr:
                pytest.skip(f"cannot install slurm-wlm/munge here: {up.stderr.strip()[-300:]}")
            pytest.fail(f"scripts/slurm-local-up failed:\n{up.stdout}\n{up.stderr}")
        started = "started slurmctld" in up.stdout or "started slurmd" in up.stdout
    elif sinfo_state() not in ("idle", "mix", "alloc"):
        pytest.skip("no SLURM cluster answering sinfo, and no root/sudo + apt-get to start one")
    assert sinfo_state() in ("idle", "mix", "alloc"), "SLURM node not usable after slurm-local-up"
    # the sacct stand-in first on PATH: without accounting, submitit would never learn that a job died
    env = {**os.environ, "PATH": f"{STATE_DIR / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for var in SITE_VARS:
        env.pop(var, None)
    yield env
    if started:
        subprocess.run([str(REPO / "scripts" / "slurm-local-down")], capture_output=True, timeout=120)
