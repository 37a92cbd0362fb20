"""The calibration study report: ``study.md``, ``study_configs.csv``, ``study_jobs.csv`` and ``study_figures/``.

One section per question of the seed calibration report (section 8), in its order, each answered from the
jobs' ``run.json`` records of the three parts (architecture, filters, extrapolation) or stated as not answerable
under the rule of :mod:`calib_seg.study_stats`. Never trains; runs on a study that is still going.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calib_seg.fileio import atomic_write_text
from calib_seg.report_rows import md_table
from calib_seg.study_stats import (
    FIG_DIR,
    NOT_ANSWERABLE,
    RULE,
    aggregate,
    csv_text,
    fmt_ms,
    group_configs,
    mean_sd,
    pareto,
    part_rows,
    setup_section,
    verdict_line,
    winner,
)

RANGE_PARTS = ("architecture", "filters")  # trained and tested on the whole 50x..51200x series
EXTRAPOLATION = "extrapolation"
PARTS = (*RANGE_PARTS, EXTRAPOLATION)
SCORE = "range score"
SCORE_DEF = (f"**{SCORE}** = geometric mean over the test levels of excess = level MAE / counting-statistics floor "
             f"(docs/calibration.md): 1 means a perfect counter at every dilution, lower is better. It weighs "
             f"every dilution equally, unlike R² and MAE, which the dense end dominates.")


def job_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one job the study uses, all read from its ``run.json`` (None where not recorded)."""
    rec = row.get("_record") or {}
    cal = rec.get("calibration") or {}
    levels = [lv for lv in cal.get("levels") or [] if isinstance(lv, dict)]
    ex = [lv["excess"] for lv in levels if isinstance(lv.get("excess"), (int, float)) and lv["excess"] > 0]
    at50 = next((lv for lv in levels if lv.get("level") == "50x"), {})
    return {
        "seed": (rec.get("choices") or {}).get("seed"), "status": row["status"], "params": row.get("params"),
        "verdict": cal.get("verdict"), "levels": {lv.get("level"): lv for lv in levels},
        SCORE: math.exp(sum(math.log(x) for x in ex) / len(ex)) if ex else None,
        "levels passed": sum(1 for lv in levels if lv.get("passed")) if levels else None,
        "worst excess": row.get("worst_excess"), "test R²": row.get("r2"), "test MAE": row.get("mae"),
        "wall time [s]": row.get("time_s"), "time/epoch [s]": row.get("time_per_epoch_s"),
        "epochs": row.get("epochs"), "peak memory [MB]": row.get("peak_cuda_mb") or row.get("peak_rss_mb"),
        "50x MAE": at50.get("mae"), "50x MAPE %": at50.get("mape"), "50x bias %": at50.get("bias"),
        "50x excess": at50.get("excess"), "50x pass": at50.get("passed"),
    }


def usable(row: dict[str, Any]) -> bool:
    """A job counts as evidence when it finished (completed, or aborted by a final verdict) with a calibration."""
    return row["status"] in ("completed", "aborted") and bool(((row.get("_record") or {}).get("calibration") or {})
                                                              .get("levels"))


_NUMS = (SCORE, "levels passed", "worst excess", "test R²", "test MAE", "params", "wall time [s]", "time/epoch [s]",
         "epochs", "peak memory [MB]", "50x MAE", "50x MAPE %", "50x bias %", "50x excess")


def _stats(groups: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    return aggregate(groups, {k: (lambda r, k=k: r["m"][k]) for k in _NUMS})


def _passes(rows: Sequence[dict[str, Any]], level: str | None = None) -> str:
    """``k/n``: jobs whose verdict (or ``level``) passes, of the jobs."""
    ok = [r for r in rows if (r["m"]["levels"].get(level, {}).get("passed") if level else r["m"]["verdict"] == "pass")]
    return f"{len(ok)}/{len(rows)}"


def _config_table(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any], cols: Sequence[str]) -> str:
    rows = [{"config": c, "seeds": len(rs), "aborted": sum(r["status"] == "aborted" for r in rs),
             "verdict pass": _passes(rs), **{k: fmt_ms(st[c][k]) for k in cols}} for c, rs in groups.items()]
    head = [("config", "configuration"), ("seeds", "seeds"), ("aborted", "aborted"), ("verdict pass", "verdict pass")]
    return md_table(rows, head + [(k, k) for k in cols])


def _level_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    levels: list[str] = []
    for rs in groups.values():
        for r in rs:
            levels += [lv for lv in r["m"]["levels"] if lv not in levels]
    rows = []
    for lv in levels:
        row = {"level": lv}
        for c, rs in groups.items():
            s = mean_sd([r["m"]["levels"].get(lv, {}).get("excess") for r in rs])
            row[c] = f"{fmt_ms(s)} ({_passes(rs, lv)})"
        rows.append(row)
    rows.append({"level": "**verdict**", **{c: f"pass {_passes(rs)}" for c, rs in groups.items()}})
    return md_table(rows, [("level", "level")] + [(c, c) for c in groups])


# ------------------------------------------------------------------------------------------------ sections
def q1_range(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any]) -> list[str]:
    """Q1: which architecture handles the 50x..51200x range best (architecture and filter studies)."""
    sub = {c: st[c][SCORE] for c in groups}
    return ["## 1. Which architecture handles the calibration density range (50x-51200x) best?", "",
            "Every configuration of the architecture and filter studies, trained and tested on the whole dilution "
            f"series, ranked by {SCORE} (defined above).", "",
            f"**Answer:** {verdict_line(sub, SCORE, lower_is_better=True)}", "",
            _config_table(groups, st, [SCORE, "levels passed", "worst excess", "test R²", "test MAE", "params"]), "",
            "Per-level calibration: excess (level MAE / floor) mean ± sd across seeds, and (k/n) the seeds whose "
            "level passes (excess <= max_excess and no significant bias); last row: the run verdict (every level "
            "passes).", "", _level_table(groups), ""]


def q2_extrapolation(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any]) -> list[str]:
    """Q2: how capacity affects the error at 50x when 50x was never seen in training."""
    md = ["## 2. How does model capacity affect extrapolated 50x density prediction?", "",
          "The filter study's configurations trained without the 50x images (`data.holdout_dilutions=[50]`) and "
          "tested on them only; capacity = trainable parameters.", ""]
    if not groups:
        return md + [f"**Answer: {NOT_ANSWERABLE}**: the extrapolation part has no finished job.", ""]
    order = sorted(groups, key=lambda c: st[c]["params"]["mean"] or 0)
    sub = {c: st[c]["50x MAPE %"] for c in order}
    lo, hi = order[0], order[-1]
    best, ties = winner({c: sub[c] for c in (lo, hi)}, lower_is_better=True)
    if lo == hi:
        trend = f"{NOT_ANSWERABLE}: only one capacity was run."
    elif best is None:
        trend = (f"{NOT_ANSWERABLE}: the smallest ({lo}, {fmt_ms(st[lo]['params'])} parameters) and the largest "
                 f"({hi}) configuration have 50x MAPE {fmt_ms(sub[lo])} and {fmt_ms(sub[hi])} %, within "
                 f"seed-to-seed noise.")
    else:
        trend = (f"more capacity {'lowers' if best == hi else 'raises'} the 50x error: {lo} {fmt_ms(sub[lo])} % vs "
                 f"{hi} {fmt_ms(sub[hi])} % MAPE, beyond seed-to-seed noise.")
    return md + [f"**Answer (capacity):** {trend}  ", f"**Best at 50x:** {verdict_line(sub, '50x MAPE', True)}", "",
                 _config_table({c: groups[c] for c in order}, st,
                               ["params", "50x MAE", "50x MAPE %", "50x bias %", "50x excess"]), ""]


def q3_tradeoff(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any]) -> list[str]:
    """Q3: model complexity against training time (and peak memory), with the accuracy they buy."""
    front = pareto({c: (st[c]["wall time [s]"]["mean"], st[c][SCORE]["mean"]) for c in groups})
    order = sorted(groups, key=lambda c: st[c]["params"]["mean"] or 0)
    md = ["## 3. Trade-off between model complexity and training time", "",
          "Training time is wall time of the whole job (training, validation, test) on the launcher's hardware, "
          "also subject to the machine's load; time/epoch is the measured training + validation time per epoch. "
          "Peak memory is the job's peak CUDA allocation on GPU, else the process's peak RSS: with the basic "
          "(in-process) launcher that process also ran the sweep's earlier jobs, so compare it across "
          "configurations only with a launcher that starts one process per job (submitit, SLURM, PBS).",
          "", _config_table({c: groups[c] for c in order}, st,
                            ["params", "wall time [s]", "time/epoch [s]", "epochs", "peak memory [MB]", SCORE]), ""]
    if len(order) >= 2:
        lo, hi = order[0], order[-1]
        tw, _ = winner({c: st[c]["time/epoch [s]"] for c in (lo, hi)}, lower_is_better=True)
        md.append("**Answer (time):** " + (
            f"{NOT_ANSWERABLE}: time/epoch of {lo} ({fmt_ms(st[lo]['time/epoch [s]'])} s) and {hi} "
            f"({fmt_ms(st[hi]['time/epoch [s]'])} s) are within seed-to-seed noise." if tw is None else
            f"the largest model ({hi}, {fmt_ms(st[hi]['params'])} parameters) takes {fmt_ms(st[hi]['time/epoch [s]'])} "
            f"s/epoch against {fmt_ms(st[lo]['time/epoch [s]'])} s for the smallest ({lo})."))
    md += [f"**Answer (accuracy bought):** {verdict_line({c: st[c][SCORE] for c in groups}, SCORE, True)}  ",
           f"Pareto-optimal on mean wall time and mean {SCORE} (no other configuration is both faster and more "
           f"accurate): {', '.join(front) or '-'}.", ""]
    return md


def q4_recommendation(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any]) -> list[str]:
    """Q4: the recommendation, with its criterion."""
    crit = (f"**Criterion:** among the configurations whose calibration verdict passes at every seed, take those "
            f"tied with the best {SCORE} under the rule above (within seed-to-seed noise), and of those the one with "
            f"the shortest mean wall time.")
    md = ["## 4. Which configuration balances accuracy and efficiency?", "", crit, ""]
    ok = {c: rs for c, rs in groups.items() if rs and all(r["m"]["verdict"] == "pass" for r in rs)}
    if not ok:
        _, ties = winner({c: st[c][SCORE] for c in groups}, True)
        return md + [f"**Recommendation: none.** No configuration passes the calibration verdict at every seed, so "
                     f"none is fit for calibration use. By {SCORE} alone the closest are {', '.join(ties) or '-'}; "
                     f"the failing levels are in the per-level table of section 1.", ""]
    _, ties = winner({c: st[c][SCORE] for c in ok}, True)
    pick = min(ties, key=lambda c: st[c]["wall time [s]"]["mean"] or math.inf)
    others = [c for c in ties if c != pick]
    return md + [f"**Recommendation: {pick}** ({SCORE} {fmt_ms(st[pick][SCORE])}, wall time "
                 f"{fmt_ms(st[pick]['wall time [s]'])} s, {fmt_ms(st[pick]['params'])} parameters; passes at "
                 f"{_passes(groups[pick])} seeds)."
                 + (f" Within noise of it on accuracy, and slower: {', '.join(others)}." if others else ""), ""]


# ------------------------------------------------------------------------------------------------ outputs
def _jobs_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("seed", "status", "verdict", SCORE, "levels passed", "worst excess", "test R²", "test MAE", "50x MAPE %",
            "50x bias %", "params", "wall time [s]", "time/epoch [s]", "peak memory [MB]")
    return [{"part": r["part"], "config": r["config"], "job": r["job"].split("_", 1)[0], **{k: r["m"][k] for k in keys}} for r in rows]


def _config_rows(groups: dict[str, list[dict[str, Any]]], st: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c, rs in groups.items():
        row: dict[str, Any] = {"part": rs[0]["part"], "config": c, "seeds": len(rs), "verdict_pass": _passes(rs)}
        for k in _NUMS:
            row.update({f"{k} mean": st[c][k]["mean"], f"{k} sd": st[c][k]["sd"]})
        out.append(row)
    return out


def build_study_report(study_dir: str | Path, meta: dict[str, Any] | None = None, figures: bool = True) -> str:
    """Write study.md, study_configs.csv, study_jobs.csv and study_figures/ into ``study_dir``; return the text."""
    study_dir, meta = Path(study_dir), meta or {}
    rows = [r for p in PARTS for r in part_rows(study_dir, p)]
    setup, warnings = setup_section(study_dir, PARTS, rows, meta)
    used = [r for r in rows if usable(r)]
    by_part: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in PARTS:  # configurations are named over all of a part's jobs, then only the usable ones count
        for c, rs in group_configs([r for r in rows if r["part"] == p and r["status"] != "missing"]).items():
            for r in rs:
                r["config"], r["m"] = c, job_metrics(r)
            if [r for r in rs if usable(r)]:
                by_part.setdefault(p, {})[c] = [r for r in rs if usable(r)]
    rng = {c: rs for p in RANGE_PARTS for c, rs in by_part.get(p, {}).items()}
    ext = by_part.get(EXTRAPOLATION, {})
    st, st_ext = _stats(rng), _stats(ext)
    md = [f"# Calibration study: `{study_dir.name}`", "", *setup, "## How to read this report", "", RULE, "",
          SCORE_DEF, "", *q1_range(rng, st), *q2_extrapolation(ext, st_ext), *q3_tradeoff(rng, st),
          *q4_recommendation(rng, st)]
    left = [r for r in rows if not usable(r)]
    md += ["## Jobs not used", ""] + ([f"- `{r['part']}` job {r['job'].split('_', 1)[0]} ({r.get('config', '?')}) {r['status']}: {r.get('reason') or 'no test calibration'}"
                                       for r in left] or ["none"]) + [""]
    jobs = _jobs_table(used)
    md += [f"## Every job ({len(jobs)}, numbers from its run.json)", "",
           md_table(jobs, [(k, k) for k in (jobs[0] if jobs else {"part": 0})]), ""]
    if figures and used:
        from calib_seg.study_figures import calibration_figures

        figs = calibration_figures(study_dir / FIG_DIR, rng, st, ext, st_ext, SCORE)
        md += ["## Figures", ""] + [f"### {cap}\n\n![{cap}]({FIG_DIR}/{name})\n" for cap, name in figs]
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(study_dir / "study_jobs.csv", csv_text(jobs))
    atomic_write_text(study_dir / "study_configs.csv", csv_text(_config_rows(rng, st) + _config_rows(ext, st_ext)))
    atomic_write_text(study_dir / "study.md", text)
    return text
