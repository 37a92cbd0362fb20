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


def compose_for_run(overrides: Sequence[str], output_dir: str | Path, job_id: str = "inprocess") -> DictConfig:
    """The train config as the Hydra app would build it for a run writing into ``output_dir``.

    For driving :func:`calib_seg.train.run` in-process (tests, benchmarks): sets the runtime fields Hydra fills in
    and registers the config as the current HydraConfig, so ``${hydra:...}`` interpolations resolve.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    cfg = compose(list(overrides), return_hydra_config=True)
    root = CONF_DIR.parent
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(root)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(root)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = job_id
    HydraConfig.instance().set_config(cfg)
    return cfg
