"""Shared helpers of the benchmark scripts: machine description, composed run configs, results writer.

Every benchmark writes its own section (``B1`` .. ``B6``) into ``benchmarks/results.json`` and re-renders
``benchmarks/results.md`` from that JSON, so benchmarks can be run separately and in any order. Scratch
(run folders, checkpoints, generated data) goes to ``benchmarks/_work/`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"
#: the shared data folder beside the clone; CALIB_SEG_SHARED points elsewhere (e.g. from a git worktree)
SHARED = Path(os.environ.get("CALIB_SEG_SHARED", REPO.parent / "shared"))
LUCCHI = SHARED / "data" / "lucchi_train"
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"

SECTION_TITLES = {
    "B1": "B1 density quality",
    "B1m": "B1 density-map rows (cpu_default data and test split)",
    "B2": "B2 segmentation quality",
    "B2e": "B2 segmentation quality on real EM (42 EPFL slices)",
    "B3": "B3 framework overhead",
    "B4": "B4 data pipeline",
    "B5": "B5 guard savings",
    "B6": "B6 inference",
    "B7": "B7 HPO: Optuna against the grid",
    "B8": "B8 dot-annotated counting protocol",
}


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> list[float]:
    """1/5/15-minute load averages (the machine is shared: timings are read beside them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "platform": platform.platform(),
    }
    try:
        import pytorch_lightning as pl

        info["pytorch_lightning"] = pl.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def command_line() -> str:
    """The exact command that produced a section (relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def shown(text: str) -> str:
    """A recorded command or path as a reader can re-run it: absolute paths inside the repository become
    relative to its root, and the shared data folder becomes ``../shared`` (its default place)."""
    for base, alias in ((REPO, ""), (SHARED.resolve(), "../shared/"), (SHARED, "../shared/")):
        text = text.replace(f"{base}/", alias)
    return text


class Timer:
    """``with Timer() as t: ...; t.s`` seconds (perf_counter)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s = time.perf_counter() - self.t0


# ------------------------------------------------------------------------------------------------ configs
def compose_run_cfg(overrides: Sequence[str], output_dir: Path):
    """The train config as Hydra would build it for a run writing into ``output_dir``."""
    from calib_seg.config import compose_for_run

    return compose_for_run(overrides, output_dir, job_id="bench")


def run_training(overrides: Sequence[str], name: str) -> dict[str, Any]:
    """Train + test one composed configuration with ``calib_seg.train.run`` in ``_work/<name>/<time>``."""
    from calib_seg.train import run

    out = WORK / name / time.strftime("%Y%m%d-%H%M%S")
    cfg = compose_run_cfg(list(overrides), out)
    return run(cfg)


# ------------------------------------------------------------------------------------------------ metrics
def regression_metrics(pred, target) -> dict[str, float]:
    """R², MAE, RMSE, MAPE (%) of predictions in beads/mm² (R² cross-checked with scikit-learn by the caller)."""
    import numpy as np

    p, t = np.asarray(pred, float).reshape(-1), np.asarray(target, float).reshape(-1)
    err = p - t
    ss_res, ss_tot = float((err**2).sum()), float(((t - t.mean()) ** 2).sum())
    return {"r2": 1.0 - ss_res / ss_tot, "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())),
            "mape": float(np.mean(np.abs(err) / np.abs(t)) * 100.0)}


def per_dilution_mae(pred, target, dilution) -> dict[str, float]:
    """MAE per dilution level, keys like ``"50x"``."""
    import numpy as np

    p, t, d = (np.asarray(a, float).reshape(-1) for a in (pred, target, dilution))
    return {f"{v:g}x": float(np.abs(p[d == v] - t[d == v]).mean()) for v in np.unique(d)}


# ------------------------------------------------------------------------------------------------ results
def read_results(path: Path = RESULTS_JSON) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_markdown(results: dict[str, Any]) -> str:
    """results.md from results.json: machine, then each section's own markdown in B1..B6 order."""
    m = results.get("machine", {})
    lines = ["# calib_seg benchmarks", "",
             "Written by `benchmarks/` (`make bench` = `benchmarks/run_all.py --quick`); raw figures in "
             "`results.json`. Each section says the command that produced it, when, at which size (quick = "
             "this CPU machine, full = GPU) and the load average while it ran: the machine is shared, so "
             "absolute timings are noisy and same-process ratios are the figures to trust.", "",
             "## Machine", ""]
    for k in ("cpu_model", "cores", "torch_threads", "device", "torch", "pytorch_lightning", "python", "platform"):
        if k in m:
            lines.append(f"- {k}: {m[k]}")
    lines.append("")
    sections = results.get("markdown", {})
    for key in SECTION_TITLES:
        if key in sections:
            lines += [sections[key].rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_section(key: str, figures: dict[str, Any], markdown: str, path: Path = RESULTS_JSON,
                  md_path: Path | None = None) -> dict[str, Any]:
    """Merge one benchmark's figures and markdown into results.json, then re-render results.md.

    ``figures`` replaces ``results[key]`` as a whole (the latest run of that benchmark wins); other sections are
    left as they are. ``markdown`` is the section's text (a heading, the command, tables, notes).
    """
    if key not in SECTION_TITLES:
        raise ValueError(f"unknown section {key!r}; expected one of {sorted(SECTION_TITLES)}")
    results = read_results(path)
    results["machine"] = machine()
    results[key] = figures
    results.setdefault("markdown", {})[key] = markdown
    _atomic_write(path, json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n")
    md_path = md_path or path.with_suffix(".md")
    _atomic_write(md_path, render_markdown(results))
    return results


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats get 4 significant digits (large ones 1 decimal)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
        return "n/a" if v is None else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def section_header(key: str, quick: bool, commands: Sequence[str], started_load: list[float],
                   ended_load: list[float], wall_s: float) -> str:
    """Heading + provenance lines every section starts with."""
    size = "quick (CPU)" if quick else "full (GPU sizes)"
    cmds = "\n".join(f"    {c}" for c in commands)
    return (f"## {SECTION_TITLES[key]}\n\n"
            f"Size: {size}; run {time.strftime('%Y-%m-%d %H:%M')}, {wall_s:.0f} s; load average (1/5/15 min) "
            f"at start {started_load}, at end {ended_load} on {os.cpu_count()} cores.\n\nCommand:\n\n{cmds}\n")


# ------------------------------------------------------------------------------------------------ timing callback
#: StepTimer instances created by Hydra inside calib_seg.train.run (the benchmark reads them back from here)
TIMERS: list = []


def _make_step_timer():
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall-clock marks of every training epoch: start, last training batch end, epoch end, fit end.

        ``train_s[e]`` = epoch start -> last training batch end (pure training steps incl. data loading and
        logging, no validation/checkpointing); ``epoch_s[e]`` = epoch start -> next epoch start (everything).
        """

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.last_batch_end: list[float] = []
            self.ends: list[float] = []
            self.steps: list[int] = []
            self.step_s: list[tuple[int, float]] = []  # (epoch index, seconds since previous step end)
            self.fit_end: float | None = None
            self.created = time.perf_counter()
            TIMERS.append(self)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.starts.append(time.perf_counter())
            self.last_batch_end.append(float("nan"))
            self.steps.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            prev = self.starts[-1] if self.steps[-1] == 0 else self.last_batch_end[-1]
            self.step_s.append((len(self.starts) - 1, now - prev))
            self.last_batch_end[-1] = now
            self.steps[-1] += 1

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.ends.append(time.perf_counter())

        def on_fit_end(self, trainer, pl_module) -> None:
            self.fit_end = time.perf_counter()

        def train_s(self) -> list[float]:
            return [b - s for s, b in zip(self.starts, self.last_batch_end)]

        def epoch_s(self) -> list[float]:
            marks = self.starts + [self.fit_end]
            return [marks[i + 1] - marks[i] for i in range(len(self.starts))]

    return StepTimer


def __getattr__(name: str):  # lazy: importing common must not import Lightning
    if name == "StepTimer":
        cls = _make_step_timer()
        globals()["StepTimer"] = cls
        return cls
    raise AttributeError(name)
