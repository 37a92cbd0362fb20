"""One source of truth: allowed values come from the modules that own them, and the guard's defaults are one
dataclass that the function, the callback and the shipped config agree with."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from omegaconf import OmegaConf

from calib_seg.callbacks.guard import GuardRules, TrainingGuard, check, final_check
from calib_seg.callbacks.preflight import judge
from calib_seg.config import compose
from calib_seg.models import NORMS
from calib_seg.models.density import HEAD_ACTIVATIONS
from calib_seg.tasks import density, density_map, segmentation
from calib_seg.tasks.transforms import KINDS
from calib_seg.validation import models, problems_in, tasks


def test_the_shipped_guard_config_states_exactly_the_dataclass_defaults():
    guard = OmegaConf.to_container(compose([]).callbacks.guard, resolve=True)
    defaults = dataclasses.asdict(GuardRules())
    assert {k: guard[k] for k in defaults} == defaults
    built = TrainingGuard(**{k: v for k, v in guard.items() if k != "_target_"})
    assert built.rules == defaults and built.rule_set == GuardRules()
    # the callback's own (pre-flight) keyword defaults match the config too, and judge's limits match both
    params = inspect.signature(TrainingGuard).parameters
    assert {k: guard[k] for k in params if k != "rules"} == {k: p.default for k, p in params.items() if k != "rules"}
    limits = inspect.signature(judge).parameters
    assert {k: p.default for k, p in limits.items() if k != "m"} == {k: guard[k] for k in limits if k != "m"}


def test_check_and_final_check_use_the_dataclass_defaults():
    history = [{"epoch": e, "step": 100 * e, "val/loss": 1.0, "val/r2": -0.5} for e in range(1, 8)]
    assert check(history) == check(history, GuardRules()) is not None
    assert check(history, r2_min=None, flat_patience=None) is None  # keyword overrides on top of the defaults
    assert check(history, GuardRules(r2_min=-1.0, flat_patience=None)) is None
    # final_r2_min 0.05
    assert final_check({"test/r2": 0.049}) is not None and final_check({"test/r2": 0.05}) is None


def test_guard_rules_refuse_impossible_combinations_and_unknown_names():
    with pytest.raises(ValueError, match="patience <= relapse_patience"):
        GuardRules(patience=5, relapse_patience=2)
    with pytest.raises(TypeError, match="rules are"):
        TrainingGuard(patiense=3)


def test_validation_allows_what_the_owning_modules_define():
    assert set(models()) == {m for t in (density, density_map, segmentation) for m in t.SPEC.models}
    assert set(tasks()) == {density.SPEC.target, density_map.SPEC.target, segmentation.SPEC.target}
    cases = {"model.norm=nrom": NORMS, "model.head_activation=gelu": [a for a in HEAD_ACTIVATIONS if a],
             "task.target_transform=log": KINDS, "task.loss=l1": density.LOSSES}
    for override, allowed in cases.items():
        key = override.split("=")[0]
        (msg,) = [p for p in problems_in(compose([override])) if p.startswith(f"{key}:")]
        assert all(str(a) in msg.split("allowed:")[1] for a in allowed), msg
    (msg,) = [p for p in problems_in(compose(["experiment=mito_quick", "task.loss=l1"])) if p.startswith("task.loss")]
    assert msg.endswith("allowed: " + ", ".join(segmentation.LOSSES))


def test_the_sweep_report_flags_failures_at_the_guards_final_check_bars():
    from calib_seg.report import JACCARD_FAILURE_MARGIN, R2_FAILURE

    # copied, not imported (the report must not import Lightning): this keeps the copies equal
    assert R2_FAILURE == GuardRules().final_r2_min and JACCARD_FAILURE_MARGIN == GuardRules().jaccard_margin
