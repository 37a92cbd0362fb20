"""Config validation at start: a typo or a bad value fails in seconds, naming the key and what is allowed."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from calib_seg.config import compose
from calib_seg.validation import ConfigError, problems_in, validate
from helpers.paths import REPO

SEG = ["task=segmentation", "model=unet", "data=mito_synth", "optimized_metric=val/jaccard"]


@functools.cache
def _composed(groups: tuple[str, ...]) -> DictConfig:
    return compose(list(groups))


def config(overrides: list[str]) -> DictConfig:
    """Like ``compose(overrides)`` but composes each group choice once (composition costs ~1 s here);
    values are parsed by Hydra's own override parser, so types match the command line."""
    groups = tuple(o for o in overrides if "." not in o.split("=")[0])
    cfg = copy.deepcopy(_composed(groups))
    for ov in OverridesParser.create().parse_overrides([o for o in overrides if o not in groups]):
        with open_dict(cfg):
            OmegaConf.update(cfg, ov.key_or_group, ov.value(), force_add=ov.is_add())
    return cfg


@pytest.mark.parametrize("experiment", [None, "C01", "C04", "arch_resnet_deep", "mito_quick", "mito_unet",
                                        "repro_relu_collapse"])
def test_shipped_configs_are_valid(experiment):
    validate(compose([f"experiment={experiment}"] if experiment else []))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.filters=[]"], "model.filters: expected a non-empty list of integers > 0 (e.g. [16,32,64]), got []"),
        (["model.filters=[8,-16]"], "model.filters: expected a non-empty list of integers > 0"),
        (["task.optimizer.lr=0"], "task.optimizer.lr: expected a number > 0, got 0 (int)"),
        (["task.optimizer.lr=-1e-3"], "task.optimizer.lr: expected a number > 0, got -0.001 (float)"),
        (["task.optimizer.lr=fast"], "task.optimizer.lr: expected a number > 0, got 'fast' (str)"),
        (["data.batch_size=0"], "data.batch_size: expected an integer > 0, got 0 (int)"),
        (["data.batch_size=abc"], "data.batch_size: expected an integer > 0, got 'abc' (str)"),
        (["data.batch_size=8.5"], "data.batch_size: expected an integer > 0, got 8.5 (float)"),
        (["trainer.max_epochs=true"], "trainer.max_epochs: expected an integer > 0, got True (bool)"),
        (["task.loss=mae"],
         "task.loss: unknown value 'mae' (did you mean 'mse'?); allowed: mse, huber, poisson_weighted"),
        (["task/scheduler=plateau"], "task.scheduler.mode: 'max', but the plateau scheduler watches 'val/loss' "
         "(task.scheduler_monitor), which should fall; set task.scheduler.mode=min"),
        ([*SEG, "task.scheduler.mode=min"], "task.scheduler.mode: 'min', but the plateau scheduler watches "
         "'val/jaccard' (task.scheduler_monitor), which should rise; set task.scheduler.mode=max"),
        (["task.loss=poisson_weighted", "task.target_transform=log_standardize"],
         "task.loss: 'poisson_weighted' weighs errors on a linear target; with task.target_transform=log_standardize "
         "use task.loss=mse"),
        (["task.target_transform=log"],
         "task.target_transform: unknown value 'log'; allowed: standardize, log_standardize, none"),
        (["model.norm=layer"], "model.norm: unknown value 'layer'; allowed: batch, group, none"),
        (["model._target_=calib_seg.models.density.DensityCN"],
         "model._target_: unknown model 'calib_seg.models.density.DensityCN' (did you mean "
         "'calib_seg.models.density.DensityCNN'?); allowed: calib_seg.models.density.DensityCNN"),
        (["+model.filtres=[8,16]"], "model.filtres: unknown key for DensityCNN (did you mean 'filters'?)"),
        (["data.val_fraction=1.5"], "data.val_fraction: expected a fraction in [0, 1), got 1.5"),
        ([*SEG, "task.threshold=1.0"], "task.threshold: expected 'auto' or a number strictly between 0 and 1, got 1.0"),
        ([*SEG, "task.threshold=0"], "task.threshold: expected 'auto' or a number strictly between 0 and 1, got 0"),
        ([*SEG, "task.tta=sometimes"], "task.tta: expected true, false or 'auto', got 'sometimes' (str)"),
        ([*SEG, "data.augment=3"], "data.augment: expected true, false or a _target_ node (e.g. PairAugment), got 3"),
        ([*SEG, "task.loss=hinge"], "task.loss: unknown value 'hinge'; allowed: focal, dice, focal_dice, bce, bce_dice"),
        (["task=segmentation", "model=smp", "data=mito_synth", "model.arch=Unett"],
         "model.arch: unknown value 'Unett' (did you mean 'Unet'?); allowed: DPT, DeepLabV3"),
        (["task=segmentation", "data=mito_synth"], "model._target_: calib_seg.models.density.DensityCNN is a "
         "density model but task._target_ is the segmentation task"),
    ],
)
def test_each_bad_value_is_named_with_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(config(overrides))
    assert message in str(err.value)


def test_every_schedule_option_is_valid_for_density_with_a_plateau_minimising_its_loss():
    for overrides in (["task/scheduler=one_cycle"], ["task/scheduler=cosine"],
                      ["task/scheduler=plateau", "task.scheduler.mode=min"],
                      ["model=density_map", "task/scheduler=one_cycle"], ["task.loss=poisson_weighted"]):
        validate(config(overrides))


def test_auto_inference_options_and_an_augment_node_are_valid():
    validate(config([*SEG, "task.threshold=auto", "task.tta=auto", "task.postprocess=auto",
                     "data.augment={_target_:calib_seg.data.augment.PairAugment,elastic_alpha:6}"]))


def test_every_problem_is_listed_at_once():
    problems = problems_in(config(["model.filters=[]", "task.optimizer.lr=0", "data.batch_size=-2"]))
    assert [p.split(":")[0] for p in problems] == ["model.filters", "task.optimizer.lr", "data.batch_size"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib_seg.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_values_exit_2_before_training_and_the_record_says_failed(tmp_path):
    out = _cli("model.filters=[]", "task.optimizer.lr=-1", "task.loss=mae", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.startswith("config error: invalid configuration (3 problems):")
    for text in ("model.filters: expected a non-empty list", "task.optimizer.lr: expected a number > 0",
                 "task.loss: unknown value 'mae' (did you mean 'mse'?); allowed: mse, huber"):
        assert text in out.stderr
    assert "Traceback" not in out.stderr
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("ConfigError: invalid configuration")
    assert not (tmp_path / "checkpoints").exists()


def test_cli_unknown_key_is_refused_before_composition_with_the_key_named(tmp_path):
    out = _cli("model.filtres=[8,16]", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert "model.filtres: unknown key (did you mean 'filters'?)" in out.stderr
    assert not (tmp_path / "checkpoints").exists()
