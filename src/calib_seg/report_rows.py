"""Sweep rows for the reports: the job folders of a sweep, one flat row per job, provenance and duplicate
warnings, and the markdown table helper; shared by ``calib_seg.report`` and the study reports."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
            # the preset only: a run without one is named after its task, which is no experiment
            "task": rec.get("task"), "experiment": ch.get("experiment"),
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
#: row keys holding seconds, shown as durations ("4.7 s", "20 min 34 s", "2 h 05 min") in the tables
DURATION_KEYS = frozenset({"time_s", "time_per_epoch_s"})
#: columns a table keeps even when empty
_ALWAYS = frozenset({"job", "status"})


def fmt_duration(seconds: Any) -> str:
    """Seconds for people: ``4.7 s`` below 10 s, ``34 s`` below a minute, ``20 min 34 s``, ``2 h 05 min``."""
    if _num(seconds) is None:
        return "-"
    t = float(seconds)
    if t < 9.95:
        return f"{t:.1f} s"
    if t < 59.5:
        return f"{t:.0f} s"
    total = round(t)
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    hours, rest = divmod(total, 3600)
    return f"{hours} h {round(rest / 60):02d} min" if round(rest / 60) < 60 else f"{hours + 1} h 00 min"


def present_columns(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]
                    ) -> tuple[list[tuple[str, str]], list[str]]:
    """(columns with a value in some row, headers of those without one): a column empty in every job (peak CUDA
    memory on a CPU, a calibration never computed) says nothing, so the table leaves it out and names it."""
    kept = [(k, h) for k, h in cols if k in _ALWAYS or any(r.get(k) not in (None, "") for r in rows)]
    return kept, [h for k, h in cols if (k, h) not in kept]


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
        cells = (fmt_duration(r.get(k)) if k in DURATION_KEYS else _fmt(r.get(k)) for k, _ in cols)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def job_table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]) -> list[str]:
    """The all-jobs table without its empty columns, and a line naming those (Markdown lines)."""
    kept, dropped = present_columns(rows, cols)
    note = [f"Not recorded for any job, so not shown: {', '.join(dropped)}.", ""] if dropped else []
    return [md_table(rows, kept), "", *note]
