"""`python -m calib_seg.study calibration` end to end at toy size, as a user starts it: three real multiruns, the
report's sections and numbers, and a re-run that trains only the job whose record is gone (slow: ~10 jobs)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from calib_seg.study_stats import NOT_ANSWERABLE
from helpers.paths import REPO

TINY = ["study=calibration_quick", "study.seeds=2", "data.source.n_per_level=6", "trainer.max_epochs=2",
        "study.parts.architecture.overrides=['experiment=arch_baseline_shallow,arch_resnet_deep','model.filters=[4,8,16,32]']",
        "study.parts.filters.overrides=['experiment=C02','model.filters=[4,8,16],[8,16,32]']",
        "study.parts.extrapolation.overrides=['experiment=C02','model.filters=[4,8,16]','data.holdout_dilutions=[50]']"]


def _study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib_seg.study", "calibration", *TINY, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_tiny_calibration_study_report_and_resume(tmp_path):
    first = _study(f"study.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    text = (tmp_path / "study.md").read_text()
    for head in ("## Setup", "## 1. Which architecture", "## 2. How does model capacity", "## 3. Trade-off",
                 "## 4. Which configuration", "## Every job"):
        assert head in text, head
    assert "launcher BasicLauncher" in text and "data fingerprint(s): `" in text
    # one capacity in the extrapolation part: the capacity question cannot be answered, and says so
    assert f"{NOT_ANSWERABLE}: only one capacity was run" in text
    records = {p.parent: json.loads(p.read_text()) for p in tmp_path.glob("*/*/run.json")}
    assert len(records) == 10
    jobs = list(csv.DictReader((tmp_path / "study_jobs.csv").open()))
    assert jobs, text
    for row in jobs:
        job = next(d for d in records if d.parent.name == row["part"] and d.name.split("_", 1)[0] == row["job"])
        rec = records[job]
        ex = [lv["excess"] for lv in rec["calibration"]["levels"]]
        assert float(row["range score"]) == pytest.approx(math.exp(np.mean(np.log(ex))))
        assert float(row["wall time [s]"]) == pytest.approx(rec["wall_time_s"])
        assert int(row["params"]) == rec["params"] and int(row["seed"]) == rec["choices"]["seed"]

    redo = next(iter(records))
    (redo / "run.json").unlink()
    before = {d: (d / "run.json").read_bytes() for d in records if d != redo}
    again = _study(f"study.dir={tmp_path}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.parent for p in tmp_path.glob("*/*/run.json")) == sorted(records)  # no new job folders
    assert all((d / "run.json").read_bytes() == b for d, b in before.items())  # finished jobs skipped
    assert json.loads((redo / "run.json").read_text())["status"] in ("completed", "aborted")  # the gap retrained
