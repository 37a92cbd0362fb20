"""Training guard: the rules on scripted metric histories and the callback on a fake trainer (runs: integration/test_guard_runs.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from calib_seg.callbacks.guard import TrainingGuard, check, final_check
from calib_seg.metrics.functional import spread_stats

RULES = dict(non_finite=True, flat_patience=5, min_rel_delta=0.01, grace_epochs=5, r2_min=0.0, min_steps=0,
             collapse_fraction=0.1, jaccard_margin=0.02)


def first_abort(entries: list[dict], **overrides) -> tuple[int | None, str | None]:
    """Feed ``entries`` one epoch at a time, as the callback does; (epoch, message) of the first abort."""
    rules = {**RULES, **overrides}
    history: list[dict] = []
    for i, entry in enumerate(entries, start=1):
        history.append({"epoch": i, **entry})
        msg = check(history, **rules)
        if msg:
            return i, msg
    return None, None


def density(loss: float, r2: float, pred_std: float = 900.0, pred_range: float = 7000.0) -> dict:
    return {"val/loss": loss, "val/r2": r2, "pred_std": pred_std, "target_std": 1000.0,
            "pred_range": pred_range, "target_range": 7900.0}


# ---------------------------------------------------------------- rules on scripted sequences
def test_guard_aborts_when_val_loss_flat_for_flat_patience_epochs():
    # the seed C01: 7,848,009 -> 7,835,187 (-0.16%) while R² stayed negative; here R² rule is off to isolate
    losses = [7_848_009, 7_845_000, 7_841_000, 7_838_000, 7_835_187, 7_830_000]
    epoch, msg = first_abort([{"val/loss": v} for v in losses], r2_min=None)
    assert epoch == 5
    assert msg == ("aborted at epoch 5: val/loss flat: best 7.835e+06 vs first 7.848e+06 = +0.16% improvement "
                   "< 1.00% after 5 epochs (flat_patience 5)")


def test_flat_loss_rule_spares_a_run_whose_jaccard_improves():
    # measured (B5, mito_quick U-Net on synthetic EM, 80 patches/epoch): focal val/loss rose while Jaccard learned
    loss = [0.188, 0.3093, 0.2772, 0.4594, 1.576, 1.2]
    jac = [0.07864, 0.08076, 0.1121, 0.1302, 0.1191, 0.2]
    entries = [{"val/loss": v, "val/jaccard": j, "val/jaccard_all_foreground": 0.08} for v, j in zip(loss, jac)]
    assert first_abort(entries, jaccard_margin=None) == (None, None)
    # the same loss with a Jaccard that never moves is stopped
    flat = [{**e, "val/jaccard": 0.09} for e in entries]
    assert first_abort(flat, jaccard_margin=None)[1].startswith("aborted at epoch 5: val/loss flat")


def test_guard_keeps_a_slowly_but_really_improving_run():
    # 0.5% per epoch: 2% by epoch 5, above min_rel_delta; R² positive and rising
    entries = [density(1.0 - 0.005 * i, 0.1 + 0.05 * i) for i in range(30)]
    assert first_abort(entries) == (None, None)


def test_guard_aborts_when_r2_negative_after_grace_epochs():
    entries = [density(1.0 - 0.02 * i, r2) for i, r2 in enumerate([-2.0, -1.0, -0.6, -0.4, -0.31, 0.5])]
    epoch, msg = first_abort(entries)
    assert epoch == 5
    assert msg == ("aborted at epoch 5: val/r2 = -0.31 < 0; never clearly good (best -0.31), 5 bad epochs in a row "
                   ">= patience 3 (after 5 epochs, grace 5)")


def test_guard_keeps_a_run_whose_r2_is_negative_early_but_positive_by_grace_end():
    entries = [density(1.0 - 0.1 * i, r2) for i, r2 in enumerate([-3.0, -1.2, -0.4, -0.05, 0.02, 0.4, 0.8])]
    assert first_abort(entries) == (None, None)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_guard_aborts_at_once_on_non_finite_numbers(bad):
    entries = [density(1.0, 0.1), {**density(0.9, 0.2), "train/loss": bad}]
    epoch, msg = first_abort(entries)
    assert epoch == 2
    assert msg == f"aborted at epoch 2: train/loss = {bad} is not finite"
    assert first_abort(entries, non_finite=False) == (None, None)


def test_guard_aborts_when_prediction_spread_collapses_after_grace():
    # the seed: predictions 0..500 against targets 15..7964, with a loss that still creeps down
    std = [density(1.0 - 0.02 * i, 0.3, pred_std=50.0) for i in range(6)]
    epoch, msg = first_abort(std, r2_min=None)
    assert epoch == 5
    assert msg == ("aborted at epoch 5: predictions collapsed: std of val predictions 50 < 0.1 x targets' 1000 "
                   "(ratio 0.050); never clearly good (best 0.05), 5 bad epochs in a row >= patience 3 "
                   "(after 5 epochs, grace 5)")
    rng = [density(1.0 - 0.02 * i, 0.3, pred_std=300.0, pred_range=500.0) for i in range(6)]
    epoch, msg = first_abort(rng, r2_min=None)
    assert epoch == 5 and "range of val predictions 500 < 0.1 x targets' 7900 (ratio 0.063)" in msg


def test_guard_aborts_when_jaccard_stays_at_the_all_foreground_level():
    entries = [{"val/loss": 0.1 - 0.002 * i, "val/jaccard": j, "val/jaccard_all_foreground": 0.08}
               for i, j in enumerate([0.0, 0.05, 0.08, 0.09, 0.095, 0.3])]
    epoch, msg = first_abort(entries)
    assert epoch == 5
    assert msg == ("aborted at epoch 5: val/jaccard = 0.095 <= all-foreground baseline 0.080 + margin 0.02 "
                   "(trivial segmentation); never clearly good (best 0.095), 5 bad epochs in a row >= patience 3 "
                   "(after 5 epochs, grace 5)")
    healthy = [{**e, "val/jaccard": 0.2 + 0.1 * i} for i, e in enumerate(entries)]
    assert first_abort(healthy) == (None, None)


def _seg(jaccards: list[float], base: float = 0.04) -> list[dict]:
    # a loss that creeps down (2 % an epoch): the metric rules do not wait for it (learning_loss_drop)
    return [{"val/loss": 0.2 * 0.98 ** i, "val/jaccard": j, "val/jaccard_all_foreground": base}
            for i, j in enumerate(jaccards)]


def test_guard_keeps_a_healthy_run_through_one_bad_epoch():
    # the README's real-data command (4 Lucchi slices, one validation slice): 0.59 at epoch 4, then one epoch
    # at 0.024 below the all-foreground level; the old latest-epoch rule aborted it at epoch 6
    noisy = [0.26, 0.49, 0.34, 0.59, 0.51, 0.024, 0.55, 0.61]
    assert first_abort(_seg(noisy)) == (None, None)
    # even a long dip is forgiven until relapse_patience bad epochs in a row
    dip = [0.26, 0.49, 0.34, 0.59, 0.51] + [0.03] * 9 + [0.6]
    assert first_abort(_seg(dip)) == (None, None)
    epoch, msg = first_abort(_seg([0.26, 0.49, 0.34, 0.59, 0.51] + [0.03] * 10))
    assert epoch == 15 and "best 0.59 was clearly good, but 10 bad epochs in a row >= relapse_patience 10" in msg
    # density: one epoch of R² < 0 in a run that reached 0.8 is noise, not a doomed run
    r2 = [density(1.0 - 0.1 * i, v) for i, v in enumerate([0.2, 0.5, 0.8, 0.85, -0.4, 0.9, 0.9])]
    assert first_abort(r2) == (None, None)


def test_metric_rules_wait_while_val_loss_still_falls_fast():
    # B5, mito_quick attention_unet on the 42 Lucchi slices, seed 2: focal loss learns the background first, so
    # the Jaccard at 0.5 fell to ~0 for epochs while val/loss halved; the rule without the wait aborted it at epoch 6
    loss = [0.209, 0.174, 0.111, 0.086, 0.080, 0.058]
    jac = [0.038, 0.089, 0.065, 0.030, 0.012, 0.011]
    seen = [{"val/loss": v, "val/jaccard": j, "val/jaccard_all_foreground": 0.038} for v, j in zip(loss, jac)]
    assert first_abort(seen) == (None, None)
    epoch, msg = first_abort(seen, learning_loss_drop=None)
    assert epoch == 6 and "val/jaccard = 0.011 <= all-foreground baseline 0.038" in msg
    # the same Jaccards with a loss that stalls: the streak fires as soon as the loss stops falling fast
    stalled = [{**e, "val/loss": v} for e, v in zip(seen, [0.209, 0.174, 0.111, 0.105, 0.104, 0.104])]
    assert first_abort(stalled)[0] == 6
    # and once the loss slows down, the waiting run is judged with its whole streak
    slowing = seen + [{"val/loss": 0.057, "val/jaccard": 0.01, "val/jaccard_all_foreground": 0.038}] * 3
    epoch, msg = first_abort(slowing)
    assert epoch == 9 and "6 bad epochs in a row" in msg  # 0.058 -> 0.057: no longer falling fast


def test_the_wait_is_relative_to_the_best_loss_before_the_last_patience_epochs():
    from calib_seg.callbacks.guard import GuardRules, _still_learning

    hist = [{"val/loss": v} for v in (1.0, 0.9, 0.8, 0.75, 0.70)]  # best before 0.9 -> best of last 3 0.70
    assert _still_learning(hist, GuardRules(learning_loss_drop=0.2)) is True   # 22 % > 20 %
    assert _still_learning(hist, GuardRules(learning_loss_drop=0.25)) is False
    assert _still_learning(hist[:3], GuardRules()) is False  # nothing before the last `patience` epochs
    assert _still_learning([*hist, {"val/loss": math.nan}], GuardRules()) is True  # NaN skipped (rule 1 fires)


def test_guard_aborts_a_truly_trivial_run_after_patience_bad_epochs():
    # never above baseline + margin: fires at grace_epochs (the streak is already 5 >= patience 3)
    assert first_abort(_seg([0.0, 0.03, 0.05, 0.04, 0.05, 0.05]))[0] == 5
    # one marginal epoch (above the margin but not clearly good) restarts the streak: 3 more bad epochs needed
    epoch, msg = first_abort(_seg([0.0, 0.03, 0.05, 0.04, 0.09, 0.05, 0.05, 0.05]))
    assert epoch == 8 and "never clearly good (best 0.09), 3 bad epochs in a row >= patience 3" in msg


def test_guard_rules_switch_off_one_by_one():
    flat = [density(1.0, -0.5, pred_std=1.0) for _ in range(8)]
    assert first_abort(flat)[1].split(": ")[1].startswith("val/loss flat")
    assert "val/r2" in first_abort(flat, flat_patience=None)[1]
    assert "collapsed" in first_abort(flat, flat_patience=None, r2_min=None)[1]
    assert first_abort(flat, flat_patience=None, r2_min=None, collapse_fraction=None) == (None, None)


def test_guard_waits_for_min_steps_before_judging_progress_but_not_for_nan():
    # the seed's C01 shape: 2 optimizer steps per epoch, val/loss flat and R² ~ 0 while BatchNorm stats settle
    flat = [{**density(1.0, -0.01), "step": 2 * i} for i in range(1, 31)]
    epoch, msg = first_abort(flat, min_steps=50)
    assert epoch == 25 and msg.startswith("aborted at epoch 25: val/loss flat")
    nan = [{**density(1.0, 0.1), "step": 2}, {**density(math.nan, 0.1), "step": 4}]
    assert first_abort(nan, min_steps=50)[0] == 2


def test_final_check_refuses_negative_r2_and_trivial_jaccard_as_results():
    assert final_check({"test/r2": -0.43}) == ("final check: test/r2 = -0.4300 < 0.05 (no better than predicting "
                                               "the mean density): not a result")
    assert final_check({"test/r2": 0.97}) is None
    assert final_check({"test/r2": -0.43}, final_r2_min=None) is None
    trivial = {"test/jaccard": 0.05, "test/jaccard_all_foreground": 0.04}
    assert final_check(trivial) == ("final check: test/jaccard = 0.050 <= all-foreground baseline 0.040 + margin "
                                    "0.02 (trivial segmentation): not a result")
    assert final_check({**trivial, "test/jaccard": 0.75}) is None
    assert final_check({"test/loss": 1.0}) is None  # nothing to judge


def test_final_check_refuses_an_unlearned_run_at_r2_near_zero_and_passes_a_poor_but_learned_one():
    # C02 at the seed's batch 192 (1 step per epoch) ended by early stopping at test R² 0.0002: it learned nothing
    assert final_check({"test/r2": 0.0002}).startswith("final check: test/r2 = 0.0002 < 0.05")
    assert final_check({"test/r2": 0.0499}) is not None
    assert final_check({"test/r2": 0.05}) is None and final_check({"test/r2": 0.3}) is None
    assert final_check({"test/r2": 0.0002}, final_r2_min=0.0) is None
    # R² undefined (a one-level test set records NaN): nothing to judge, never a false abort
    assert final_check({"test/r2": math.nan}) is None


def test_spread_stats_match_numpy():
    pred, target = np.array([1.0, 2.0, 4.0]), np.array([15.0, 500.0, 7964.0])
    s = spread_stats(pred, target)
    assert s["pred_std"] == pytest.approx(np.std(pred)) and s["target_range"] == pytest.approx(7949.0)


# ---------------------------------------------------------------- the callback around the rules
class _FakeStrategy:
    def broadcast(self, obj, src=0):
        return obj


def _fake_trainer(epoch: int, metrics: dict) -> SimpleNamespace:
    loops = SimpleNamespace(min_epochs=50, epoch_loop=SimpleNamespace(min_steps=1000))
    return SimpleNamespace(sanity_checking=False, current_epoch=epoch - 1, callback_metrics=metrics,
                           strategy=_FakeStrategy(), should_stop=False, fit_loop=loops, is_global_zero=True,
                           loggers=[], global_step=10 * epoch)


def test_callback_stops_the_trainer_and_records_reason_and_epoch(caplog):
    guard = TrainingGuard(**RULES)
    module = SimpleNamespace(last_val={"pred": np.zeros(20), "target": np.linspace(15, 7964, 20)})
    for epoch in range(1, 6):
        trainer = _fake_trainer(epoch, {"val/loss": 8e6, "val/r2": -0.42})
        guard.on_validation_end(trainer, module)
        guard.on_train_epoch_end(trainer, module)
        assert trainer.should_stop == (epoch == 5)
    assert guard.aborted_epoch == 5 and guard.abort_reason.startswith("aborted at epoch 5: val/loss flat")
    # an abort overrides min_epochs/min_steps, or Lightning would "continue training" a doomed run
    assert trainer.fit_loop.min_epochs == 0 and trainer.fit_loop.epoch_loop.min_steps == 0
    # logged for the run's train.log (kept off the console: train.train_app prints the abort once, as the last line)
    logged = [r for r in caplog.records if r.name == "calib_seg.guard"]
    assert [r.getMessage() for r in logged] == [f"training guard: {guard.abort_reason}"]
    assert logged[0].console is False
    assert guard.history[-1]["pred_std"] == 0.0


def test_callback_ignores_sanity_check_and_epochs_without_validation():
    guard = TrainingGuard(**RULES)
    module = SimpleNamespace()
    trainer = _fake_trainer(1, {"val/loss": math.nan})
    trainer.sanity_checking = True
    guard.on_validation_end(trainer, module)
    trainer.sanity_checking = False
    guard.on_train_epoch_end(trainer, module)
    assert guard.history == [] and not trainer.should_stop
