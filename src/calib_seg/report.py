"""Sweep report: ``python -m calib_seg.report <multirun folder>`` -> report.md, summary.csv, report_figures/.

Reads only what the jobs left behind (``run.json``, ``history.json``, ``multirun.yaml``); it never trains, so it
can run on a sweep that is still going: it reports what is there and names what is missing. The seed reports
were written by hand and one analysed numbers from *before* the fix it described; so the report compares the
code versions of its jobs and says so loudly when they differ or a tree was dirty.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calib_seg.callbacks.history import read_history
from calib_seg.fileio import atomic_write_text
from calib_seg.records import RECORD_NAME, read_record
from calib_seg.tasks.spec import TaskSpec, all_specs, spec_of

FIG_DIR = "report_figures"
_DIL = re.compile(r"^test/mae_dilution_(.+)x$")


# ------------------------------------------------------------------------------------------------ collecting
def job_dirs(sweep: Path) -> list[Path]:
    """Job folders of a sweep: sub-folders holding a run record or Hydra's ``.hydra`` (started jobs)."""
    dirs = [d for d in sweep.iterdir() if d.is_dir() and ((d / RECORD_NAME).exists() or (d / ".hydra").is_dir())]

    def key(d: Path) -> tuple[int, str]:
        head = d.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 10**9, d.name)

    return sorted(dirs, key=key)


def expected_jobs(sweep: Path) -> int | None:
    """Number of jobs the sweep was launched with (from ``multirun.yaml``), or None when unknown."""
    path = sweep / "multirun.yaml"
    if not path.exists():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        overrides = list(cfg.hydra.overrides.task)
        params = cfg.hydra.get("sweeper", {}).get("params") or {}
        overrides += [f"{k}={v}" for k, v in params.items()]
        # the command line wins over sweeper params for the same key (as in Hydra's BasicSweeper)
        by_key: dict[str, Any] = {}
        for ov in OverridesParser.create().parse_overrides(overrides):
            by_key.setdefault(ov.get_key_element(), ov)
        n = 1
        for ov in by_key.values():
            if ov.is_sweep_override():
                n *= len(list(ov.sweep_string_iterator()))
        return n
    except Exception:  # noqa: BLE001  (an unusual sweeper: just do not promise a count)
        return None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _diff_hash(job: Path, prov: dict[str, Any]) -> str | None:
    if not prov.get("git_dirty"):
        return None
    patch = job / (prov.get("git_diff") or "git_diff.patch")
    return hashlib.sha256(patch.read_bytes()).hexdigest()[:10] if patch.exists() else "unknown"


def collect(sweep: Path) -> list[dict[str, Any]]:
    """One flat row per job folder (status ``missing`` when it has no run record yet)."""
    rows = []
    for job in job_dirs(sweep):
        rec = read_record(job)
        if rec is None:
            rows.append({"job": job.name, "status": "missing", "reason": "no run.json (not started, running, "
                         "or killed before writing it)", "dir": job})
            continue
        ch = rec.get("choices") or {}
        m = rec.get("test_metrics") or rec.get("metrics") or {}
        prov = rec.get("provenance") or {}
        versions = prov.get("versions") or {}
        filters = ch.get("filters")
        row = {
            "job": job.name, "dir": job, "status": rec.get("status"), "reason": rec.get("reason"),
            "task": rec.get("task"), "experiment": ch.get("experiment") or (rec.get("config") or {}).get("run_name"),
            "arch": ch.get("arch") or ch.get("model"), "model": ch.get("model"),
            "filters": "-".join(str(f) for f in filters) if filters else ch.get("base_filters"),
            "batch": ch.get("batch_size"), "lr": ch.get("lr"), "data": ch.get("data"),
            "params": rec.get("params"), "epochs": rec.get("epochs"), "best_epoch": rec.get("best_epoch"),
            "best_val": _num(rec.get("best_val")), "optimized_metric": rec.get("optimized_metric"),
            "r2": _num(m.get("test/r2")), "mse": _num(m.get("test/mse")), "mae": _num(m.get("test/mae")),
            "rmse": _num(m.get("test/rmse")), "mape": _num(m.get("test/mape")),
            "max_error": _num(m.get("test/max_error")), "r2_oracle": _num(m.get("test/r2_oracle")),
            "jaccard": _num(m.get("test/jaccard")), "dice": _num(m.get("test/dice")),
            "jaccard_all_foreground": _num(m.get("test/jaccard_all_foreground")),
            "time_s": _num(rec.get("wall_time_s")), "time_per_epoch_s": _num(rec.get("time_per_epoch_s")),
            "peak_rss_mb": _num(rec.get("peak_rss_mb")), "peak_cuda_mb": _num(rec.get("peak_cuda_mb")),
            "git_commit": prov.get("git_commit"), "git_dirty": prov.get("git_dirty"),
            "diff_hash": _diff_hash(job, prov), "calib_seg_version": versions.get("calib_seg"),
            "per_dilution_mae": {float(mm.group(1)): float(v) for k, v in m.items()
                                 if (mm := _DIL.match(k)) and _num(v) is not None},
            **calibration_fields(rec.get("calibration")),
            "spec": spec_of(rec),  # the task descriptor (not a column)
        }
        rows.append(row)
    return _short_job_names(rows)


def calibration_fields(block: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep table's view of a run's calibration verdict (docs/calibration.md); None when not recorded."""
    block = block or {}
    qr = block.get("quantification_range") or {}
    if qr.get("n_levels"):
        span = qr["low_level"] if qr["n_levels"] == 1 else f"{qr['low_level']}..{qr['high_level']}"
    else:
        span = "none" if qr else None
    return {"calibration": block.get("verdict"), "failing_levels": ",".join(block.get("failing_levels") or []) or None,
            "worst_level": block.get("worst_level"), "worst_excess": _num(block.get("worst_excess")),
            "quantification_range": span}


_OVERRIDE_SEP = re.compile(r",(?![^\[]*\])")  # commas between overrides, not inside [16,32,64]


def _short_job_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name each job by its number and the overrides that differ between jobs (the folder keeps the full name).

    A sweep's fixed overrides (data size, epochs, ...) repeat in every folder name and would bury the swept value.
    """
    parts = {r["job"]: r["job"].split("_", 1) for r in rows}
    items = {job: _OVERRIDE_SEP.split(p[1]) if len(p) > 1 else [] for job, p in parts.items()}
    common = set.intersection(*(set(v) for v in items.values())) if len(rows) > 1 else set()
    for r in rows:
        num = parts[r["job"]][0]
        varying = [i for i in items[r["job"]] if i not in common]
        if varying:  # a name with nothing that varies stays as it is
            r["job"] = f"{num}_{','.join(varying)}"
    return rows


def sweep_spec(rows: Sequence[dict[str, Any]]) -> TaskSpec:
    """The task descriptor of a sweep: that of its first job with a known task (density when none is known)."""
    spec = next((r["spec"] for r in rows if r.get("spec") is not None), None)
    return spec or all_specs()["density"]


def provenance_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines naming the jobs whose code differs from the rest (commit, version, uncommitted diff)."""
    done = [r for r in rows if r["status"] != "missing"]
    out = []
    for key, what in (("git_commit", "git commits"), ("calib_seg_version", "calib_seg versions"),
                      ("diff_hash", "uncommitted diffs")):
        groups: dict[Any, list[str]] = {}
        for r in done:
            groups.setdefault(r.get(key), []).append(r["job"])
        if len(groups) > 1:
            parts = "; ".join(f"`{str(k)[:12] if k else 'none'}`: {', '.join(v)}" for k, v in groups.items())
            out.append(f"jobs come from {len(groups)} different {what}: {parts}")
    dirty = [r["job"] for r in done if r.get("git_dirty")]
    if dirty:
        out.append(f"{len(dirty)} job(s) ran from a dirty tree (uncommitted changes; see git_diff.patch in the job "
                   f"folder): {', '.join(dirty)}")
    unknown = [r["job"] for r in done if r.get("git_commit") is None]
    if unknown:
        out.append(f"no git commit recorded for: {', '.join(unknown)}")
    return out


def duplicate_warning(rows: Sequence[dict[str, Any]], expected: int | None) -> list[str]:
    """A warning block when one job number has several folders (the sweep folder was re-run with other
    overrides, so each configuration may appear twice) or there are more folders than launched jobs."""
    by_num: dict[str, list[str]] = {}
    for r in rows:
        by_num.setdefault(Path(r["dir"]).name.split("_", 1)[0], []).append(Path(r["dir"]).name)
    dup = {n: names for n, names in by_num.items() if len(names) > 1}
    if not dup and (expected is None or len(rows) <= expected):
        return []
    lines = ["> **Warning: duplicate jobs.** " + (f"{len(rows)} job folders for {expected} launched job(s): "
                                                 if expected is not None and len(rows) > expected else "")
             + "the sweep folder was run more than once with different overrides; compare jobs of one run only.", ">"]
    lines += [f"> - job {n}: {', '.join(f'`{x}`' for x in names)}" for n, names in sorted(dup.items())]
    return lines + [""]


# ------------------------------------------------------------------------------------------------ formatting
def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        if x != 0 and (abs(x) >= 1000 or abs(x) < 1e-3):
            return f"{x:.4g}" if abs(x) < 1e6 else f"{x:.3e}"
        return f"{x:.{digits}g}"
    return str(x)


def md_table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``cols`` = (key, header)."""
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)).replace("|", "/") for k, _ in cols) + " |")
    return "\n".join(lines)


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
    text = (f"`{best['job']}` (experiment {best.get('experiment')}, filters {best.get('filters')}, batch "
            f"{best.get('batch')}, lr {_fmt(best.get('lr'))}): best {best.get('optimized_metric')} = "
            f"{_fmt(best['best_val'])} at epoch {best.get('best_epoch')}, test R² {_fmt(best.get('r2'))}, "
            f"test MAE {_fmt(best.get('mae'))} beads/mm²; calibration {best.get('calibration') or 'not recorded'}, "
            f"quantification range {best.get('quantification_range') or '-'}.")
    return ["## Best job", "", text, ""] + ([flag, ""] if flag else [])


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
        save(plots.curves_grid(hist, sweep.name, spec.optimized_metric), "training_curves",
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
                                           ("time_s", "time [s]"), ("best_epoch", "epochs to best"),
                                           ("job", "job")]), "",
            f"## All jobs ({len(rows)})", "", md_table(rows, spec.report_columns), ""]


def density_sections(rows: Sequence[dict[str, Any]], spec: TaskSpec) -> list[str]:
    """The best (calibrated) job, then every job with its calibration verdict."""
    return [*_best_density_job(rows), f"## All jobs ({len(rows)})", "",
            "Test-set metrics in beads/mm² (MAPE in %), on the best checkpoint; oracle R² is a perfect counter "
            "on the same test images (the Poisson floor). Calibration: the per-level verdict against the "
            "counting-statistics floor (docs/calibration.md); worst excess = the worst level's MAE / floor.", "",
            md_table(rows, spec.report_columns), ""]


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
