"""The "Setup" section of a sweep report: what a lab report needs to say about how the numbers were made.

Read from what the sweep left (``multirun.yaml`` and the jobs' ``run.json``): the date, the code version, the data
set (source, fingerprint, split sizes), the seed(s), the device and launcher, what the sweep varied and the
overrides every job shared. A value that differs between jobs is listed with every variant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _sweep_overrides(sweep: Path) -> tuple[list[str], list[str], str | None]:
    """(swept overrides, fixed overrides, launcher name) from ``multirun.yaml`` (empty when absent)."""
    path = sweep / "multirun.yaml"
    if not path.exists():
        return [], [], None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    params = cfg.hydra.get("sweeper", {}).get("params") or {}
    lines = list(cfg.hydra.overrides.task) + [f"{k}={v}" for k, v in params.items()]
    swept, fixed, seen = [], [], set()
    for ov in OverridesParser.create().parse_overrides(lines):
        key = ov.get_key_element()
        if key in seen or key.lstrip("+~") in ("resume", "hydra.sweep.dir"):
            continue  # the command line wins over sweeper params for the same key (Hydra's BasicSweeper)
        seen.add(key)
        (swept if ov.is_sweep_override() else fixed).append(ov.input_line)
    target = str((cfg.hydra.get("launcher") or {}).get("_target_") or "")
    return swept, fixed, target.rsplit(".", 1)[-1] or None


def _variants(values: Sequence[Any]) -> str:
    uniq = sorted({str(v) for v in values if v not in (None, "")})
    return ", ".join(f"`{v}`" for v in uniq) if uniq else "not recorded"


def setup_section(sweep: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's "Setup" section (Markdown lines)."""
    from calib_seg.records import read_record

    records = [rec for r in rows if r["status"] != "missing" and (rec := read_record(r["dir"]))]
    if not records:
        return []
    swept, fixed, launcher = _sweep_overrides(sweep)
    times = [(Path(r["dir"]) / "run.json").stat().st_mtime for r in rows if (Path(r["dir"]) / "run.json").exists()]
    date = dt.datetime.fromtimestamp(min(times), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if times else "?"
    prov = [rec.get("provenance") or {} for rec in records]
    data = [rec.get("data_fingerprint") or {} for rec in records]
    dirty = sum(bool(p.get("git_dirty")) for p in prov)
    splits = _variants("/".join(str((d.get("split_sizes") or {}).get(k, "?")) for k in ("train", "val", "test"))
                       for d in data if d.get("split_sizes"))
    return ["## Setup", "",
            f"- date: {date} (first job record)",
            f"- code: commit {_variants(str(p.get('git_commit'))[:12] for p in prov if p.get('git_commit'))}, "
            f"calib_seg {_variants((p.get('versions') or {}).get('calib_seg') for p in prov)}"
            + (f"; **{dirty} job(s) ran from a dirty tree**" if dirty else ""),
            f"- data: {_variants(d.get('source') for d in data)}, fingerprint "
            f"{_variants(d.get('sha256') for d in data)}, split train/val/test {splits}",
            f"- seed: {_variants((rec.get('choices') or {}).get('seed') for rec in records)}; device: "
            f"{_variants(rec.get('device') for rec in records)}; launcher: {launcher or 'not recorded'}",
            f"- varied: {', '.join(f'`{s}`' for s in swept) or 'nothing recorded'}",
            f"- fixed overrides: {', '.join(f'`{s}`' for s in fixed) or 'none'}", ""]
