"""B7 HPO: the best validation Jaccard an Optuna TPE study finds against the 36-run grid, at measured compute.

Both searches run the mitochondria search space of the seed study (architecture x learning rate x batch size) on
the same CPU-size configuration (``--size`` overrides, default: tiny synthetic EM, 3 epochs) with the same
guard: the grid as ``hparams_search=hpo_mito`` (36 jobs), the study as ``hparams_search=hpo_mito_optuna`` with
``--trials`` trials and in-job median pruning. Compute is the sum of the jobs' recorded wall times
(``run.json`` ``wall_time_s``); the table shows the best-so-far of the study after each trial beside the grid's
best, so "equal compute" is read off the row whose summed time first reaches the grid's.

    .venv/bin/python benchmarks/b7_hpo.py                 # both searches (resumable: finished jobs are skipped)
    .venv/bin/python benchmarks/b7_hpo.py --render        # only re-render the section from the sweep folders

Needs the hpo extra (``make install-hpo``). Toy sizes give noisy single-image validation scores: read the
result as "does the study reach the grid's best with less compute", not as an architecture ranking.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, WORK, load_avg, md_table, section_header, write_section  # noqa: E402

SIZE = ["experiment=mito_quick", "debug=tiny_mito", "trainer.max_epochs=3", "test=false", "torch_threads=1"]
SWEEPS = {"grid": "hparams_search=hpo_mito", "optuna": "hparams_search=hpo_mito_optuna"}


def sweep_dir(name: str) -> Path:
    """Where the search ``name`` keeps its job folders (and, for Optuna, the study)."""
    return WORK / "b7" / name


def run_sweep(name: str, size: list[str], trials: int) -> float:
    """Run (or resume) one search as a real multirun; its wall time in seconds."""
    args = [sys.executable, "-m", "calib_seg.train", "-m", SWEEPS[name], *size, f"hydra.sweep.dir={sweep_dir(name)}"]
    if name == "optuna":
        args.append(f"hydra.sweeper.n_trials={trials}")
    t0 = time.perf_counter()
    print(f"[b7] {name}: {' '.join(args[3:])}", flush=True)
    subprocess.run(args, cwd=REPO, check=True)
    return time.perf_counter() - t0


def jobs(name: str) -> list[dict[str, Any]]:
    """The search's run records in job order (trial number for Optuna, grid order for the grid)."""
    records = []
    for rec_path in sweep_dir(name).glob("*/run.json"):
        rec = json.loads(rec_path.read_text())
        num = int(rec_path.parent.name.split("_")[0]) if rec_path.parent.name.split("_")[0].isdigit() else 0
        records.append({"num": num, "status": rec.get("status"), "best_val": rec.get("best_val"),
                        "wall_s": float(rec.get("wall_time_s") or 0.0), "choices": rec.get("choices", {}),
                        "reason": rec.get("reason") or ""})
    return sorted(records, key=lambda r: r["num"])


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed job with the highest best val/jaccard."""
    done = [r for r in rows if r["status"] == "completed" and r["best_val"] is not None]
    return max(done, key=lambda r: r["best_val"]) if done else None


def _label(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    c = r["choices"]
    return f"{r['best_val']:.3f} ({c.get('model')}, lr {c.get('lr')}, batch {c.get('batch_size')})"


def render(load0: list[float], size: list[str], trials: int, walls: dict[str, float]) -> None:
    """Write the B7 section: totals per search, and the study's best-so-far against the grid's compute."""
    grid, study = jobs("grid"), jobs("optuna")
    g_best, g_time = best(grid), sum(r["wall_s"] for r in grid)
    totals = []
    for name, rows in (("grid (hpo_mito)", grid), (f"Optuna TPE + median pruning ({trials} trials)", study)):
        n = len(rows)
        states = {s: sum(r["status"] == s for r in rows) for s in ("completed", "aborted", "failed")}
        pruner = sum(r["reason"].startswith("pruned by Optuna") for r in rows)
        totals.append([name, n, states["completed"], f"{states['aborted']} ({pruner} by the pruner)",
                       states["failed"], f"{sum(r['wall_s'] for r in rows):.0f}", _label(best(rows))])
    running, spent, curve = None, 0.0, []
    for r in study:
        spent += r["wall_s"]
        if r["status"] == "completed" and r["best_val"] is not None:
            running = r if running is None or r["best_val"] > running["best_val"] else running
        curve.append([r["num"], r["status"], f"{spent:.0f}", f"{spent / g_time:.2f}" if g_time else "-",
                      _label(running)])
    md = [section_header("B7", True, [f"benchmarks/b7_hpo.py --size {' '.join(size)} --trials {trials}"],
                         load0, load_avg(), sum(walls.values()))]
    md += ["Searches (compute = summed job wall time from run.json):", "",
           md_table(["search", "jobs", "completed", "aborted", "failed", "compute [s]", "best val/jaccard"],
                    totals), "",
           f"Optuna best-so-far by trial against the grid's best {_label(g_best)} at {g_time:.0f} s:", "",
           md_table(["trial", "status", "compute so far [s]", "fraction of grid compute", "best so far"], curve)]
    if g_best and running:
        verdict = ("reached" if running["best_val"] >= g_best["best_val"] else "did not reach")
        md += ["", f"The study {verdict} the grid's best ({running['best_val']:.3f} vs {g_best['best_val']:.3f}) "
               f"with {spent / g_time:.2f}x the grid's compute."]
    write_section("B7", {"grid_best": g_best, "optuna_best": running, "grid_compute_s": g_time,
                         "optuna_compute_s": spent, "size": size, "trials": trials}, "\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", nargs="*", default=SIZE, help="overrides shared by both searches")
    ap.add_argument("--trials", type=int, default=12, help="Optuna trials (the grid has 36 jobs)")
    ap.add_argument("--quick", action="store_true", help="(the default sizes are CPU sizes either way)")
    ap.add_argument("--render", action="store_true", help="only re-render from the sweep folders")
    args = ap.parse_args()
    load0, walls = load_avg(), {}
    if not args.render:
        for name in SWEEPS:
            walls[name] = run_sweep(name, list(args.size), args.trials)
    render(load0, list(args.size), args.trials, walls)


if __name__ == "__main__":
    main()
