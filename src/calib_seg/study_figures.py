"""Figures of the study reports: mean ± sd across seeds as error bars (pure functions, Agg, via plots.save_figure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calib_seg import plots

plt = plots.plt


def _errorbar(ax: Any, x: dict[str, Any], y: dict[str, Any], label: str, **kw: Any) -> bool:
    if x.get("mean") is None or y.get("mean") is None:
        return False
    ax.errorbar([x["mean"]], [y["mean"]], xerr=[x.get("sd") or 0], yerr=[y.get("sd") or 0], fmt="o", capsize=3,
                label=label, **kw)
    ax.annotate(label, (x["mean"], y["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    return True


def per_level_excess(groups: Mapping[str, Sequence[dict[str, Any]]], title: str) -> Any:
    """Excess (MAE / floor) per dilution level, mean ± sd across seeds, one line per configuration."""
    from calib_seg.study_stats import mean_sd

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for c, rs in groups.items():
        levels = sorted({lv for r in rs for lv in r["m"]["levels"]}, key=lambda s: float(s.rstrip("x")))
        st = [mean_sd([r["m"]["levels"].get(lv, {}).get("excess") for r in rs]) for lv in levels]
        xs = [float(lv.rstrip("x")) for lv, s in zip(levels, st) if s["mean"] is not None]
        ys = [s["mean"] for s in st if s["mean"] is not None]
        es = [s["sd"] or 0 for s in st if s["mean"] is not None]
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=c)
    ax.axhline(2.0, color="red", ls="--", lw=1, label="default max_excess (2)")
    ax.axhline(1.0, color="grey", ls=":", lw=1, label="perfect counter (1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dilution factor (x)")
    ax.set_ylabel("excess = MAE / counting floor (unitless)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: per-level calibration, mean ± sd across seeds")
    return fig


def scatter_ms(points: Mapping[str, tuple[dict[str, Any], dict[str, Any]]], xlabel: str, ylabel: str, title: str,
               logx: bool = False, front: Sequence[str] = ()) -> Any:
    """One point per configuration with x and y error bars (mean ± sd); ``front`` joined as the Pareto front."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, (x, y) in points.items():
        _errorbar(ax, x, y, c)
    pts = sorted((points[c][0]["mean"], points[c][1]["mean"]) for c in front
                 if points[c][0].get("mean") is not None and points[c][1].get("mean") is not None)
    if len(pts) > 1:
        ax.plot(*zip(*pts), color="black", lw=1, ls="--", label="Pareto front")
        ax.legend(fontsize=7)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig


def calibration_figures(fig_dir: Path, rng: Mapping[str, Any], st: Mapping[str, Any], ext: Mapping[str, Any],
                        st_ext: Mapping[str, Any], score: str) -> list[tuple[str, str]]:
    """Draw the calibration study's figures into ``fig_dir``; return (caption, file name) pairs."""
    from calib_seg.study_stats import pareto

    out: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        plots.save_figure(fig, fig_dir / f"{name}.png")
        out.append((caption, f"{name}.png"))

    if rng:
        save(per_level_excess(rng, "range"), "per_level_excess", "Q1: excess per dilution level per configuration")
    if ext:
        save(scatter_ms({c: (st_ext[c]["params"], st_ext[c]["50x MAPE %"]) for c in ext},
                        "trainable parameters (count)", "50x MAPE (%), 50x held out of training",
                        "Q2: extrapolation to 50x vs capacity", logx=True), "extrapolation_50x",
             "Q2: 50x error vs capacity")
    if rng:
        front = pareto({c: (st[c]["wall time [s]"]["mean"], st[c][score]["mean"]) for c in rng})
        save(scatter_ms({c: (st[c]["wall time [s]"], st[c][score]) for c in rng}, "wall time per job (s)",
                        f"{score} (unitless, lower is better)", "Q3: accuracy vs training time", front=front),
             "pareto_time", "Q3: accuracy vs training time (Pareto front dashed)")
        if any(st[c]["peak memory [MB]"]["mean"] for c in rng):
            save(scatter_ms({c: (st[c]["peak memory [MB]"], st[c][score]) for c in rng}, "peak memory (MB)",
                            f"{score} (unitless, lower is better)", "Q3: accuracy vs peak memory"),
                 "pareto_memory", "Q3: accuracy vs peak memory")
    return out


def sensitivity_panels(cf: Mapping[tuple[str, float, int], Sequence[dict[str, Any]]], axis: int, score: str,
                       title: str) -> Any:
    """One panel per architecture: score vs lr (axis 1, one line per batch) or vs batch (axis 2, one line per lr),
    mean ± sd across seeds."""
    from calib_seg.study_stats import mean_sd

    archs = sorted({k[0] for k in cf})
    fig, axes = plt.subplots(1, len(archs), figsize=(4.5 * len(archs), 4), squeeze=False, sharey=True)
    other = 3 - axis
    for ax, arch in zip(axes[0], archs):
        for ov in sorted({k[other] for k in cf if k[0] == arch}):
            keys = sorted(k for k in cf if k[0] == arch and k[other] == ov)
            st = [mean_sd([r["m"][score] for r in cf[k]]) for k in keys]
            ax.errorbar([k[axis] for k in keys], [s["mean"] for s in st], yerr=[s["sd"] or 0 for s in st],
                        marker="o", ms=3, capsize=2, label=f"{'batch' if axis == 1 else 'lr'} {ov:g}")
        ax.set_xscale("log", base=10 if axis == 1 else 2)
        ax.set_xlabel("learning rate" if axis == 1 else "batch size (images)")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{score} (unitless)")
    fig.suptitle(f"{title}, mean ± sd across seeds")
    return fig


def threshold_curves(curves: Mapping[str, Sequence[Mapping[float, float]]], title: str) -> Any:
    """Test Jaccard vs probability threshold, mean ± sd across seeds, one line per architecture."""
    from calib_seg.study_stats import mean_sd

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arch, per_seed in curves.items():
        ts = sorted({t for c in per_seed for t in c})
        st = [mean_sd([c.get(t) for c in per_seed]) for t in ts]
        ax.errorbar(ts, [s["mean"] for s in st], yerr=[s["sd"] or 0 for s in st], marker="o", ms=3, capsize=2,
                    label=arch)
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("test Jaccard (unitless)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig


def mito_figures(fig_dir: Path, cf: Mapping[Any, Sequence[dict[str, Any]]], best: Mapping[str, Any],
                 score: str) -> list[tuple[str, str]]:
    """Draw the mito study's figures into ``fig_dir``; return (caption, file name) pairs."""
    out: list[tuple[str, str]] = []
    for axis, name, cap in ((1, "lr_sensitivity", "Learning-rate sensitivity"),
                            (2, "batch_sensitivity", "Batch-size effects")):
        plots.save_figure(sensitivity_panels(cf, axis, score, cap), fig_dir / f"{name}.png")
        out.append((cap, f"{name}.png"))
    curves = {a: [r["m"]["curve"] for r in cf[k]] for a, k in best.items()}
    if any(c for cs in curves.values() for c in cs):
        plots.save_figure(threshold_curves(curves, "Jaccard vs threshold, best configuration per architecture"),
                          fig_dir / "jaccard_vs_threshold.png")
        out.append(("Jaccard vs threshold of each architecture's best", "jaccard_vs_threshold.png"))
    return out
