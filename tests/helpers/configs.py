"""Tiny run overrides and the composers that build configs the way the entry points do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from calib_seg.config import compose, compose_for_run
from helpers.paths import REPO

# small, fast bead runs for tests (conf/debug/tiny_beads.yaml): 12 images per level at 64 px, 8 um/px (the seed FOV
# and physics), batch 16, a [8,16] CNN, 1 epoch, no logger or progress bar, 1 thread. Overrides after it still win.
TINY_BEADS = ["debug=tiny_beads"]


def compose_run_cfg(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The train config as Hydra would build it for a run whose output folder is ``output_dir``."""
    return compose_for_run(overrides, output_dir, job_id="test")


def compose_entry_cfg(config_name: str, overrides: list[str], out: Path) -> DictConfig:
    """Entry point ``config_name`` (e.g. ``evaluate``) composed with its Hydra config set, writing into ``out``."""
    GlobalHydra.instance().clear()
    cfg = compose(overrides, config_name=config_name, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.root_dir = str(REPO)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(REPO)
    HydraConfig.instance().set_config(cfg)
    return cfg
