"""The run's TensorBoard logger, fed the calls Lightning makes, read back with TensorBoard's EventAccumulator: the
run's name, 1-based epoch steps, the learning rate at its epoch, the Custom Scalars layout (no training)."""

from __future__ import annotations

from calib_seg.callbacks.tensorboard import LAYOUT_CATEGORY, RunTensorBoardLogger
from helpers.tensorboard import event_dir, load_events


def _steps(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _fit_calls(logger: RunTensorBoardLogger, first_epoch: int, epochs: int, steps_per_epoch: int = 7) -> None:
    """What Lightning and its LearningRateMonitor(logging_interval="epoch") send for ``epochs`` epochs."""
    for e in range(first_epoch, first_epoch + epochs):
        done = (e + 1) * steps_per_epoch
        logger.log_metrics({"lr-Adam": 1e-3 / (e + 1)}, step=e * steps_per_epoch)  # epoch start, no epoch given
        logger.log_metrics({"val/loss": 1.0 / (e + 1), "val/jaccard": 0.1 * (e + 1),
                            "val/jaccard_all_foreground": 0.2, "val/dice": 0.5, "epoch": e}, step=done)
        logger.log_metrics({"train/loss": 2.0 / (e + 1), "epoch": e}, step=done)


def test_run_folder_names_the_tensorboard_run(tmp_path):
    run = tmp_path / "2026-01-01_10-00-00_ab12cd"
    logger = RunTensorBoardLogger(str(run), run_name="mito_quick", optimized_metric="val/jaccard")
    logger.log_metrics({"val/jaccard": 0.5, "epoch": 0}, step=3)
    logger.finalize("success")
    assert event_dir(run) == run / "mito_quick_2026-01-01_10-00-00_ab12cd"


def test_epoch_level_scalars_are_written_at_the_1_based_epoch_and_test_at_the_last(tmp_path):
    logger = RunTensorBoardLogger(str(tmp_path / "run"), run_name="seg", optimized_metric="val/jaccard")
    _fit_calls(logger, 0, 3)
    logger.log_metrics({"test/jaccard": 0.7, "epoch": 3}, step=21)  # after fit, current_epoch = epochs done
    logger.log_hyperparams({"lr": 1e-3}, {"hp/test/jaccard": 0.7})
    logger.finalize("success")
    steps = _steps(load_events(tmp_path / "run"))
    assert steps["val/jaccard"] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [s for s, _ in steps["train/loss"]] == [1, 2, 3]
    assert steps["lr-Adam"] == [(1, 0.001), (2, 0.0005), (3, 0.000333)]  # each epoch's rate at that epoch
    assert steps["test/jaccard"] == [(3, 0.7)]
    assert "hp/test/jaccard" in steps and "epoch" not in steps


def test_a_resumed_run_continues_on_the_same_epoch_axis(tmp_path):
    logger = RunTensorBoardLogger(str(tmp_path / "run"), run_name="seg")
    _fit_calls(logger, 2, 2)  # a new logger after ckpt_path=last at epoch 3: it has seen nothing before
    logger.finalize("success")
    steps = _steps(load_events(tmp_path / "run"))
    assert [s for s, _ in steps["val/jaccard"]] == [3, 4] and [s for s, _ in steps["lr-Adam"]] == [3, 4]


def test_layout_puts_losses_then_the_optimised_metric_first_with_its_baseline(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    logger = RunTensorBoardLogger(str(tmp_path / "run"), run_name="seg", optimized_metric="val/jaccard")
    _fit_calls(logger, 0, 2)
    logger.finalize("success")
    acc = load_events(tmp_path / "run")
    [config] = acc.Tensors("custom_scalars__config__")
    [category] = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0]).category
    assert category.title == LAYOUT_CATEGORY
    assert [(c.title, list(c.multiline.tag)) for c in category.chart] == [
        ("loss (train/loss, val/loss)", ["^train/loss$", "^val/loss$"]),
        ("val/jaccard", ["^val/jaccard$", "^val/jaccard_all_foreground$"]),  # first although "dice" sorts first
        ("val/dice", ["^val/dice$"]),
        ("learning rate", ["^lr-"])]

