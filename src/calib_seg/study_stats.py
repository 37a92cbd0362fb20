"""What the study reports share: the jobs of a study grouped into configurations, mean ± sd across seeds, the
rule that decides whether a difference is an answer or seed-to-seed noise, and the setup section.

The decision rule (stated in every study report): a configuration *wins* on a metric only when it is best by
the mean across seeds **and** its mean ± sd interval does not overlap the mean ± sd interval of any other
configuration, each with at least :data:`MIN_SEEDS` seeds. Otherwise the question is "not answerable from this
evidence" and the report names the configurations within noise of the best. With 3 seeds, non-overlapping
±1 sd intervals is a lenient screen rather than a significance test; the report says so.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calib_seg.records import read_record
from calib_seg.report_rows import collect, provenance_warnings

#: fewer seeds than this give no estimate of seed-to-seed noise, so no configuration can win
MIN_SEEDS = 2
FIG_DIR = "study_figures"
NOT_ANSWERABLE = "not answerable from this evidence"
RULE = (f"A configuration is named best on a metric only when it is best by the mean across seeds and its "
        f"mean ± sd interval (sample sd over seeds) does not overlap that of any other configuration, every one "
        f"with at least {MIN_SEEDS} seeds; otherwise the answer is \"{NOT_ANSWERABLE}\". With a handful of seeds "
        f"this screens out seed-to-seed noise; it is not a significance test.")
_NOT_A_CHOICE = ("seed=", "hydra.", "+resume", "resume=", "ckpt_path=", "hparams_search=")


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd (ddof 1; None for one value) and count of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "sd": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "sd": sd, "n": len(xs)}


def fmt_ms(s: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± sd`` (``mean`` alone for one seed, ``-`` for none)."""
    if not s or s.get("mean") is None:
        return "-"

    def f(x: float) -> str:
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"

    return f(s["mean"]) if s.get("sd") is None else f"{f(s['mean'])} ± {f(s['sd'])}"


def job_overrides(job_dir: Path) -> list[str]:
    """The overrides of a job (``.hydra/overrides.yaml``) that choose its configuration (seed etc. left out)."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path) if not str(o).startswith(_NOT_A_CHOICE)]


def group_configs(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by configuration, named by the overrides that differ between configurations.

    ``experiment=C01`` is shown as ``C01``; a part with a single configuration is named by its experiment.
    """
    keys = {id(r): tuple(job_overrides(r["dir"])) for r in rows}
    common = set.intersection(*(set(k) for k in keys.values())) if rows else set()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        varying = [o.removeprefix("experiment=") for o in keys[id(r)] if o not in common]
        name = ",".join(varying) or str(r.get("experiment") or "all")
        groups.setdefault(name, []).append(r)
    return groups


def part_rows(study_dir: Path, part: str) -> list[dict[str, Any]]:
    """The report rows (:func:`calib_seg.report.collect`) of one part's sweep folder, each tagged with the part."""
    sweep = Path(study_dir) / part
    rows = collect(sweep) if sweep.is_dir() else []
    for r in rows:
        r["part"] = part
        r["_record"] = read_record(r["dir"]) or {}
    return rows


def winner(stats: dict[str, dict[str, Any]], lower_is_better: bool) -> tuple[str | None, list[str]]:
    """(winner or None, configurations within noise of the best by mean) under the study's rule (:data:`RULE`)."""
    have = {k: s for k, s in stats.items() if s.get("mean") is not None}
    if not have:
        return None, []
    sign = 1.0 if lower_is_better else -1.0
    best = min(have, key=lambda k: sign * have[k]["mean"])
    b = have[best]
    if len(have) == 1:
        return None, [best]

    def interval(s: dict[str, Any]) -> tuple[float, float]:
        return s["mean"] - (s["sd"] or 0.0), s["mean"] + (s["sd"] or 0.0)

    ties = [best]
    for k, s in have.items():
        if k == best:
            continue
        lo_b, hi_b = interval(b)
        lo, hi = interval(s)
        enough = b["n"] >= MIN_SEEDS and s["n"] >= MIN_SEEDS
        apart = hi_b < lo if lower_is_better else lo_b > hi
        if not (enough and apart):
            ties.append(k)
    return (best if len(ties) == 1 else None), ties


def verdict_line(stats: dict[str, dict[str, Any]], metric: str, lower_is_better: bool) -> str:
    """One sentence: the winner on ``metric``, or why the question is not answerable."""
    best, ties = winner(stats, lower_is_better)
    if not ties:
        return f"**{NOT_ANSWERABLE}**: no configuration has a {metric}."
    if len(ties) == 1 and best is None:
        return (f"**{NOT_ANSWERABLE}**: only one configuration ({ties[0]}, {fmt_ms(stats[ties[0]])}) has a {metric}: "
                "nothing to compare.")
    if best is not None:
        return (f"**{best}** is best on {metric} ({fmt_ms(stats[best])}), beyond seed-to-seed noise of every "
                f"other configuration.")
    few = [k for k in stats if stats[k].get("n", 0) < MIN_SEEDS]
    why = (f"fewer than {MIN_SEEDS} seeds for {', '.join(few)}" if few else
           "the mean ± sd intervals overlap")
    return (f"**{NOT_ANSWERABLE}**: {ties[0]} has the best mean {metric} ({fmt_ms(stats[ties[0]])}) but "
            f"{', '.join(f'{k} ({fmt_ms(stats[k])})' for k in ties[1:])} {'is' if len(ties) == 2 else 'are'} "
            f"within seed-to-seed noise ({why}).")


def aggregate(groups: dict[str, list[dict[str, Any]]], metrics: dict[str, Callable[[dict[str, Any]], Any]]
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """config -> metric -> mean_sd over the config's jobs, with ``metrics`` = name -> value of a row."""
    return {c: {m: mean_sd([f(r) for r in rs]) for m, f in metrics.items()} for c, rs in groups.items()}


def pareto(points: dict[str, tuple[float | None, float | None]]) -> list[str]:
    """Names of the points not dominated when minimising both coordinates (points with a None are left out)."""
    have = {k: p for k, p in points.items() if None not in p}
    return [k for k, (x, y) in have.items()
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for k2, (x2, y2) in have.items() if k2 != k)]


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of ``rows`` (dicts with the same keys), header from the first row; empty for no rows."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def _launcher(sweep: Path) -> str:
    path = sweep / "multirun.yaml"
    if not path.exists():
        return "unknown (no multirun.yaml)"
    from omegaconf import OmegaConf

    target = OmegaConf.load(path).hydra.launcher.get("_target_", "?")
    return str(target).rsplit(".", 1)[-1]


def setup_section(study_dir: Path, parts: Sequence[str], rows: Sequence[dict[str, Any]],
                  meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(Markdown of the setup section, loud warnings). Warns when jobs mix code versions or data."""
    warnings = provenance_warnings(rows)
    done = [r for r in rows if r["status"] != "missing"]
    fps: dict[str, list[str]] = {}
    for r in done:
        fp = (r.get("_record") or {}).get("data_fingerprint") or {}
        fps.setdefault(str(fp.get("sha256", "none"))[:12], []).append(f"{r['part']}/{r['job']}")
    if len(fps) > 1:
        warnings.append(f"jobs saw {len(fps)} different data sets (data_fingerprint.sha256): "
                        + "; ".join(f"`{k}`: {len(v)} job(s), e.g. {v[0]}" for k, v in fps.items()))
    commits = sorted({str(r.get("git_commit"))[:12] for r in done})
    md = ["## Setup", "",
          f"- study folder: `{Path(study_dir).resolve()}`",
          f"- seeds per configuration: {meta.get('seeds', '?')} ({meta.get('seed_list', '?')})",
          f"- code version of the jobs: {', '.join(f'`{c}`' for c in commits) or '-'}"
          + (f" (calib_seg {done[0].get('calib_seg_version')})" if done else ""),
          f"- data fingerprint(s): {', '.join(f'`{k}` ({len(v)} jobs)' for k, v in fps.items()) or '-'}",
          f"- overrides for every job: `{' '.join(meta.get('overrides') or []) or '(none)'}`"]
    for p in parts:
        n = sum(1 for r in done if r["part"] == p)
        total = sum(1 for r in rows if r["part"] == p)
        md.append(f"- part `{p}`: launcher {_launcher(Path(study_dir) / p)}, {n} job(s) with a record of "
                  f"{total} job folder(s); command `{(meta.get('commands') or {}).get(p, '?')}`")
    md.append("")
    if warnings:
        md = ["> **WARNING: this study mixes jobs from different code versions or data. Numbers below may not be "
              "comparable; re-run the odd ones out (or start a new study folder).**", ">",
              *[f"> - {w}" for w in warnings], ""] + md
    return md, warnings
