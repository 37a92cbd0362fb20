"""The end-of-run summary table that ``calib_seg.train`` and ``calib_seg.evaluate`` both print.

One function, :func:`print_summary`, so a trained run and an evaluated checkpoint show the same rows, units and
digits: the task's headline numbers (with the physical reference, e.g. the oracle counter, beside the model),
epochs and wall time, then the run folder on its own line (copy-pasteable, never wrapped into the table title),
then the calibration verdict when there is one.
"""

from __future__ import annotations

import math
from typing import Any

from calib_seg.tasks.spec import all_specs, spec_of


def format_duration(seconds: float | None) -> str:
    """A wall time for people: ``4.7 s``, ``3 min 12 s``, ``1 h 05 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def summary_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label with unit, formatted value) for each row of the summary table of ``record``."""
    m = record.get("metrics") or {}
    spec = spec_of(record)
    headline = spec.headline if spec else [h for s in all_specs().values() for h in s.headline]
    one_level = len((record.get("calibration") or {}).get("levels") or []) == 1
    rows = []
    for row in headline:
        value = m.get(row.key)
        if row.may_be_undefined and row.key in m and (value is None or not math.isfinite(value)):
            rows.append((row.title, "n/a (one density level)" if one_level else "n/a"))  # R² undefined on one level
        elif row.key in m and value is not None:
            rows.append((row.title, row.format(value)))
    if record.get("epochs") is not None:  # an evaluation trains no epochs
        rows.append(("epochs (best)", f"{record.get('epochs')} ({record.get('best_epoch')})"))
    rows.append(("wall time", format_duration(record.get("wall_time_s"))))
    return rows


def print_summary(record: dict[str, Any]) -> None:
    """Print the summary table of a training or evaluation ``record`` (see the module docstring)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    kind = "evaluation" if record.get("status") == "evaluated" else "run"
    table = Table(title=escape(f"{record.get('task') or 'unknown task'} {kind}: {record.get('status')}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in summary_rows(record):  # labels carry units in brackets: not rich markup
        table.add_row(escape(label), escape(value))
    Console().print(table)
    # plain prints: a path or a Markdown table must not be re-wrapped or styled by rich
    print(f"run folder: {record.get('run_dir')}", flush=True)
    if record.get("checkpoint"):
        print(f"checkpoint: {record['checkpoint']}", flush=True)
    calibration = record.get("calibration")
    if calibration:
        from calib_seg.metrics.calibration import summary_text

        print(summary_text(calibration) if calibration.get("levels") else f"calibration: n/a ({calibration.get('error')})",
              flush=True)
