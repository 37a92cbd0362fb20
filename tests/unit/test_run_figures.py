"""A run's figures read from their Matplotlib objects: legend placement, titles, printed numbers, marker lines."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import mean_absolute_error, r2_score  # noqa: E402

from calib_seg import plots  # noqa: E402

LEVELS = np.array([50.0, 400.0, 3200.0, 51200.0])
DENSITY = 7964.0 * 50.0 / LEVELS


def _density_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model that over-counts at the sparse end (the default run's failure): large positive residuals there."""
    rng = np.random.default_rng(seed)
    dilution = np.repeat(LEVELS, 6)
    target = np.repeat(DENSITY, 6)
    pred = target + rng.normal(0, 40, target.size) + np.where(target < 100, 150.0, 0.0)
    return pred, target, dilution


def _visible_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]


def test_residual_legend_lies_outside_the_axes_so_it_covers_no_point():
    pred, target, dilution = _density_points()
    fig = plots.density_residuals(pred, target, dilution, "run")
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    assert not legend_box.overlaps(axes_box)  # beside the axes, not on them
    points = ax.transData.transform(np.column_stack([target, pred - target]))
    assert not any(legend_box.contains(x, y) for x, y in points)
    plt.close(fig)


def test_pred_vs_actual_names_split_and_checkpoint_and_prints_r2_mae_n():
    pred, target, dilution = _density_points()
    fig = plots.density_pred_vs_actual(pred, target, dilution, "density [run1]", split="test",
                                       checkpoint="/runs/x/checkpoints/best-epoch012.ckpt")
    title = fig._suptitle.get_text()
    assert "test split" in title and "best-epoch012.ckpt" in title and "/runs/x" not in title
    [text] = [t.get_text() for t in fig.axes[0].texts]
    assert f"R² = {r2_score(target, pred):.4f}" in text
    assert f"MAE = {mean_absolute_error(target, pred):.4g} beads/mm²" in text
    assert f"n = {target.size} images" in text
    plt.close(fig)


def test_pred_vs_actual_says_r2_is_undefined_on_one_level_and_last_weights_without_checkpoint():
    target = np.full(5, 7964.0)
    fig = plots.density_pred_vs_actual(target + 10, target, np.full(5, 50.0), "run", split="all")
    assert "R² = n/a" in fig.axes[0].texts[0].get_text()
    assert "all split, last weights" in fig._suptitle.get_text()
    plt.close(fig)


def test_overlays_are_titled_by_file_name_with_large_panels():
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32)) for _ in range(2)]
    masks = [(im > 0.5).astype(float) for im in images]
    names = ["slice_007.tif", "slice_012.tif"]
    fig = plots.segmentation_overlays(images, masks, images, "mito [run1]", names=names)
    titles = [[ax.get_title() for ax in fig.axes[3 * i: 3 * i + 3]] for i in range(2)]
    for name, row in zip(names, titles):
        assert all(t.startswith(name) for t in row), row
    fig.canvas.draw()
    dpi = fig.dpi
    widths = [ax.get_window_extent().width / dpi for ax in fig.axes]
    assert min(widths) >= 4.0  # inches per panel (3.0 before)
    plt.close(fig)


def test_density_training_curves_mark_the_best_epoch_and_the_r2_zero_baseline():
    history = [{"epoch": e, "train/loss": 1.0 / e, "val/loss": 1.2 / e, "val/r2": r2}
               for e, r2 in zip((1, 2, 3, 4), (-0.5, 0.6, 0.9, 0.8))]
    fig = plots.training_curves(history, "run", "val/r2")
    loss_ax, score_ax = fig.axes
    for ax in (loss_ax, score_ax):
        [best] = [ln for ln in _visible_lines(ax) if ln.get_label().startswith("best epoch")]
        assert list(best.get_xdata()) == [3, 3] and best.get_label() == "best epoch 3 (checkpoint)"
    [base] = [ln for ln in _visible_lines(score_ax) if "R² = 0" in ln.get_label()]
    assert list(base.get_ydata()) == [0, 0]
    plt.close(fig)


@pytest.mark.parametrize("recorded", [True, False])
def test_segmentation_training_curves_draw_the_all_foreground_line_only_when_recorded(recorded):
    history = [{"epoch": e, "train/loss": 0.5 / e, "val/loss": 0.6 / e, "val/jaccard": j,
                **({"val/jaccard_all_foreground": 0.21} if recorded else {})}
               for e, j in zip((1, 2, 3), (0.3, 0.7, 0.7))]
    fig = plots.training_curves(history, "run", "val/jaccard")
    score_ax = fig.axes[1]
    labels = [ln.get_label() for ln in _visible_lines(score_ax)]
    assert "best epoch 2 (checkpoint)" in labels  # the first of two equal epochs, as the checkpoint keeps it
    base = [ln for ln in _visible_lines(score_ax) if ln.get_label().startswith("all-foreground")]
    if recorded:
        assert len(base) == 1 and list(base[0].get_ydata()) == [0.21, 0.21]
    else:
        assert base == [] and not any("R² = 0" in label for label in labels)
    plt.close(fig)
