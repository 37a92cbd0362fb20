"""Run the benchmarks one after another (never in parallel: they time each other otherwise).

Each script merges its own section into ``benchmarks/results.json`` and re-renders ``benchmarks/results.md``,
so a failed benchmark leaves the others' latest figures in place; the exit status says whether all succeeded.

    .venv/bin/python benchmarks/run_all.py --quick            # this CPU machine (make bench)
    .venv/bin/python benchmarks/run_all.py                    # full sizes (GPU)
    .venv/bin/python benchmarks/run_all.py --quick --only B3 B5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import common

SCRIPTS = {
    "B1": "b1_density_quality.py",
    "B2": "b2_seg_quality.py",
    "B3": "b3_overhead.py",
    "B4": "b4_data_pipeline.py",
    "B5": "b5_guard.py",
    "B6": "b6_inference.py",
    "B7": "b7_hpo.py",
    "B8": "b8_counting_protocol.py",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU sizes")
    ap.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = ap.parse_args()
    failed = []
    for key in args.only:
        cmd = [sys.executable, str(common.BENCH_DIR / SCRIPTS[key])] + (["--quick"] if args.quick else [])
        print(f"=== {key}: {' '.join(cmd)} (load {common.load_avg()})", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=common.BENCH_DIR)
        print(f"=== {key}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(key)
    print(f"results: {common.RESULTS_MD}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
