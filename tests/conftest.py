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

# small, fast bead data for tests: 64 px at 8 um/px keeps the seed FOV (0.512 mm) and physics
TINY_BEADS = [
    "data.source.n_per_level=12",
    "data.source.physics.image_size=64",
    "data.source.physics.pixel_size_um=8.0",
    "data.source.physics.psf_sigma_um=4.0",
    "data.batch_size=16",
    "model.filters=[8,16]",
    "model.convs_per_stage=1",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    # tiny models gain nothing from a second thread, and lose a lot when the machine is shared (measured 18 s vs 30 s)
    "torch_threads=1",
]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
