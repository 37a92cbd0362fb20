"""B5 guard savings: epochs until the training guard aborts each reproduction preset, vs the seed's 50 epochs.

Each ``conf/experiment/repro_*.yaml`` reproduces a seed failure on purpose (CPU-sized presets; the same for
quick and full). It is trained with ``calib_seg.train.run`` and the default callbacks (guard on); the run
record's ``aborted_epoch`` is the figure. The guard's own cost is the wall time of its per-epoch check
(``TrainingGuard.on_train_epoch_end``, timed by wrapping it), compared with the run's mean epoch time.

    .venv/bin/python benchmarks/b5_guard.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import common

SEED_EPOCHS = 50


def main() -> None:
    from calib_seg.callbacks.guard import TrainingGuard

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="(the presets are CPU-sized either way)")
    ap.add_argument("--presets", nargs="*", default=None)
    args = ap.parse_args()
    presets = args.presets or sorted(p.stem for p in (common.REPO / "conf" / "experiment").glob("repro_*.yaml"))
    load0, t0 = common.load_avg(), time.perf_counter()

    check_times: list[float] = []
    original = TrainingGuard.on_train_epoch_end

    def timed(self, trainer, pl_module):
        s = time.perf_counter()
        try:
            return original(self, trainer, pl_module)
        finally:
            check_times.append(time.perf_counter() - s)

    TrainingGuard.on_train_epoch_end = timed
    runs = {}
    try:
        for p in presets:
            check_times.clear()
            ov = [f"experiment={p}", "trainer.enable_progress_bar=false"]
            print(f"B5: {p}", flush=True)
            rec = common.run_training(ov, f"b5_{p}")
            runs[p] = {"status": rec["status"], "aborted_epoch": rec.get("aborted_epoch"), "reason": rec.get("reason"),
                       "epochs_run": rec.get("epochs"), "wall_s": rec.get("wall_time_s"),
                       "time_per_epoch_s": rec.get("time_per_epoch_s"),
                       "guard_check_ms_median": 1e3 * statistics.median(check_times) if check_times else None,
                       "guard_check_ms_max": 1e3 * max(check_times) if check_times else None,
                       "guard_checks": len(check_times), "overrides": ov}
    finally:
        TrainingGuard.on_train_epoch_end = original

    res: dict = {p: r["aborted_epoch"] for p, r in runs.items()}
    res["runs"] = runs
    res["seed_epochs"] = SEED_EPOCHS
    res.update({"quick": args.quick, "command": common.command_line(), "load_avg_start": load0})
    load1 = common.load_avg()
    res["load_avg_end"] = load1
    parts = [common.section_header("B5", args.quick, [res["command"]], load0, load1, time.perf_counter() - t0)]
    rows = []
    for p, r in runs.items():
        tpe = r["time_per_epoch_s"]
        tpe = float(tpe) if isinstance(tpe, (int, float)) else float("nan")
        ae = r["aborted_epoch"]
        rows.append([p, r["status"], ae if ae is not None else "not aborted", SEED_EPOCHS,
                     f"{SEED_EPOCHS - ae} ({(SEED_EPOCHS - ae) / SEED_EPOCHS:.0%})" if ae else "-",
                     tpe, r["guard_check_ms_median"], r["guard_check_ms_max"],
                     (r["guard_check_ms_median"] or float("nan")) / 1e3 / tpe if tpe == tpe else float("nan")])
    parts.append(common.md_table(["preset", "status", "epochs to abort", "seed epochs", "epochs saved",
                                  "s / epoch", "guard check ms (median)", "guard check ms (max)",
                                  "guard share of epoch"], rows))
    parts.append("\nAbort reasons:\n\n" + "\n".join(f"- {p}: {r['reason']}" for p, r in runs.items()))
    common.write_section("B5", res, "\n".join(parts))
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
