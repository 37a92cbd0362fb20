"""The mito study report: ``study.md``, ``study_configs.csv``, ``study_jobs.csv`` and ``study_figures/``.

Answers what the mito report wanted from its 36 runs, now at several seeds each: the best configuration per
architecture, learning-rate and batch-size sensitivity (with seed spread), epochs to best, and the test
Jaccard-vs-threshold curve of each architecture's best configuration. Differences within seed-to-seed noise are
reported as not answerable (:mod:`calib_seg.study_stats`). Never trains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calib_seg.fileio import atomic_write_text
from calib_seg.report_rows import md_table
from calib_seg.study_stats import (
    FIG_DIR,
    RULE,
    csv_text,
    fmt_ms,
    mean_sd,
    part_rows,
    setup_section,
    verdict_line,
)

PART = "grid"
VAL = "best val Jaccard"
BASE = "all-foreground Jaccard"
#: the numbers of a job the report tables and CSVs show, in this order
METRICS = (VAL, "test Jaccard", BASE, "epochs to best", "wall time [s]")
_CURVE = re.compile(r"^test/jaccard_t(\d\.\d+)$")


def _metrics(r: dict[str, Any]) -> dict[str, Any]:
    tm = (r.get("_record") or {}).get("test_metrics") or {}
    return {VAL: r.get("best_val"), "test Jaccard": r.get("jaccard"), BASE: r.get("jaccard_all_foreground"),
            "epochs to best": r.get("best_epoch"),
            "wall time [s]": r.get("time_s"),
            "curve": {float(m.group(1)): v for k, v in tm.items() if (m := _CURVE.match(k)) and v is not None}}


def configs(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, float, int], list[dict[str, Any]]]:
    """(architecture, lr, batch) -> its jobs (one per seed) that finished with a best validation Jaccard."""
    out: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] in ("completed", "aborted") and r.get("best_val") is not None:
            r["m"] = _metrics(r)
            out.setdefault((str(r.get("arch")), float(r.get("lr") or 0), int(r.get("batch") or 0)), []).append(r)
    return out


def _name(key: tuple[str, float, int]) -> str:
    return f"{key[0]} lr {key[1]:g} batch {key[2]}"


def _st(rs: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    return mean_sd([r["m"][metric] for r in rs])


def _best_per_arch(cf: dict[tuple[str, float, int], list[dict[str, Any]]]) -> dict[str, tuple[str, float, int]]:
    best: dict[str, tuple[str, float, int]] = {}
    for key, rs in cf.items():
        if key[0] not in best or _st(rs, VAL)["mean"] > _st(cf[best[key[0]]], VAL)["mean"]:
            best[key[0]] = key
    return dict(sorted(best.items()))


def _best_section(cf: dict, best: dict) -> list[str]:
    rows, lines = [], []
    for arch, key in best.items():
        rs = cf[key]
        rows.append({"arch": arch, "lr": key[1], "batch": key[2], "seeds": len(rs),
                     **{k: fmt_ms(_st(rs, k)) for k in METRICS}})
        mine = {_name(k): _st(v, VAL) for k, v in cf.items() if k[0] == arch}
        lines.append(f"- {arch}: {verdict_line(mine, VAL, lower_is_better=False)}")
    across = {a: _st(cf[k], VAL) for a, k in best.items()}
    return ["## 1. Best configuration per architecture", "", "Best = highest mean best validation Jaccard across "
            f"seeds (test Jaccard on the best checkpoint beside it; {BASE} = the test Jaccard of predicting every "
            "pixel foreground, the trivial answer).", "",
            md_table(rows, [("arch", "architecture"), ("lr", "lr"), ("batch", "batch"), ("seeds", "seeds")]
                     + [(k, k) for k in METRICS]), "", _baseline_line(cf), "",
            "Is the best configuration of each architecture distinguishable from its other configurations?", "",
            *lines, "", f"**Across architectures (each at its best):** {verdict_line(across, VAL, False)}", ""]


def _baseline_line(cf: dict) -> str:
    """How many jobs beat the trivial all-foreground answer on test Jaccard (a study of trivial models answers nothing)."""
    jobs = [r["m"] for rs in cf.values() for r in rs if r["m"]["test Jaccard"] is not None and r["m"][BASE] is not None]
    if not jobs:
        return f"**Against the trivial answer:** no job recorded both test Jaccard and {BASE}."
    above = sum(m["test Jaccard"] > m[BASE] for m in jobs)
    base = mean_sd([m[BASE] for m in jobs])["mean"]
    return (f"**Against the trivial answer:** {above} of {len(jobs)} jobs have a test Jaccard above the {BASE} "
            f"({base:.3g} on average)" + ("." if above else ": no model learned more than the trivial answer, so "
                                          "the comparisons below are between trivial models."))


def _sensitivity(cf: dict, best: dict, axis: int, what: str, title: str) -> list[str]:
    """Jaccard against lr (axis 1) or batch (axis 2), the other one held at each architecture's best value."""
    other = 3 - axis
    values = sorted({k[axis] for k in cf})
    rows, lines = [], []
    for arch, bk in best.items():
        sel = {k[axis]: cf[k] for k in cf if k[0] == arch and k[other] == bk[other]}
        rows.append({"arch": f"{arch} ({'batch' if axis == 1 else 'lr'} {bk[other]:g})",
                     **{f"{v:g}": fmt_ms(_st(sel[v], VAL)) if v in sel else "-" for v in values}})
        stats = {f"{what} {v:g}": _st(sel[v], VAL) for v in sel}
        spread = [s["mean"] for s in stats.values() if s["mean"] is not None]
        lines.append(f"- {arch}: " + (f"range of means {max(spread) - min(spread):.3g} across {what} values; "
                                      if len(spread) > 1 else "") + verdict_line(stats, VAL, lower_is_better=False))
    return [title, "", f"{VAL} mean ± sd across seeds per {what}, at each architecture's best "
            f"{'batch size' if axis == 1 else 'learning rate'} (figure: every combination).", "",
            md_table(rows, [("arch", "architecture")] + [(f"{v:g}", f"{what} {v:g}") for v in values]), "",
            *lines, ""]


def _epochs_section(cf: dict, best: dict) -> list[str]:
    stats = {a: _st(cf[k], "epochs to best") for a, k in best.items()}
    rows = [{"arch": a, "config": _name(k), "epochs": fmt_ms(stats[a]),
             "max_epochs": ((cf[k][0].get("_record") or {}).get("choices") or {}).get("max_epochs")}
            for a, k in best.items()]
    return ["## 4. Convergence speed: epochs to best", "", "1-based epoch of the best checkpoint (on val Jaccard) of "
            "each architecture's best configuration.", "",
            md_table(rows, [("arch", "architecture"), ("config", "configuration"), ("epochs", "epochs to best"),
                            ("max_epochs", "max epochs")]), "",
            f"**Fastest to its best:** {verdict_line(stats, 'epochs to best', lower_is_better=True)}", "",
            _still_improving(cf), ""]


def _still_improving(cf: dict) -> str:
    """How many jobs had their best checkpoint at their last epoch (epochs to best then measures the budget)."""
    last = [r for rs in cf.values() for r in rs
            if r["m"]["epochs to best"] is not None and r["m"]["epochs to best"] == r.get("epochs")]
    n = sum(len(rs) for rs in cf.values())
    return (f"{len(last)} of {n} jobs had their best checkpoint at their last epoch" +
            (": they were still improving, so their epochs to best is the epoch budget, not convergence."
             if last else "."))


def _threshold_section(cf: dict, best: dict) -> list[str]:
    ts = sorted({t for k in best.values() for r in cf[k] for t in r["m"]["curve"]})
    if not ts:
        return ["## 5. Jaccard vs threshold", "", "No test Jaccard curve recorded (`test/jaccard_t*`).", ""]
    rows = [{"t": f"{t:.2f}", **{a: fmt_ms(mean_sd([r["m"]["curve"].get(t) for r in cf[k]])) for a, k in best.items()}}
            for t in ts]
    peak = {a: max(ts, key=lambda t, k=k: mean_sd([r["m"]["curve"].get(t) for r in cf[k]])["mean"] or -1)
            for a, k in best.items()}
    return ["## 5. Jaccard vs threshold of each architecture's best configuration", "",
            "Test Jaccard (mean ± sd across seeds) at each probability threshold; the headline metrics use the "
            "task's threshold.", "", md_table(rows, [("t", "threshold")] + [(a, a) for a in best]), "",
            "Threshold of the best mean Jaccard: " + ", ".join(f"{a} {t:.2f}" for a, t in peak.items()) + ".", ""]


def build_mito_report(study_dir: str | Path, meta: dict[str, Any] | None = None, figures: bool = True) -> str:
    """Write the mito study report into ``study_dir``; return its Markdown."""
    study_dir, meta = Path(study_dir), meta or {}
    rows = part_rows(study_dir, PART)
    setup, _ = setup_section(study_dir, (PART,), rows, meta)
    cf = configs(rows)
    best = _best_per_arch(cf)
    md = [f"# Mito study: `{study_dir.name}`", "", *setup, "## How to read this report", "", RULE, ""]
    if not best:
        md += ["No job finished with a best validation Jaccard yet.", ""]
    else:
        md += [*_best_section(cf, best),
               *_sensitivity(cf, best, 1, "lr", "## 2. Learning-rate sensitivity"),
               *_sensitivity(cf, best, 2, "batch", "## 3. Batch-size effects"),
               *_epochs_section(cf, best), *_threshold_section(cf, best)]
    left = [r for r in rows if "m" not in r]
    md += ["## Jobs not used", ""] + ([f"- job {r['job'].split('_', 1)[0]} {r['status']}: {r.get('reason') or '-'}"
                                       for r in left] or ["none"]) + [""]
    jobs = [{"job": r["job"].split("_", 1)[0], "arch": k[0], "lr": k[1], "batch": k[2],
             "seed": ((r.get("_record") or {}).get("choices") or {}).get("seed"), "status": r["status"],
             **{m: r["m"][m] for m in METRICS}}
            for k, rs in cf.items() for r in rs]
    md += [f"## Every job ({len(jobs)}, numbers from its run.json)", "",
           md_table(jobs, [(c, c) for c in (jobs[0] if jobs else {"job": 0})]), ""]
    if figures and best:
        from calib_seg.study_figures import mito_figures

        figs = mito_figures(study_dir / FIG_DIR, cf, best, VAL)
        md += ["## Figures", ""] + [f"### {cap}\n\n![{cap}]({FIG_DIR}/{name})\n" for cap, name in figs]
    conf_rows = [{"arch": k[0], "lr": k[1], "batch": k[2], "seeds": len(rs),
                  **{f"{m} {s}": _st(rs, m)[s] for m in METRICS for s in ("mean", "sd")}} for k, rs in cf.items()]
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(study_dir / "study_jobs.csv", csv_text(jobs))
    atomic_write_text(study_dir / "study_configs.csv", csv_text(conf_rows))
    atomic_write_text(study_dir / "study.md", text)
    return text
