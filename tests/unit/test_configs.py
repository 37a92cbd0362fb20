"""Every YAML in conf/ composes into a valid run config and starts with its one-line description.

Parametrised over the files on disk, so a new config file is tested the moment it is added.
"""

from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import OmegaConf

from calib_seg.config import CONF_DIR, compose
from calib_seg.validation import problems_in

CONFIGS = sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml"))

# groups that only make sense together with the segmentation task (validation refuses a density model on EM)
SEG = ["task=segmentation", "model=unet", "data=mito_synth", "optimized_metric=val/jaccard", "task_name=mito"]
SEG_OPTIONS = {"data/mito_synth", "data/mito_epfl", "data/mito_folder", "task/segmentation", "model/unet",
               "model/attention_unet", "model/attention_resunet", "model/smp", "debug/tiny_mito",
               "task/scheduler/plateau", "task/scheduler/one_cycle"}
# base presets: shared settings other presets extend (`defaults: [- <base>]`); never selected by a documented command
BASES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*_base.yaml"))
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem not in BASES)
CALLBACKS = sorted(p.stem for p in (CONF_DIR / "callbacks").glob("*.yaml") if p.stem not in ("default", "none"))
OPT_IN_CALLBACKS = ["optuna_pruning"]  # added by the searches that need them, not by callbacks/default.yaml


def _compose(overrides: list[str], config_name: str = "train", hydra: bool = False):
    GlobalHydra.instance().clear()
    try:
        return compose(overrides, config_name=config_name, return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


#: options that only form a valid run with the density-map model
MAP_OPTIONS = {"data/point_folder", "task/density_map"}


def overrides_for(rel: str) -> list[str]:
    """The command line that selects ``conf/<rel>`` (plus the groups it needs to form a valid run)."""
    group, _, name = rel.removesuffix(".yaml").rpartition("/")
    if not group:  # train/evaluate/predict: primary configs, composed by name
        return []
    if group == "study":  # study configs (calib_seg.study) are no group of the train config: added, not chosen
        return [f"+study={name}"]
    choice = f"{group}={name}"
    if f"{group}/{name}" in MAP_OPTIONS:  # density-map data and task: with the model that selects that task
        return [choice, "model=density_map"]
    if f"{group}/{name}" in SEG_OPTIONS:
        base = [o for o in SEG if o.split("=")[0] != group]
        return [*base, choice]
    return [choice]


def test_every_config_group_folder_is_covered():
    groups = {c.rpartition("/")[0] for c in CONFIGS}
    assert groups >= {"data", "model", "task", "trainer", "callbacks", "logger", "paths", "hydra",
                      "hydra/launcher", "experiment", "hparams_search", "debug", "study", ""}, groups
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
    if rel.endswith("_optuna.yaml"):  # hydra/sweeper=calib_seg_optuna exists only with the hpo extra
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the hpo extra is not installed")
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
            else:  # a group choice (a,b,c or Optuna's choice(a, b, c)): every option must be a file of that group
                swept = OverridesParser.create().parse_override(f"{key}={values}")
                for option in swept.sweep_string_iterator():
                    assert (CONF_DIR / key / f"{option.strip()}.yaml").exists(), f"{rel}: {key}={option}"
    if group == "experiment":
        assert cfg.optimized_metric in ("val/r2", "val/jaccard"), rel
        seg = cfg.task._target_.endswith("SegmentationTask")
        assert (cfg.optimized_metric == "val/jaccard") == seg, f"{rel}: optimized_metric {cfg.optimized_metric}"


# ---------------------------------------------------------------- inheritance: base presets, callbacks, debug
def _defaults_of(path) -> list[str]:
    return [str(d) for d in (OmegaConf.load(path).get("defaults") or [])]


def test_base_presets_are_extended_and_run_harmlessly_under_their_own_name():
    assert {"calibration_seed_base", "calibration_study_base", "mito_base", "repro_tiny_failure_base"} <= set(BASES)
    extended = {d for name in PRESETS + BASES for d in _defaults_of(CONF_DIR / "experiment" / f"{name}.yaml")}
    for base in BASES:
        assert base in extended, f"{base} is extended by no preset"
        # merging `???` would not replace the main config's run_name, so a base names its own run instead: run by
        # mistake, it is a valid run of the shared settings, in an outputs/<base>/ folder that says what it was
        assert _compose([f"experiment={base}"]).run_name == base
    names = {name: _compose([f"experiment={name}"]).run_name for name in PRESETS}
    assert not set(names.values()) & set(BASES), names  # every preset names its own run (child values win)
    assert len(set(names.values())) == len(names), names


@pytest.mark.parametrize(("preset", "model", "filters", "batch"), [
    ("C01", "DensityCNN", [16, 32, 64], 256), ("C04", "DensityCNN", [128, 256, 512], 96),
    ("arch_resnet_deep", "DensityResNet", [64, 128, 256, 512], 32)])
def test_seed_presets_keep_their_own_values_over_the_bases(preset, model, filters, batch):
    cfg = _compose([f"experiment={preset}"])
    assert cfg.model._target_.endswith(model) and list(cfg.model.filters) == filters
    assert cfg.data.batch_size == batch and cfg.trainer.max_epochs == 50 and cfg.data.source.physics.image_size == 512
    study = preset.startswith("C0")  # only C01..C04 carry the study's optimiser, norm and patience
    assert (cfg.task.optimizer.lr, cfg.model.get("convs_per_stage")) == ((3e-4, 3) if study else (1e-3, None))


@pytest.mark.parametrize("preset", ["mito_unet", "mito_attention_unet", "mito_attention_resunet"])
def test_published_mito_presets_differ_only_in_model_and_name(preset):
    cfg = OmegaConf.to_container(_compose([f"experiment={preset}"]))
    ref = OmegaConf.to_container(_compose(["experiment=mito_unet"]))
    assert cfg["model"]["_target_"].rsplit(".", 1)[1].lower() == preset.removeprefix("mito_").replace("_", "")
    for c in (cfg, ref):
        c.pop("run_name"), c.pop("model")
    assert cfg == ref


def test_callbacks_default_composes_every_callback_file_in_order():
    cbs = _compose([]).callbacks
    assert sorted(cbs) == sorted(set(CALLBACKS) - set(OPT_IN_CALLBACKS)) and len(cbs) == 8
    assert list(cbs)[:2] == ["model_checkpoint", "early_stopping"]  # the order of the file's defaults list
    for name in CALLBACKS:  # one file = one callback, under its own key (callbacks.<name>.x=... on the command line)
        only = _compose([f"callbacks={name}"]).callbacks
        assert list(only) == [name] and get_class(only[name]._target_), name


def test_callbacks_none_trains_and_tests_without_any_callback(run_cfg):
    from calib_seg.train import run

    cfg = run_cfg(["debug=tiny_beads", "callbacks=none"])
    assert not cfg.callbacks and problems_in(cfg) == []
    record = run(cfg)
    # trained and tested; without the guard the final check still judges it (1 tiny epoch rarely learns)
    learned = record["test_metrics"]["test/r2"] >= 0.05
    assert record["status"] == ("completed" if learned else "aborted") and record["epochs"] == 1
    assert learned or "final check: test/r2" in record["reason"]
    assert record["best_epoch"] is None and record["preflight"] is None  # no checkpoint, no guard
    assert "test/r2" in record["test_metrics"]


def test_debug_sizes_win_over_the_experiment_preset_and_keep_its_model():
    beads = _compose(["experiment=C04", "debug=tiny_beads"])
    assert list(beads.model.filters) == [8, 16] and beads.data.batch_size == 4 and beads.trainer.max_epochs == 1
    assert beads.data.source.physics.image_size == 64 and beads.logger == {} and beads.torch_threads == 1
    assert beads.task.optimizer.lr == 3e-4  # what debug does not set stays the preset's
    mito = _compose(["experiment=mito_attention_unet", "debug=tiny_mito"])
    assert mito.model._target_.endswith("AttentionUNet") and mito.model.base_filters == 8
    assert mito.data._target_.endswith("SegmentationDataModule") and mito.data.source.height == 128
    assert mito.trainer.max_epochs == 2 and problems_in(mito) == []
    assert _compose(["experiment=C04", "debug=tiny_beads", "trainer.max_epochs=3"]).trainer.max_epochs == 3
