"""Access to the project's Hydra configs outside a Hydra app (tools, tests, evaluate/predict)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from calib_seg import resolvers  # noqa: F401  (registers ${uniq:} etc.)

#: conf/ of the source tree (the package is installed editable from a clone: `make install`).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: Sequence[str] = (), config_name: str = "train", return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, as the train app would."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"config folder {CONF_DIR} not found: install calib_seg editable from a clone "
                                "(`make install`) so conf/ sits beside src/")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose(config_name=config_name, overrides=list(overrides),
                             return_hydra_config=return_hydra_config)
