"""Figures of a run and of a sweep: pure functions from numbers to matplotlib Figures (Agg, no display).

Tasks never plot (docs/CONVENTIONS.md); the figure callback, ``evaluate``, and ``report`` call these functions.
Every figure names its run in the title and carries units on its axes, so a PNG lifted out of its folder still
says what it shows.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless cluster nodes; also avoids a GUI backend's per-figure cost

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from calib_seg.metrics.functional import binary_jaccard  # noqa: E402

DENSITY_UNIT = "beads/mm²"


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (via a temporary name + rename so a killed job leaves no half image) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    tmp.replace(path)
    plt.close(fig)
    return path


def _dilution_colours(dilution: np.ndarray) -> tuple[np.ndarray, list[float], Any]:
    levels = sorted({float(d) for d in dilution if np.isfinite(d)})
    cmap = plt.get_cmap("viridis", max(len(levels), 1))
    index = {d: i for i, d in enumerate(levels)}
    colours = np.array([cmap(index[float(d)]) if np.isfinite(d) else (0.5, 0.5, 0.5, 1.0) for d in dilution])
    return colours, levels, cmap


def _dilution_legend(ax: Any, levels: list[float], cmap: Any, outside: bool = False) -> None:
    """One entry per dilution level; ``outside`` puts it right of the axes, where it cannot cover a point."""
    if not levels or len(levels) > 14:
        return
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=f"{d:g}x") for i, d in enumerate(levels)]
    where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0} if outside else \
        {"loc": "upper left"}
    ax.legend(handles=handles, title="dilution", fontsize=7, title_fontsize=7, ncol=1 if outside else 2, **where)


def fit_stats(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """R² (NaN when the targets hold one value: undefined), MAE and n of predictions against targets."""
    pred, target = np.asarray(pred, float).reshape(-1), np.asarray(target, float).reshape(-1)
    ss_tot = float(((target - target.mean()) ** 2).sum()) if target.size else 0.0
    ss_res = float(((pred - target) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 and len(np.unique(target)) > 1 else float("nan")
    mae = float(np.abs(pred - target).mean()) if target.size else float("nan")
    return {"r2": r2, "mae": mae, "n": int(target.size)}


def _where(split: str, checkpoint: str | None) -> str:
    """", test split, checkpoint best-epoch012.ckpt": what a figure's numbers were computed on."""
    return f", {split} split" + (f", checkpoint {Path(checkpoint).name}" if checkpoint else ", last weights")


def density_pred_vs_actual(pred: np.ndarray, target: np.ndarray, dilution: np.ndarray, title: str,
                           split: str = "test", checkpoint: str | None = None) -> Figure:
    """Predicted vs actual density, linear and log-log, with the identity line, coloured by dilution.

    The title names the split and the checkpoint (None: the model's last weights); the linear panel prints R²
    (n/a on one density level), MAE and n of exactly the points drawn.
    """
    pred, target, dilution = (np.asarray(a, float).reshape(-1) for a in (pred, target, dilution))
    stats = fit_stats(pred, target)
    colours, levels, cmap = _dilution_colours(dilution)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    lo, hi = float(min(pred.min(), target.min())), float(max(pred.max(), target.max()))
    for ax, log in zip(axes, (False, True)):
        ax.scatter(target, pred, c=colours, s=14, alpha=0.8, edgecolors="none")
        if log:
            pos = np.concatenate([pred[pred > 0], target[target > 0]])
            a, b = (float(pos.min()) * 0.7, float(pos.max()) * 1.4) if pos.size else (1.0, 10.0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.plot([a, b], [a, b], "k--", lw=1, label="identity")
            ax.set_xlim(a, b)
            ax.set_ylim(a, b)
            hidden = int((pred <= 0).sum())
            ax.set_title("log-log" + (f" ({hidden} predictions <= 0 not shown)" if hidden else ""))
        else:
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="identity")
            ax.set_title("linear")
        ax.set_xlabel(f"actual density [{DENSITY_UNIT}]")
        ax.set_ylabel(f"predicted density [{DENSITY_UNIT}]")
        ax.grid(alpha=0.3)
    r2 = "n/a (one density level)" if not math.isfinite(stats["r2"]) else f"{stats['r2']:.4f}"
    axes[0].text(0.98, 0.02, f"R² = {r2}\nMAE = {stats['mae']:.4g} {DENSITY_UNIT}\nn = {stats['n']} images",
                 transform=axes[0].transAxes, ha="right", va="bottom", fontsize=9,
                 bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    _dilution_legend(axes[0], levels, cmap)
    fig.suptitle(f"{title}: predicted vs actual{_where(split, checkpoint)}")
    return fig


def density_residuals(pred: np.ndarray, target: np.ndarray, dilution: np.ndarray, title: str,
                      split: str = "test", checkpoint: str | None = None) -> Figure:
    """Residual (predicted - actual) against actual density, log x axis so every dilution is visible.

    The legend sits outside the axes: inside, any corner covers the points of some level (upper left: the
    sparse end's large positive residuals of a model that over-counts there).
    """
    pred, target, dilution = (np.asarray(a, float).reshape(-1) for a in (pred, target, dilution))
    colours, levels, cmap = _dilution_colours(dilution)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(target, pred - target, c=colours, s=14, alpha=0.8, edgecolors="none")
    ax.axhline(0, color="k", lw=1, ls="--")
    if (target > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(f"actual density [{DENSITY_UNIT}]")
    ax.set_ylabel(f"residual = predicted - actual [{DENSITY_UNIT}]")
    ax.set_title(f"{title}: residuals{_where(split, checkpoint)}", fontsize=10)
    ax.grid(alpha=0.3)
    _dilution_legend(ax, levels, cmap, outside=True)
    return fig


def calibration_figure(block: Mapping[str, Any], title: str) -> Figure:
    """The calibration verdict of one split (:func:`calib_seg.metrics.calibration.calibrate`), two panels.

    Left: calibration curve, log-log, mean ± SD of the predictions per level against nominal, the identity line
    and the ±1 SD band of a perfect counter (Poisson); failing levels in red. Right: MAPE per level beside the
    counting-statistics floor and the excess limit (max_excess x floor) above which a level fails.
    """
    levels = list(block["levels"])
    area = block.get("fov_area_mm2")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    nom = np.array([r["nominal"] for r in levels], float)
    mean = np.array([r["mean"] for r in levels], float)
    sd = np.array([r["sd"] if r["sd"] is not None else 0.0 for r in levels], float)
    failed = np.array([not r["passed"] for r in levels])
    lo_x, hi_x = float(nom.min()) / 1.6, float(nom.max()) * 1.6
    grid = np.geomspace(lo_x, hi_x, 200)
    if area:
        band = np.sqrt(grid * area) / area
        ax.fill_between(grid, np.maximum(grid - band, lo_x / 10), grid + band, color="0.85",
                        label="perfect counter ±1 SD (Poisson)")
    ax.plot(grid, grid, "k--", lw=1, label="identity")
    pos = mean > 0
    lower = np.minimum(sd, mean - mean / 50)  # error bars stay on the positive half of a log axis
    for sel, colour, lab in ((pos & ~failed, "tab:blue", "level passes"), (pos & failed, "tab:red", "level fails")):
        if sel.any():
            ax.errorbar(nom[sel], mean[sel], yerr=[lower[sel], sd[sel]], fmt="o", color=colour, capsize=3,
                        label=f"{lab} (mean ± SD)")
    for r in levels:
        if r["mean"] > 0:
            ax.annotate(r["level"], (r["nominal"], r["mean"]), fontsize=7, xytext=(4, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo_x, hi_x)
    ymin = min(lo_x, float(mean[pos].min()) / 1.6) if pos.any() else lo_x
    ymax = max(hi_x, float((mean + sd)[pos].max()) * 1.6) if pos.any() else hi_x
    ax.set_ylim(ymin, ymax)
    ax.set_xlabel(f"nominal density [{DENSITY_UNIT}]")
    ax.set_ylabel(f"predicted density [{DENSITY_UNIT}]")
    hidden = int((~pos).sum())
    ax.set_title("calibration curve" + (f" ({hidden} level(s) with mean <= 0 not shown)" if hidden else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    x = np.arange(len(levels))
    mape = np.array([r["mape"] for r in levels], float)
    ax2.bar(x, mape, color=np.where(failed, "tab:red", "tab:blue"), alpha=0.8, label="model MAPE")
    floors = [r["floor_mape"] for r in levels]
    if all(f is not None for f in floors):
        f = np.array(floors, float)
        ax2.plot(x, f, "k_", ms=18, mew=2, label="counting-statistics floor (perfect counter)")
        ax2.plot(x, block["max_excess"] * f, color="tab:red", ls="none", marker="_", ms=18, mew=1,
                 label=f"excess limit ({block['max_excess']:g} x floor)")
    ax2.set_yscale("log")
    ax2.set_xticks(x, [r["level"] for r in levels], rotation=45, fontsize=8)
    ax2.set_xlabel("level (densest first)")
    ax2.set_ylabel("mean absolute percentage error [%]")
    ax2.set_title("relative error per level vs the floor")
    ax2.grid(alpha=0.3, axis="y", which="both")
    ax2.legend(fontsize=7)
    fig.suptitle(textwrap.fill(f"{title}: {block['line']}", 150), fontsize=9)
    return fig


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(row["epoch"])
            ys.append(v)
    return np.asarray(xs), np.asarray(ys)


def best_epoch_of(history: Sequence[Mapping[str, Any]], score: str, mode: str = "max") -> int | None:
    """The 1-based epoch with the best finite ``score`` (the first on ties, as ModelCheckpoint keeps it)."""
    x, y = _series(history, score)
    if not len(x):
        return None
    return int(x[int(np.argmax(y) if mode == "max" else np.argmin(y))])


def score_baseline(history: Sequence[Mapping[str, Any]], score: str) -> tuple[float, str] | None:
    """The trivial level of a validation score, (value, label): R² = 0 (predicting the mean) for ``*/r2``; the
    all-foreground Jaccard for ``*/jaccard`` when the run recorded it (``<score>_all_foreground``); else None."""
    if score.endswith("/r2"):
        return 0.0, "R² = 0 (predicting the mean)"
    if score.endswith("/jaccard"):
        _, y = _series(history, f"{score}_all_foreground")
        if len(y):
            return float(y[-1]), f"all-foreground Jaccard {float(y[-1]):.3f} (trivial)"
    return None


def training_curves(history: Sequence[Mapping[str, Any]], title: str, score: str = "val/r2",
                    ax_pair: tuple[Any, Any] | None = None, mode: str = "max") -> Figure | None:
    """Train/val loss (log scale when positive) and the validation score per epoch (1-based epochs).

    A dotted vertical line marks the best epoch (the checkpoint's, by ``score`` and ``mode``) on both panels, and
    a dashed red line the score's trivial baseline (:func:`score_baseline`). With ``ax_pair`` it draws into
    existing axes (the report's grid) and returns None.
    """
    fig = None
    if ax_pair is None:
        fig, ax_pair = plt.subplots(1, 2, figsize=(11, 4))
    ax, ax2 = ax_pair
    for key, style in (("train/loss", "-"), ("val/loss", "--")):
        x, y = _series(history, key)
        if len(x):
            ax.plot(x, y, style, marker="o", ms=3, label=key)
    if any(line.get_ydata().size and (np.asarray(line.get_ydata()) > 0).all() for line in ax.get_lines()):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (training units)")
    ax.grid(alpha=0.3)
    x, y = _series(history, score)
    if len(x):
        ax2.plot(x, y, marker="o", ms=3, color="tab:green", label=score)
    base = score_baseline(history, score)
    if base is not None:
        ax2.axhline(base[0], color="tab:red", ls="--", lw=1, label=base[1])
    best = best_epoch_of(history, score, mode)
    if best is not None:
        for a in (ax, ax2):
            a.axvline(best, color="k", ls=":", lw=1, label=f"best epoch {best} (checkpoint)")
    ax.legend(fontsize=8)
    for a in (ax, ax2):  # epochs are whole numbers
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"{score} (unitless)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    if fig is not None:
        fig.suptitle(f"{title}: training curves")
        ax.set_title("loss")
        ax2.set_title(score)
    else:
        ax.set_title(title, fontsize=8)
        ax2.set_title(f"{title}: {score}", fontsize=8)
    return fig


def segmentation_overlays(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                          title: str, threshold: float = 0.5, names: Sequence[str] | None = None,
                          split: str = "test") -> Figure:
    """Rows of image / ground truth / prediction (thresholded), each row titled by its file name (``names``;
    the image's index when unknown) and the per-image foreground Jaccard; panels 5 inches wide."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(16, 5.6 * n), squeeze=False)
    for i, (img, msk, prb) in enumerate(zip(images, masks, probs)):
        pred = prb >= threshold
        truth = msk > 0.5
        jac = binary_jaccard(pred, truth)
        name = str(names[i]) if names is not None and i < len(names) else f"{split} image {i}"
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(name, fontsize=11)
        axes[i, 1].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(np.ma.masked_where(~truth, truth), cmap="autumn", alpha=0.45)
        axes[i, 1].set_title(f"{name}: ground truth (red)", fontsize=11)
        axes[i, 2].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 2].imshow(np.ma.masked_where(~pred, pred), cmap="winter", alpha=0.45)
        axes[i, 2].set_title(f"{name}: prediction p>={threshold:g} (blue), Jaccard {jac:.3f}", fontsize=11)
        for ax in axes[i]:
            ax.set_xlabel("x [px]", fontsize=9)
            ax.set_ylabel("y [px]", fontsize=9)
            ax.tick_params(labelsize=8)
    fig.suptitle(f"{title}: {split} overlays")
    fig.tight_layout()
    return fig


def jaccard_vs_threshold(curve: Mapping[float, float], title: str, baseline: float | None = None,
                         headline: float | None = None) -> Figure:
    """Test foreground Jaccard against the probability threshold, with the all-foreground baseline."""
    ts = sorted(curve)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(ts, [curve[t] for t in ts], marker="o", label="test Jaccard")
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", ls="--", lw=1, label=f"all-foreground baseline {baseline:.3f}")
    if headline is not None:
        ax.axvline(headline, color="k", ls=":", lw=1, label=f"headline threshold {headline:g}")
    ax.set_xlabel("probability threshold (unitless)")
    ax.set_ylabel("foreground Jaccard (unitless)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: Jaccard vs threshold")
    return fig


# ----------------------------------------------------------------------------------------------- sweep figures
def _count_label(n: float) -> str:
    """A parameter count for a tick: 950, 12k, 120k, 7.7M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2g}{suffix}" if n < 10 * div else f"{n / div:.0f}{suffix}"
    return f"{n:.0f}"


def capacity_plot(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Test R² and MAE against parameter count, one point per run labelled with its ``label`` (the swept values).

    The x ticks sit at the runs' own parameter counts: a log axis spanning less than a decade has no decade tick,
    and one spanning two shows only "10⁶", neither of which tells the runs apart.
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    counts = sorted({float(r["params"]) for r in rows if r.get("params")})
    for r in rows:
        p = r.get("params")
        if not p:
            continue
        for a, key in ((ax, "r2"), (ax2, "mae")):
            v = r.get(key)
            if v is not None and math.isfinite(v):
                a.scatter([p], [v])
                a.annotate(str(r.get("label", "")), (p, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for a, lab in ((ax, "test R² (unitless)"), (ax2, f"test MAE [{DENSITY_UNIT}]")):
        a.set_xscale("log")
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if counts:
            a.set_xticks(counts, [_count_label(c) for c in counts], rotation=30, fontsize=8)
            a.set_xlim(counts[0] / 1.5, counts[-1] * 1.5)
        a.set_xlabel("trainable parameters (count)")
        a.set_ylabel(lab)
        a.grid(alpha=0.3)
    fig.suptitle(f"{title}: quality vs model capacity")
    return fig


def per_dilution_mae_plot(per_run: Mapping[str, Mapping[float, float]], title: str) -> Figure:
    """Per-dilution test MAE, one line per run."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in per_run.items():
        ds = sorted(values)
        if ds:
            ax.plot(ds, [values[d] for d in ds], marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dilution factor (x)")
    ax.set_ylabel(f"test MAE [{DENSITY_UNIT}]")
    ax.grid(alpha=0.3, which="both")
    if per_run:
        ax.legend(fontsize=7)
    ax.set_title(f"{title}: per-dilution MAE per run")
    return fig


def curves_grid(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str, score: str,
                mode: str = "max") -> Figure:
    """One row of (loss, score) panels per run, each marking its best epoch and the baseline."""
    n = max(len(histories), 1)
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.8 * n), squeeze=False)
    for i, (label, hist) in enumerate(histories.items()):
        training_curves(hist, label, score=score, ax_pair=(axes[i, 0], axes[i, 1]), mode=mode)
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    return fig


def lr_vs_score(rows: Sequence[Mapping[str, Any]], title: str, score_label: str = "best val Jaccard") -> Figure:
    """Learning rate (log) against the score, one panel per architecture; colour and marker size by batch size,
    so the legend's one entry per batch size is true for every point of that colour."""
    archs = sorted({str(r.get("arch")) for r in rows})
    batches = sorted({r.get("batch") for r in rows}, key=lambda b: (b is None, b if b is not None else 0))
    colour = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(batches)}
    fig, axes = plt.subplots(1, max(len(archs), 1), figsize=(4.5 * max(len(archs), 1), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for r in rows:
            if str(r.get("arch")) != arch or r.get("lr") is None or r.get("score") is None:
                continue
            ax.scatter([r["lr"]], [r["score"]], s=12 + 2 * float(r.get("batch") or 8), alpha=0.7,
                       color=colour[r.get("batch")], label=f"batch {r.get('batch')}")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        if uniq:
            ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{score_label} (unitless)")
        ax.set_title(arch, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: learning rate vs {score_label}")
    fig.tight_layout()
    return fig
