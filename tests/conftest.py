"""Shared fixtures: compose the real configs with tiny sizes, and run training in-process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from calib_seg.config import compose_for_run

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# small, fast bead runs for tests (conf/debug/tiny_beads.yaml): 12 images per level at 64 px, 8 um/px (the seed FOV
# and physics), batch 16, a [8,16] CNN, 1 epoch, no logger or progress bar, 1 thread. Overrides after it still win.
TINY_BEADS = ["debug=tiny_beads"]

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


def compose_run_cfg(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The train config as Hydra would build it for a run whose output folder is ``output_dir``."""
    return compose_for_run(overrides, output_dir, job_id="test")


@pytest.fixture
def run_cfg(tmp_path):
    """Factory: ``run_cfg(overrides)`` -> composed config writing into tmp_path/run."""

    def make(overrides: Sequence[str] = ()) -> DictConfig:
        return compose_run_cfg(list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the repository (real Lucchi slices, seed reports); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (it sits beside the repository on the team's machines)")
    return SHARED
