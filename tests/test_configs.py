"""Every YAML in conf/ composes into a valid run config and starts with its one-line description.

Parametrised over the files on disk, so a new config file is tested the moment it is added.
"""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

from calib_seg.config import CONF_DIR, compose
from calib_seg.validation import problems_in

CONFIGS = sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml"))

# groups that only make sense together with the segmentation task (validation refuses a density model on EM)
SEG = ["task=segmentation", "model=unet", "data=mito_synth", "optimized_metric=val/jaccard", "task_name=mito"]
SEG_OPTIONS = {"data/mito_synth", "data/mito_epfl", "data/mito_folder", "task/segmentation", "model/unet",
               "model/attention_unet", "model/attention_resunet", "model/smp"}


def _compose(overrides: list[str], config_name: str = "train", hydra: bool = False):
    GlobalHydra.instance().clear()
    try:
        return compose(overrides, config_name=config_name, return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def overrides_for(rel: str) -> list[str]:
    """The command line that selects ``conf/<rel>`` (plus the groups it needs to form a valid run)."""
    group, _, name = rel.removesuffix(".yaml").rpartition("/")
    if not group:  # train/evaluate/predict: primary configs, composed by name
        return []
    choice = f"{group}={name}"
    if f"{group}/{name}" in SEG_OPTIONS:
        base = [o for o in SEG if o.split("=")[0] != group]
        return [*base, choice]
    return [choice]


def test_every_config_group_folder_is_covered():
    groups = {c.rpartition("/")[0] for c in CONFIGS}
    assert groups >= {"data", "model", "task", "trainer", "callbacks", "logger", "paths", "hydra",
                      "hydra/launcher", "experiment", "hparams_search", ""}, groups
    assert len(CONFIGS) >= 40, CONFIGS


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_file_starts_with_a_one_line_description(rel):
    lines = (CONF_DIR / rel).read_text().splitlines()
    # Hydra reads a package header only on the leading lines, so it comes first and the description second
    first = 1 if lines and lines[0].startswith("# @package") else 0
    assert len(lines) > first, f"{rel} is empty"
    line = lines[first]
    assert line.startswith("# ") and not line.startswith("# @"), f"{rel} line {first + 1}: {line!r}"
    assert len(line) > 25, f"{rel} line {first + 1} says too little about what the file is for: {line!r}"
    assert all(not ln.startswith("# @package") for ln in lines[first + 1:]), f"{rel}: package header not on line 1"


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_file_composes_and_validates(rel):
    group = rel.rpartition("/")[0]
    if not group:
        name = rel.removesuffix(".yaml")
        cfg = _compose([], config_name=name)
        assert problems_in(cfg) == [], (rel, problems_in(cfg))
        return
    overrides = overrides_for(rel)
    cfg = _compose(overrides, hydra=group.startswith("hydra") or group == "hparams_search")
    assert problems_in(cfg) == [], (rel, overrides, problems_in(cfg))
    if group == "hydra/launcher":
        assert get_class(cfg.hydra.launcher._target_), rel  # the launcher plugin is installed and importable
    if group == "hparams_search":
        params = cfg.hydra.sweeper.params
        assert params, f"{rel} sweeps nothing"
        plain = OmegaConf.to_container(cfg.copy(), resolve=False)
        for key, values in params.items():
            if "." in key:  # a value override: the key must exist in the composed config
                node = plain
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{rel}: sweeps unknown key {key}"
                    node = node[part]
            else:  # a group choice: every option must be a file of that group
                for option in str(values).split(","):
                    assert (CONF_DIR / key / f"{option.strip()}.yaml").exists(), f"{rel}: {key}={option}"
    if group == "experiment":
        assert cfg.optimized_metric in ("val/r2", "val/jaccard"), rel
        seg = cfg.task._target_.endswith("SegmentationTask")
        assert (cfg.optimized_metric == "val/jaccard") == seg, f"{rel}: optimized_metric {cfg.optimized_metric}"
