"""Sweep report: ``python -m calib_seg.report <multirun folder>`` -> report.md, summary.csv, report_figures/.

Reads only what the jobs left behind (``run.json``, ``history.json``, ``multirun.yaml``); it never trains, so it
can run on a sweep that is still going: it reports what is there and names what is missing. The seed reports
were written by hand and one analysed numbers from *before* the fix it described; so the report compares the
code versions of its jobs and says so loudly when they differ or a tree was dirty.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calib_seg.callbacks.history import read_history
from calib_seg.fileio import atomic_write_text
from calib_seg.report_rows import (  # noqa: F401  (re-exported: the report's public helpers)
    _DIL,
    FIG_DIR,
    _diff_hash,
    _fmt,
    _num,
    _short_job_names,
    calibration_fields,
    collect,
    duplicate_warning,
    expected_jobs,
    job_dirs,
    job_table,
    md_table,
    provenance_warnings,
    sweep_spec,
)
from calib_seg.tasks.spec import TaskSpec


def best_per_arch(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job with the highest best validation Jaccard per architecture (completed jobs only)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "completed" or r.get("best_val") is None:
            continue
        a = str(r.get("arch"))
        if a not in best or r["best_val"] > best[a]["best_val"]:
            best[a] = r
    return [best[a] for a in sorted(best)]


def best_job(rows: Sequence[dict[str, Any]], calibrated: bool = False) -> dict[str, Any] | None:
    """The completed job with the highest best validation score (the sweeper's optimised metric); with
    ``calibrated`` only among jobs whose calibration verdict is ``pass``."""
    done = [r for r in rows if r["status"] == "completed" and r.get("best_val") is not None
            and (not calibrated or r.get("calibration") == "pass")]
    return max(done, key=lambda r: r["best_val"]) if done else None


def _best_density_job(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The "Best job" section: best optimised metric among jobs passing the calibration verdict, flagged if none."""
    best = best_job(rows, calibrated=True)
    judged = any(r.get("calibration") for r in rows)
    flag = None
    if best is None:
        best = best_job(rows)
        if best is None:
            return []
        if judged:
            flag = (f"> **No job passes the calibration verdict.** `{best['job']}` is only the best by "
                    f"{best.get('optimized_metric')}; it fails at {best.get('failing_levels') or '?'} (worst excess "
                    f"{_fmt(best.get('worst_excess'))} at {best.get('worst_level')}). Do not use it for calibration.")
    preset = f"experiment {best['experiment']}, " if best.get("experiment") else ""
    text = (f"`{best['job']}` ({preset}filters {best.get('filters')}, batch "
            f"{best.get('batch')}, lr {_fmt(best.get('lr'))}): best {best.get('optimized_metric')} = "
            f"{_fmt(best['best_val'])} at epoch {best.get('best_epoch')}, test R² {_fmt(best.get('r2'))}, "
            f"test MAE {_fmt(best.get('mae'))} beads/mm²; calibration {best.get('calibration') or 'not recorded'}, "
            f"quantification range {best.get('quantification_range') or '-'}.")
    return ["## Best job", "", text, ""] + ([flag, ""] if flag else [])


#: a best job whose test R² is at or below this learned about nothing (R² = 0: predicting the mean of the test set);
#: the guard's final check records such a run aborted at the same bar (``GuardRules.final_r2_min``; not imported,
#: which would pull Lightning into the report)
R2_FAILURE = 0.05
#: ... and one whose test Jaccard is within this of the all-foreground baseline (the guard's ``jaccard_margin``)
JACCARD_FAILURE_MARGIN = 0.02


def failure_reasons(row: dict[str, Any]) -> list[str]:
    """Why a job's numbers are a failure rather than a result (empty when none applies): a status other than
    completed, test R² ~ 0 or below, a failed calibration verdict, a Jaccard no better than all-foreground."""
    reasons = []
    if row.get("status") != "completed":
        reasons.append(f"its status is {row.get('status')}")
    r2 = row.get("r2")
    if r2 is not None and r2 <= R2_FAILURE:
        reasons.append(f"test R² {_fmt(r2)} (at or below {R2_FAILURE:g}: no better than predicting the mean)")
    if row.get("calibration") == "fail":
        reasons.append(f"its calibration verdict fails (at {row.get('failing_levels') or '?'})")
    jac, base = row.get("jaccard"), row.get("jaccard_all_foreground")
    if jac is not None and base is not None and jac <= base + JACCARD_FAILURE_MARGIN:
        reasons.append(f"test Jaccard {_fmt(jac)} is no better than predicting all foreground ({_fmt(base)})")
    return reasons


def best_failure_warning(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A loud line at the top of the report when the job the report calls best is itself a failure, or when no
    job completed at all (so there is no best job); empty otherwise."""
    best = best_job(rows, calibrated=True) or best_job(rows)
    if best is None:
        ended = [r for r in rows if r["status"] not in ("missing", "running")]
        if not ended:
            return []
        counts = ", ".join(f"{sum(r['status'] == s for r in ended)} {s}" for s in sorted({r["status"] for r in ended}))
        return [f"> **Warning: no job completed ({counts}): there is no best job.** See \"Aborted and failed "
                "jobs\".", ""]
    reasons = failure_reasons(best)
    if not reasons:
        return []
    return [f"> **Warning: the best job is itself a failure.** `{best['job']}`: {'; '.join(reasons)}. "
            "Treat these numbers as a failed sweep, not as a result.", ""]


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k not in ("dir", "per_dilution_mae", "spec")] if rows else ["job"]
    dil = sorted({d for r in rows for d in (r.get("per_dilution_mae") or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys + [f"test_mae_dilution_{d:g}x" for d in dil])
    for r in rows:
        pdm = r.get("per_dilution_mae") or {}
        w.writerow([r.get(k, "") if r.get(k) is not None else "" for k in keys] + [pdm.get(d, "") for d in dil])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ figures
def _figures(sweep: Path, rows: list[dict[str, Any]], spec: TaskSpec) -> list[tuple[str, str]]:
    from calib_seg import plots

    out: list[tuple[str, str]] = []
    fig_dir = sweep / FIG_DIR
    have = [r for r in rows if r["status"] != "missing"]

    def save(fig: Any, name: str, caption: str) -> None:
        plots.save_figure(fig, fig_dir / f"{name}.png")
        out.append((caption, f"{FIG_DIR}/{name}.png"))

    spec.resolve("report_figures")(have, sweep.name, save)
    hist = {_label(r): h for r in have if (h := read_history(r["dir"]))}
    if hist:
        save(plots.curves_grid(hist, sweep.name, spec.optimized_metric, spec.mode), "training_curves",
             "Training curves of every job")
    return out


def _label(r: dict[str, Any]) -> str:
    """A job's name in figures: its short name (number and what the sweep varied, see ``_short_job_names``)."""
    return str(r["job"])


def segmentation_figures(have: list[dict[str, Any]], title: str, save: Any) -> None:
    """Learning rate vs best validation score of the jobs (``save(fig, name, caption)`` keeps each figure)."""
    from calib_seg import plots

    pts = [{"arch": r.get("arch"), "lr": r.get("lr"), "batch": r.get("batch"), "score": r.get("best_val")}
           for r in have if r.get("best_val") is not None]
    if pts:
        save(plots.lr_vs_score(pts, title), "lr_vs_jaccard", "Learning rate vs best validation Jaccard")


def density_figures(have: list[dict[str, Any]], title: str, save: Any) -> None:
    """Capacity (test R² and MAE vs parameters) and per-dilution MAE of the jobs."""
    from calib_seg import plots

    pts = [{"label": _label(r), "params": r.get("params"), "r2": r.get("r2"), "mae": r.get("mae")} for r in have]
    if any(p["params"] and (p["r2"] is not None or p["mae"] is not None) for p in pts):
        save(plots.capacity_plot(pts, title), "capacity", "Test R² and MAE vs model capacity")
    per = {_label(r): r["per_dilution_mae"] for r in have if r.get("per_dilution_mae")}
    if per:
        save(plots.per_dilution_mae_plot(per, title), "per_dilution_mae", "Per-dilution test MAE per run")


def segmentation_sections(rows: Sequence[dict[str, Any]], spec: TaskSpec) -> list[str]:
    """Best configuration per architecture, then every job."""
    return ["## Best configuration per architecture", "",
            md_table(best_per_arch(rows), [("arch", "architecture"), ("lr", "lr"), ("batch", "batch"),
                                           ("best_val", "best val Jaccard"), ("jaccard", "test Jaccard"),
                                           ("time_s", "time"), ("best_epoch", "epochs to best"),
                                           ("job", "job")]), "",
            f"## All jobs ({len(rows)})", "", *job_table(rows, spec.report_columns)]


def density_sections(rows: Sequence[dict[str, Any]], spec: TaskSpec) -> list[str]:
    """The best (calibrated) job, then every job with its calibration verdict."""
    return [*_best_density_job(rows), f"## All jobs ({len(rows)})", "",
            "Test-set metrics in beads/mm² (MAPE in %), on the best checkpoint; oracle R² is a perfect counter "
            "on the same test images (the Poisson floor). Calibration: the per-level verdict against the "
            "counting-statistics floor (docs/calibration.md); worst excess = the worst level's MAE / floor.", "",
            *job_table(rows, spec.report_columns)]


# ------------------------------------------------------------------------------------------------ report
def build_report(sweep: str | Path, figures: bool = True) -> str:
    """Write report.md, summary.csv and report_figures/ into ``sweep``; return the Markdown."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep} does not exist")
    rows = collect(sweep)
    spec = sweep_spec(rows)
    expected = expected_jobs(sweep)
    done = [r for r in rows if r["status"] != "missing"]
    md = [f"# Sweep report: `{sweep.name}`", "",
          f"Folder: `{sweep.resolve()}`  ",
          f"Kind: {spec.report_kind}; "
          f"{len(done)} job(s) with a record, {len(rows) - len(done)} job folder(s) without one"
          + (f", {expected} job(s) launched" if expected is not None else "") + ".", ""]
    md += best_failure_warning(rows)

    md += duplicate_warning(rows, expected)
    from calib_seg.report_setup import setup_section  # date, code, data, seed, device, what varied

    md += setup_section(sweep, rows)
    warnings = provenance_warnings(rows)
    if warnings:
        md += ["> **Warning: provenance differs between jobs.** Numbers below may not be comparable.", ">"]
        md += [f"> - {w}" for w in warnings] + [""]

    missing = [r for r in rows if r["status"] == "missing"]
    running = [r for r in rows if r["status"] == "running"]
    absent = (expected - len(rows)) if expected is not None and expected > len(rows) else 0
    if missing or running or absent:
        md += ["## Incomplete", ""]
        md += [f"- `{r['job']}`: {r['reason']}" for r in missing]
        md += [f"- `{r['job']}`: record says running (still going, or killed without a final record)" for r in running]
        if absent:
            md.append(f"- {absent} launched job(s) have no folder yet")
        md.append("")

    md += spec.resolve("report_sections")(rows, spec)

    bad = [r for r in rows if r["status"] in ("aborted", "failed")]
    md += ["## Aborted and failed jobs", ""]
    md += [f"- `{r['job']}` **{r['status']}**: {r.get('reason') or 'no reason recorded'}" for r in bad] or ["none"]
    md.append("")

    from calib_seg.report_optuna import optuna_section  # an Optuna study: trials, best parameters, history

    md += optuna_section(sweep, figures, FIG_DIR)
    if figures:
        figs = _figures(sweep, rows, spec)
        if figs:
            md += ["## Figures", ""] + [f"### {c}\n\n![{c}]({p})\n" for c, p in figs]
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(sweep / "summary.csv", _csv(rows))
    atomic_write_text(sweep / "report.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m calib_seg.report <multirun folder> [--no-figures]``."""
    ap = argparse.ArgumentParser(prog="python -m calib_seg.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="a multirun folder (multirun/<date>/<time>_<id>)")
    ap.add_argument("--no-figures", action="store_true", help="tables only (faster)")
    args = ap.parse_args(argv)
    try:
        build_report(args.sweep, figures=not args.no_figures)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.sweep) / 'report.md'} and summary.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
