"""Calibration verdict of a density model: error at every dilution level against the counting-statistics floor.

R² over 3.5 decades of density is dominated by the dense end; a model can score 0.997 and still be off by 9x at
the sparsest dilution. This module judges each level on its own (docs/calibration.md has the definitions):

- **floor**: the MAE a perfect counter would have at that level, i.e. the mean absolute deviation of
  Poisson(λ = density x FOV area) divided by the FOV area (exact, :func:`poisson_mad`);
- **excess** = model MAE / floor, and a **bias test** against what counting statistics allow at the level's n;
- a **log-log fit** of level means vs nominal, a **proportionality index**, the **quantification range** and the
  **fields per sample** needed for a 10 % CV.

Pure functions from numpy arrays to plain dicts (JSON-ready); no torch, no files. Densities in beads/mm²,
areas in mm², every percentage in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: bioanalytical method validation practice: |bias| and CV within 15 %, 20 % at the lowest level of the range
RANGE_LIMIT_PCT = 15.0
RANGE_LIMIT_LOWEST_PCT = 20.0
#: the CV a lab wants per sample; fields per sample n = (CV / target)²
TARGET_CV_PCT = 10.0
PROPORTIONALITY_DEFINITION = (
    "RMS of the level means' relative residuals from the best proportional fit through the origin, "
    "mean = k x nominal with k = mean(level mean / nominal), in %")


@dataclass(frozen=True)
class CalibrationSettings:
    """Thresholds of the verdict (config group ``calibration``; docs/calibration.md).

    Args:
        max_excess: a level fails when its MAE exceeds this multiple of the counting-statistics floor.
        bias_z: a level fails when |mean - nominal| > bias_z x SE, SE = max(model SD, Poisson SD) / sqrt(n).
        max_slope_deviation: the log-log fit is linear when |slope - 1| <= this.
    """

    max_excess: float = 2.0
    bias_z: float = 3.0
    max_slope_deviation: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_excess", "bias_z", "max_slope_deviation"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"calibration.{name} must be a number > 0, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> CalibrationSettings:
        """Settings from a config node (None or missing keys: the defaults); unknown keys are an error."""
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown calibration setting(s) {sorted(unknown)}; allowed: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**{k: float(v) for k, v in values.items()})


# ------------------------------------------------------------------------------------------------ the floor
def poisson_mad(lam: float | np.ndarray) -> float | np.ndarray:
    """Exact mean absolute deviation E|X - λ| of X ~ Poisson(λ): ``2 λ^(k+1) e^(-λ) / k!`` with k = floor(λ).

    Computed in log space (``lgamma``) so it stays finite for λ in the millions; ~0.8 sqrt(λ) for large λ.
    """
    lam_arr = np.asarray(lam, dtype=float)
    if np.any(~np.isfinite(lam_arr)) or np.any(lam_arr < 0):
        raise ValueError(f"Poisson mean must be finite and >= 0, got {lam}")
    safe = np.where(lam_arr > 0, lam_arr, 1.0)
    k = np.floor(safe)
    from scipy.special import gammaln

    log_mad = math.log(2.0) + (k + 1) * np.log(safe) - safe - gammaln(k + 1)
    out = np.where(lam_arr > 0, np.exp(log_mad), 0.0)
    return float(out) if np.ndim(lam) == 0 else out


def floor_mae(nominal: np.ndarray, area_mm2: float | np.ndarray) -> np.ndarray:
    """Per-sample MAE of a perfect counter in beads/mm²: MAD of Poisson(nominal x area) / area."""
    nominal, area = np.asarray(nominal, float), np.broadcast_to(np.asarray(area_mm2, float), np.shape(nominal))
    return poisson_mad(nominal * area) / area


# ------------------------------------------------------------------------------------------------ levels
def assign_levels(nominal: np.ndarray, dilution: np.ndarray | None = None,
                  n_bins: int = 10) -> tuple[np.ndarray, list[str], str]:
    """Group samples into levels: (level index per sample, level names, kind).

    A level is a dilution (``kind="dilution"``) when every sample has a finite dilution; else a distinct nominal
    density (``"nominal"``); when every density is distinct (no replicates), deciles of the nominal density
    (``"decile"``). Levels are ordered densest first, as a dilution series is written (50x before 51200x).
    """
    nominal = np.asarray(nominal, float).reshape(-1)
    if nominal.size == 0:
        raise ValueError("no samples to group into levels")
    if np.any(~np.isfinite(nominal)) or np.any(nominal <= 0):
        raise ValueError("nominal densities must be finite and > 0 (the floor and relative errors need them)")
    dil = None if dilution is None else np.asarray(dilution, float).reshape(-1)
    if dil is not None and dil.shape != nominal.shape:
        raise ValueError(f"dilution has {dil.size} values for {nominal.size} samples")
    if dil is not None and np.all(np.isfinite(dil)):
        keys, kind = dil, "dilution"
        uniq = sorted(np.unique(keys))  # ascending dilution = densest first
        names = [f"{d:g}x" for d in uniq]
    elif len(np.unique(nominal)) < nominal.size or nominal.size == 1:
        keys, kind = nominal, "nominal"
        uniq = sorted(np.unique(keys), reverse=True)
        names = [f"{v:.4g}/mm²" for v in uniq]
    else:
        kind = "decile"
        edges = np.unique(np.quantile(nominal, np.linspace(0, 1, min(n_bins, nominal.size) + 1)))
        keys = np.clip(np.searchsorted(edges, nominal, side="right") - 1, 0, len(edges) - 2).astype(float)
        present = sorted(np.unique(keys), reverse=True)
        uniq = present
        names = [f"{edges[int(b)]:.4g}-{edges[int(b) + 1]:.4g}/mm²" for b in present]
    index = np.empty(nominal.size, dtype=int)
    for i, u in enumerate(uniq):
        index[keys == u] = i
    return index, names, kind


# ------------------------------------------------------------------------------------------------ per level
def _none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def level_stats(pred: np.ndarray, nominal: np.ndarray, area_mm2: np.ndarray | None, count: np.ndarray | None,
                settings: CalibrationSettings) -> dict[str, Any]:
    """The row of one level (see :func:`calibrate` for the fields); ``area_mm2`` None when the FOV is unknown."""
    p, t = np.asarray(pred, float), np.asarray(nominal, float)
    n = p.size
    mean, nom = float(p.mean()), float(t.mean())
    sd = float(p.std(ddof=1)) if n > 1 else math.nan
    err = p - t
    mae = float(np.abs(err).mean())
    row: dict[str, Any] = {
        "n": n, "nominal": nom, "mean": mean, "sd": _none(sd),
        "bias": 100.0 * (mean - nom) / nom,
        "cv": _none(100.0 * sd / mean) if mean > 0 else None,
        "mae": mae, "mape": float(100.0 * np.mean(np.abs(err) / t)),
        "floor_mae": None, "floor_mape": None, "oracle_mae": None, "excess": None,
        "poisson_cv": None, "bias_allowance": None, "bias_ok": None, "excess_ok": None,
    }
    poisson_sd = math.nan
    if area_mm2 is not None:
        a = np.broadcast_to(np.asarray(area_mm2, float), t.shape)
        lam = t * a
        floors = floor_mae(t, a)
        row["floor_mae"] = float(floors.mean())
        row["floor_mape"] = float(100.0 * np.mean(floors / t))
        row["excess"] = _none(mae / row["floor_mae"]) if row["floor_mae"] > 0 else None
        row["poisson_cv"] = float(100.0 / math.sqrt(lam.mean()))
        poisson_sd = float(np.sqrt(np.mean(lam / a**2)))  # per-image SD of a perfect counter, beads/mm²
        if count is not None:
            c = np.asarray(count, float)
            if np.all(np.isfinite(c)):
                row["oracle_mae"] = float(np.abs(c / a - t).mean())
    # the bias test: the level mean may differ from nominal by what its own noise allows at this n, and never
    # by less than a perfect counter's noise (a model with tiny spread is not held to an impossible standard)
    spread = np.nanmax([sd, poisson_sd]) if np.isfinite([sd, poisson_sd]).any() else math.nan
    allowance = settings.bias_z * spread / math.sqrt(n) if np.isfinite(spread) else math.nan
    row["bias_allowance"] = _none(allowance)
    row["bias_ok"] = bool(abs(mean - nom) <= allowance) if np.isfinite(allowance) else None
    row["excess_ok"] = None if row["excess"] is None else bool(row["excess"] <= settings.max_excess)
    row["passed"] = row["bias_ok"] is not False and row["excess_ok"] is not False
    row["fields_per_sample"] = _fields(row["cv"])
    row["fields_per_sample_poisson"] = _fields(row["poisson_cv"])
    return row


def _fields(cv_pct: float | None) -> int | None:
    """Images to average per sample for a CV of TARGET_CV_PCT: n = (CV / 10 %)², at least 1."""
    if cv_pct is None:
        return None
    return max(1, math.ceil((cv_pct / TARGET_CV_PCT) ** 2 - 1e-9))


# ------------------------------------------------------------------------------------------------ over levels
def loglog_fit(nominal: Sequence[float], mean: Sequence[float], max_slope_deviation: float = 0.05) -> dict[str, Any] | None:
    """OLS of log10(level mean) on log10(nominal): slope, intercept, R² in log space; None with < 2 usable levels.

    Levels whose mean prediction is <= 0 cannot be placed on a log axis; they are counted in ``excluded``.
    """
    x, y = np.asarray(nominal, float), np.asarray(mean, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return None
    lx, ly = np.log10(x[ok]), np.log10(y[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    dof = int(ok.sum()) - 2
    se = math.sqrt(float((resid**2).sum()) / dof / float(((lx - lx.mean()) ** 2).sum())) if dof > 0 else math.nan
    return {"slope": float(slope), "intercept": float(intercept), "r2": _none(r2), "slope_se": _none(se),
            "n_levels": int(ok.sum()), "excluded": int((~ok).sum()),
            "passed": bool(abs(slope - 1.0) <= max_slope_deviation), "max_slope_deviation": max_slope_deviation}


def proportionality(nominal: Sequence[float], mean: Sequence[float]) -> dict[str, Any] | None:
    """Proportionality index (%): RMS of relative residuals of the level means from ``mean = k x nominal``.

    k = mean(level mean / nominal), the weighted least-squares fit through the origin with weights 1/nominal²
    (so every level counts by its relative, not absolute, error). None with < 2 levels or k <= 0.
    """
    x, y = np.asarray(nominal, float), np.asarray(mean, float)
    if x.size < 2:
        return None
    k = float(np.mean(y / x))
    if k <= 0:
        return None
    rel = y / (k * x) - 1.0
    return {"index": float(100.0 * np.sqrt(np.mean(rel**2))), "scale": k,
            "relative_residuals": [float(100.0 * r) for r in rel], "definition": PROPORTIONALITY_DEFINITION}


def quantification_range(levels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The widest contiguous run of levels (by nominal density) with |bias| and CV within 15 %, 20 % at its lowest.

    ``levels`` are rows of :func:`level_stats` with ``level`` names; the run is the one with the most levels
    (ties: the one reaching the sparser end). Empty when no level qualifies.
    """
    order = sorted(range(len(levels)), key=lambda i: levels[i]["nominal"])  # sparsest first

    def ok(i: int, limit: float) -> bool:
        r = levels[i]
        return r["cv"] is not None and abs(r["bias"]) <= limit and r["cv"] <= limit

    best: list[int] = []
    for start in range(len(order)):
        if not ok(order[start], RANGE_LIMIT_LOWEST_PCT):
            continue
        run = [order[start]]
        for j in order[start + 1:]:
            if not ok(j, RANGE_LIMIT_PCT):
                break
            run.append(j)
        if len(run) > len(best):
            best = run
    rule = (f"contiguous levels with |bias| <= {RANGE_LIMIT_PCT:g} % and CV <= {RANGE_LIMIT_PCT:g} % "
            f"({RANGE_LIMIT_LOWEST_PCT:g} % at the lowest level)")
    if not best:
        return {"low_level": None, "high_level": None, "low": None, "high": None, "levels": [], "n_levels": 0,
                "rule": rule}
    lo, hi = levels[best[0]], levels[best[-1]]
    return {"low_level": lo["level"], "high_level": hi["level"], "low": lo["nominal"], "high": hi["nominal"],
            "levels": [levels[i]["level"] for i in best], "n_levels": len(best), "rule": rule}


# ------------------------------------------------------------------------------------------------ the verdict
def calibrate(pred: np.ndarray, nominal: np.ndarray, dilution: np.ndarray | None = None,
              count: np.ndarray | None = None, area_mm2: float | np.ndarray | None = None,
              settings: CalibrationSettings | None = None, split: str = "test") -> dict[str, Any]:
    """The calibration block of one prediction set (what run.json stores under ``calibration``).

    Args:
        pred: predicted densities (beads/mm²), one per image.
        nominal: the images' nominal (true) densities, > 0.
        dilution: dilution factor per image (NaN/None when unknown: levels fall back to densities).
        count: realised beads in each FOV (NaN/None when unknown): the oracle's MAE beside the floor.
        area_mm2: FOV area per image or one for all (None: no floor, no excess; the bias test uses the model SD).
        settings: thresholds of the verdict.
        split: name recorded in the block (``test``, ``val``, ...).

    Returns:
        ``{"verdict", "failing_levels", "levels": [per-level rows], "loglog", "proportionality",
        "quantification_range", "max_excess", ...}``; see docs/calibration.md for every field.
    """
    settings = settings or CalibrationSettings()
    pred = np.asarray(pred, float).reshape(-1)
    nominal = np.asarray(nominal, float).reshape(-1)
    if pred.shape != nominal.shape:
        raise ValueError(f"{pred.size} predictions for {nominal.size} nominal densities")
    if np.any(~np.isfinite(pred)):
        raise ValueError(f"{int((~np.isfinite(pred)).sum())} prediction(s) are not finite")
    cnt = None if count is None else np.asarray(count, float).reshape(-1)
    area = None if area_mm2 is None else np.broadcast_to(np.asarray(area_mm2, float), nominal.shape)
    if area is not None and (np.any(~np.isfinite(area)) or np.any(area <= 0)):
        raise ValueError("FOV areas must be finite and > 0 (or None when unknown)")
    index, names, kind = assign_levels(nominal, dilution)
    levels = []
    for i, name in enumerate(names):
        sel = index == i
        row = level_stats(pred[sel], nominal[sel], None if area is None else area[sel],
                          None if cnt is None else cnt[sel], settings)
        levels.append({"level": name, **row})
    qr = quantification_range(levels)
    for row in levels:
        row["in_range"] = row["level"] in qr["levels"]
    noms, means = [r["nominal"] for r in levels], [r["mean"] for r in levels]
    failing = [r["level"] for r in levels if not r["passed"]]
    worst = _worst(levels)
    block = {
        "split": split, "verdict": "fail" if failing else "pass", "failing_levels": failing,
        "level_kind": kind, "n": int(pred.size), "levels": levels,
        "loglog": loglog_fit(noms, means, settings.max_slope_deviation),
        "proportionality": proportionality(noms, means),
        "quantification_range": qr,
        "worst_level": worst["level"] if worst else None,
        "worst_excess": worst["excess"] if worst else None,
        "fov_area_mm2": float(area[0]) if area is not None and np.all(area == area[0]) else None,
        **asdict(settings),
    }
    block["line"] = verdict_line(block)
    return block


def _worst(levels: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    with_excess = [r for r in levels if r["excess"] is not None]
    if with_excess:
        return max(with_excess, key=lambda r: r["excess"])
    return max(levels, key=lambda r: abs(r["bias"])) if levels else None


# ------------------------------------------------------------------------------------------------ text
def _pcts(values: Sequence[float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.0f}" for v in values)


def verdict_line(block: Mapping[str, Any]) -> str:
    """One line a user reads first, e.g. ``calibration: FAIL at 6400x, 51200x (MAPE 68/826 %, floor 16/40 %)``."""
    levels = block["levels"]
    failing = [r for r in levels if not r["passed"]]
    if failing:
        text = (f"calibration: FAIL at {', '.join(r['level'] for r in failing)} "
                f"(MAPE {_pcts([r['mape'] for r in failing])} %, floor {_pcts([r['floor_mape'] for r in failing])} %)")
    else:
        text = f"calibration: PASS at all {len(levels)} level{'s' if len(levels) != 1 else ''}"
        if block.get("worst_excess") is not None:
            text += f" (worst excess {block['worst_excess']:.2f} at {block['worst_level']})"
    qr = block.get("quantification_range") or {}
    if qr.get("n_levels"):
        span = qr["low_level"] if qr["n_levels"] == 1 else f"{qr['low_level']}..{qr['high_level']}"
        dens = f"{qr['low']:.3g}" if qr["n_levels"] == 1 else f"{qr['low']:.3g}-{qr['high']:.3g}"
        text += f"; quantification range {span} ({dens} beads/mm²)"
    else:
        text += "; no quantification range"
    fit = block.get("loglog")
    if fit is not None and not fit["passed"]:
        text += f"; log-log slope {fit['slope']:.3f} (linear: 1 ± {fit['max_slope_deviation']:g})"
    return text


_TABLE_COLS = (("level", "level", "{}"), ("n", "n", "{}"), ("nominal", "nominal", "{:.4g}"),
               ("mean", "mean", "{:.4g}"), ("sd", "SD", "{:.3g}"), ("bias", "bias %", "{:+.1f}"),
               ("cv", "CV %", "{:.1f}"), ("poisson_cv", "Poisson CV %", "{:.1f}"), ("mae", "MAE", "{:.3g}"),
               ("floor_mae", "floor MAE", "{:.3g}"), ("oracle_mae", "oracle MAE", "{:.3g}"),
               ("excess", "excess", "{:.2f}"), ("mape", "MAPE %", "{:.1f}"), ("floor_mape", "floor %", "{:.1f}"),
               ("fields_per_sample", "fields", "{}"), ("in_range", "in range", "{}"), ("passed", "pass", "{}"))


def table_text(block: Mapping[str, Any]) -> str:
    """The per-level table as an aligned Markdown table (console, TensorBoard text and reports alike).

    Densities in beads/mm²; ``fields`` = images per sample for a 10 % CV; ``-`` where a value is unknown.
    """
    def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return fmt.format(v)

    header = [h for _, h, _ in _TABLE_COLS]
    body = [[cell(r, k, f) for k, _, f in _TABLE_COLS] for r in block["levels"]]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(b) for b in body)])


def summary_text(block: Mapping[str, Any]) -> str:
    """Verdict line, fits and the per-level table: the full text printed by train/evaluate/predict."""
    return "\n".join([*summary_head(block), table_text(block)])


def summary_head(block: Mapping[str, Any]) -> list[str]:
    """The lines above the table: verdict, log-log fit, proportionality index, what was judged and how."""
    lines = [block["line"]]
    fit, prop = block.get("loglog"), block.get("proportionality")
    if fit is not None:
        lines.append(f"log-log fit of level means: slope {fit['slope']:.3f}, intercept {fit['intercept']:+.3f}, "
                     f"R² {fit['r2']:.4f}" if fit["r2"] is not None else f"log-log slope {fit['slope']:.3f}")
    else:
        lines.append("log-log fit: n/a (fewer than 2 levels)")
    if prop is not None:
        lines.append(f"proportionality index {prop['index']:.1f} % (scale {prop['scale']:.3f})")
    area = block.get("fov_area_mm2")
    lines.append(f"{block['split']} set, {block['n']} images, levels by {block['level_kind']}"
                 + (f", FOV {area:.4g} mm²" if area else "") + f"; a level passes when excess <= "
                 f"{block['max_excess']:g} and |mean - nominal| <= {block['bias_z']:g} SE")
    return lines
