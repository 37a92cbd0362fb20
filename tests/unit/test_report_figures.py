"""Sweep-report figures read right from their Matplotlib objects: tick labels, point labels, legend entries."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from calib_seg import plots  # noqa: E402


def _xtick_texts(ax) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]


@pytest.mark.parametrize(("params", "ticks"), [((120_000, 300_000), ["120k", "300k"]),
                                               ((120_000, 7_700_000), ["120k", "7.7M"])])
def test_capacity_axis_labels_each_runs_parameter_count(params, ticks):
    rows = [{"label": f"{i}_model.filters=[{i}]", "params": p, "r2": 0.9, "mae": 50.0} for i, p in enumerate(params)]
    fig = plots.capacity_plot(rows, "s")
    for ax in fig.axes:
        assert _xtick_texts(ax) == ticks
        assert [t.get_text() for t in ax.texts] == [r["label"] for r in rows]
    plt.close(fig)


def test_lr_figure_legend_has_one_entry_per_batch_in_the_points_colour():
    rows = [{"arch": "unet", "lr": lr, "batch": b, "score": 0.5} for lr, b in ((1e-3, 8), (1e-2, 8), (1e-3, 16))]
    fig = plots.lr_vs_score(rows, "s")
    ax = fig.axes[0]
    point_colour = [to_hex(c.get_facecolor()[0], keep_alpha=False) for c in ax.collections]
    assert point_colour[0] == point_colour[1] != point_colour[2]  # the two batch-8 jobs share a colour
    legend = ax.get_legend()
    entries = {t.get_text(): to_hex(h.get_facecolor()[0], keep_alpha=False)
               for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert entries == {"batch 8": point_colour[0], "batch 16": point_colour[2]}
    plt.close(fig)
