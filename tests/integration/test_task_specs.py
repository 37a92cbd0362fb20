"""Task descriptors: ``task=<x>`` alone selects a task's metric and name, every task x data pairing that makes
sense trains and tests at toy size, and one that does not is refused at start-up, before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from calib_seg.config import compose
from calib_seg.tasks.spec import all_specs, spec_of
from calib_seg.train import run
from calib_seg.validation import ConfigError, problems_in
from helpers.configs import TINY_BEADS, compose_run_cfg
from helpers.paths import REPO

CONF = REPO / "conf"
DATA = {"density": ["beads_synth", "beads_seed", "beads_folder"],
        "segmentation": ["mito_synth", "mito_folder", "mito_epfl"]}
MODEL = {"density": "density_cnn", "segmentation": "unet"}


def test_every_shipped_task_has_one_descriptor_and_one_config_that_agree():
    specs = all_specs()
    assert set(specs) == {"density", "density_map", "segmentation"}
    for name, spec in specs.items():
        raw = OmegaConf.load(CONF / "task" / f"{name}.yaml")
        assert (CONF / "task" / f"{name}.yaml").read_text().splitlines()[0] == "# @package _global_"
        assert raw.task_name == name and raw.optimized_metric == spec.optimized_metric
        assert raw.task._target_ == spec.target and spec_of(spec.target) is spec and spec_of(name) is spec
        assert spec.optimized_metric in spec.progress_keys and spec.mode == "max"
        for field in ("test_figures", "prediction_writer", "report_sections", "report_figures"):
            assert callable(spec.resolve(field)), field  # every dotted path names a real function


@pytest.mark.parametrize("task", sorted(DATA))
def test_task_alone_selects_its_name_and_optimised_metric(task):
    cfg = compose([f"task={task}", f"model={MODEL[task]}", f"data={DATA[task][0]}"])
    assert cfg.task_name == task and cfg.optimized_metric == all_specs()[task].optimized_metric
    assert problems_in(cfg) == []


@pytest.mark.parametrize("task,data", [(t, d) for t in DATA for d in DATA[t]])
def test_sensible_pairings_pass_the_start_up_check(task, data):
    assert problems_in(compose([f"task={task}", f"model={MODEL[task]}", f"data={data}"])) == []


@pytest.mark.parametrize("task,data", [(t, d) for t in DATA for o in DATA if o != t for d in DATA[o]])
def test_senseless_pairings_are_refused_naming_the_data(task, data):
    problems = problems_in(compose([f"task={task}", f"model={MODEL[task]}", f"data={data}"]))
    assert any(p.startswith("data._target_:") and f"the {task} task cannot train on" in p for p in problems), problems


def test_another_tasks_metric_is_refused_at_start_up():
    cfg = compose(["task=segmentation", "model=unet", "data=mito_synth", "optimized_metric=val/r2"])
    assert any(p.startswith("optimized_metric: 'val/r2' is not logged by the segmentation task")
               for p in problems_in(cfg))


def test_a_senseless_pairing_stops_before_anything_is_built_and_the_record_says_failed(tmp_path):
    cfg = compose_run_cfg(["task=density", "data=mito_synth", "logger=none"], tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match="holds segmentation data"):
            run(cfg)
    finally:
        GlobalHydra.instance().clear()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "holds segmentation data" in record["reason"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _train(overrides: list[str], out: Path) -> dict:
    cfg = compose_run_cfg(overrides, out)
    try:
        return run(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("data", ["beads_synth", "beads_seed"])
def test_density_task_trains_and_tests_on_simulated_bead_data(data, tmp_path):
    record = _train(["task=density", "model=density_cnn", f"data={data}", *TINY_BEADS], tmp_path / "run")
    assert record["status"] == "completed", record.get("reason")
    assert record["task"] == "density" and record["optimized_metric"] == "val/r2"
    assert record["best_val"] == pytest.approx(record["val_metrics_best"]["val/r2"])
    assert {"test/r2", "test/mae", "test/r2_oracle"} <= set(record["test_metrics"])


# the segmentation x synthetic EM pairing trains without a preset in
# tests/integration/test_seg_end_to_end.py::test_plain_segmentation_command_without_a_preset_trains
