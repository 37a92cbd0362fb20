"""Structured config of the grid sweeper, registered as ``hydra/sweeper: calib_seg_basic``."""

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035  (OmegaConf structured configs read typing generics)

from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class CalibSegBasicSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.calib_seg_basic_sweeper.sweeper.CalibSegBasicSweeper"
    # set by the sweeper for each job (the keys the grid varies, in grid order); names the job folder
    swept_keys: Optional[List[str]] = field(default=None)  # noqa: UP006, UP045


ConfigStore.instance().store(group="hydra/sweeper", name="calib_seg_basic", node=CalibSegBasicSweeperConf,
                             provider="calib_seg")
