"""`python -m calib_seg.study calibration|mito` end to end at toy size, as a user starts it: real multiruns, the
report's sections and numbers, and a re-run that trains only the job whose record is gone (slow: ~10 and 4 jobs)."""

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


# study=mito_quick at half its epochs, one architecture, two learning rates, one batch size, 2 seeds: 4 jobs. One
# architecture and one batch size leave "which architecture" and "which batch size" unanswerable by construction.
TINY_MITO = ["study=mito_quick", "study.seeds=2", "trainer.max_epochs=3",
             "study.parts.grid.overrides=['model=unet','task.optimizer.lr=5e-3,1e-3','data.batch_size=8']"]


def _study(*args: str, kind: str = "calibration") -> subprocess.CompletedProcess:
    tiny = TINY if kind == "calibration" else TINY_MITO
    return subprocess.run([sys.executable, "-m", "calib_seg.study", kind, *tiny, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def _records(folder) -> dict:
    """job folder -> its run.json, wherever the sweep put it (the folder naming is the sweep's business)."""
    return {p.parent: json.loads(p.read_text()) for p in folder.rglob("run.json")}


def _rerun_fills_only_the_gap(folder, records: dict, rerun) -> None:
    """Delete one job's record, re-run the study command: only that job trains again, in its old folder."""
    redo = next(iter(records))
    (redo / "run.json").unlink()
    before = {d: (d / "run.json").read_bytes() for d in records if d != redo}
    again = rerun()
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(_records(folder)) == sorted(records)  # no new job folders
    assert all((d / "run.json").read_bytes() == b for d, b in before.items())  # finished jobs skipped
    assert json.loads((redo / "run.json").read_text())["status"] in ("completed", "aborted")  # the gap retrained


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
    records = _records(tmp_path)
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
    _rerun_fills_only_the_gap(tmp_path, records, lambda: _study(f"study.dir={tmp_path}"))


@pytest.mark.slow
def test_tiny_mito_study_report_and_resume(tmp_path):
    first = _study(f"study.dir={tmp_path}", kind="mito")
    assert first.returncode == 0, first.stderr[-3000:]
    text = (tmp_path / "study.md").read_text()
    for head in ("## Setup", "## How to read this report", "## 1. Best configuration per architecture",
                 "## 2. Learning-rate sensitivity", "## 3. Batch-size effects", "## 4. Convergence speed",
                 "## 5. Jaccard vs threshold", "## Jobs not used", "## Every job (4, numbers from its run.json)",
                 "## Figures"):
        assert head in text, head
    assert "launcher BasicLauncher" in text and "data fingerprint(s): `" in text and "WARNING" not in text
    records = _records(tmp_path)
    assert len(records) == 4 and all(r["status"] in ("completed", "aborted") for r in records.values())
    # it trained: the better learning rate beats the trivial all-foreground answer on test Jaccard at every seed
    tm = {(r["choices"]["lr"], r["choices"]["seed"]): r["test_metrics"] for r in records.values()}
    best_lr = max({lr for lr, _ in tm}, key=lambda lr: sum(m["test/jaccard"] for (x, _), m in tm.items() if x == lr))
    for (lr, seed), m in tm.items():
        if lr == best_lr:
            assert m["test/jaccard"] > m["test/jaccard_all_foreground"] + 0.1, (lr, seed, m)
    # one architecture, one batch size: those questions are not answerable, and the report says so (no winner)
    sec1 = text.split("## 1.")[1].split("## 2.")[0]
    sec3 = text.split("## 3.")[1].split("## 4.")[0]
    assert f"**Across architectures (each at its best):** **{NOT_ANSWERABLE}**: only one configuration" in sec1
    assert f"- unet: **{NOT_ANSWERABLE}**: only one configuration (batch 8" in sec3
    assert "is best on" not in sec3
    # the report's numbers are the records' (jobs matched by their recorded choices, not by folder names)
    by_choice = {(r["choices"]["model"], r["choices"]["lr"], r["choices"]["batch_size"], r["choices"]["seed"]): r
                 for r in records.values()}
    jobs = list(csv.DictReader((tmp_path / "study_jobs.csv").open()))
    assert len(jobs) == 4
    for row in jobs:
        rec = by_choice[(row["arch"], float(row["lr"]), int(row["batch"]), int(row["seed"]))]
        assert float(row["best val Jaccard"]) == pytest.approx(rec["best_val"])
        assert float(row["test Jaccard"]) == pytest.approx(rec["test_metrics"]["test/jaccard"])
        assert float(row["all-foreground Jaccard"]) == pytest.approx(rec["test_metrics"]["test/jaccard_all_foreground"])
        assert int(row["epochs to best"]) == rec["best_epoch"]
        assert float(row["wall time [s]"]) == pytest.approx(rec["wall_time_s"])
    configs = {float(r["lr"]): r for r in csv.DictReader((tmp_path / "study_configs.csv").open())}
    for lr, row in configs.items():
        vals = [r["best_val"] for k, r in by_choice.items() if k[1] == lr]
        assert float(row["best val Jaccard mean"]) == pytest.approx(np.mean(vals))
        assert float(row["best val Jaccard sd"]) == pytest.approx(np.std(vals, ddof=1))
    _rerun_fills_only_the_gap(tmp_path, records, lambda: _study(f"study.dir={tmp_path}", kind="mito"))
