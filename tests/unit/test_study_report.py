"""The calibration study report on constructed job folders: every section, the seed-noise rule, numbers equal to
the records, the provenance warning and the refusal to resume over other code (no training; fast tier)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from calib_seg import study
from calib_seg.records import code_state
from calib_seg.study_report import build_study_report
from calib_seg.study_stats import NOT_ANSWERABLE, mean_sd, pareto, winner

LEVELS = ["50x", "800x", "51200x"]


def _job(sweep: Path, num: int, overrides: list[str], seed: int, excess: list[float], *, params: int = 1000,
         wall: float = 100.0, commit: str | None = None, status: str = "completed", mape50: float = 5.0) -> dict:
    """A job folder as a sweep leaves it: .hydra/overrides.yaml and a run.json with the fields the study reads."""
    job = sweep / f"{num}_{','.join(overrides)},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*overrides, f"seed={seed}"]))
    levels = [{"level": lv, "excess": e, "passed": e <= 2.0, "mae": 10.0 * e, "mape": mape50 if lv == "50x" else 9.0,
               "bias": 1.0} for lv, e in zip(LEVELS, excess)]
    rec = {"status": status, "task": "density", "choices": {"experiment": overrides[0].split("=")[1], "seed": seed},
           "params": params, "epochs": 10, "wall_time_s": wall, "time_per_epoch_s": wall / 10, "peak_rss_mb": 500.0,
           "test_metrics": {"test/r2": 0.9, "test/mae": 12.0}, "best_val": 0.9, "optimized_metric": "val/r2",
           "calibration": {"verdict": "pass" if all(e <= 2 for e in excess) else "fail", "levels": levels,
                           "worst_excess": max(excess), "failing_levels": []},
           "data_fingerprint": {"sha256": "d" * 64},
           "provenance": {"git_commit": commit or code_state().get("git_commit") or "c" * 40, "git_dirty": False,
                          "versions": {"calib_seg": "0.1"}}}
    (job / "run.json").write_text(json.dumps(rec))
    return rec


def _study(tmp_path: Path, excess: dict[str, list[list[float]]], ext: dict[str, list[float]] | None = None,
           **kw) -> Path:
    """Architecture part with the configurations of ``excess`` (one excess list per seed); extrapolation part
    with 50x MAPE per seed for two capacities."""
    num = 0
    for cfg, seeds in excess.items():
        for seed, ex in enumerate(seeds, start=1):
            _job(tmp_path / "architecture", num, [f"experiment={cfg}"], seed, ex, wall=50.0 * (num % 3 + 1), **kw)
            num += 1
    for i, (cfg, mapes) in enumerate((ext or {}).items()):
        for seed, m in enumerate(mapes, start=1):
            _job(tmp_path / "extrapolation", num, [f"experiment={cfg}", "data.holdout_dilutions=[50]"], seed,
                 [1.0], params=1000 * 10 ** i, mape50=m, **kw)
            num += 1
    return tmp_path


def test_rule_names_a_winner_only_beyond_seed_noise():
    a, b, c = mean_sd([1.0, 1.1, 0.9]), mean_sd([2.0, 2.1, 1.9]), mean_sd([1.05, 1.3, 0.8])
    assert a["sd"] == pytest.approx(np.std([1.0, 1.1, 0.9], ddof=1))
    assert winner({"a": a, "b": b}, lower_is_better=True) == ("a", ["a"])
    assert winner({"a": a, "b": b}, lower_is_better=False) == ("b", ["b"])
    assert winner({"a": a, "b": b, "c": c}, lower_is_better=True) == (None, ["a", "c"])
    one = mean_sd([1.0])  # one seed: no noise estimate, never a winner
    assert winner({"a": one, "b": mean_sd([5.0])}, lower_is_better=True) == (None, ["a", "b"])
    assert sorted(pareto({"fast_bad": (1, 3), "slow_good": (5, 1), "dominated": (6, 3)})) == ["fast_bad", "slow_good"]


def test_every_section_and_numbers_equal_the_records(tmp_path):
    good = [[1.0, 1.2, 1.4], [1.1, 1.0, 1.3], [0.9, 1.1, 1.2]]
    bad = [[3.0, 4.0, 9.0], [3.5, 4.2, 8.0], [2.8, 3.9, 9.5]]
    folder = _study(tmp_path, {"arch_good": good, "arch_bad": bad},
                    ext={"small": [40.0, 42.0, 41.0], "large": [10.0, 11.0, 12.0]})
    text = build_study_report(folder, {"seeds": 3, "seed_list": [1, 2, 3]}, figures=True)
    for head in ("## Setup", "## 1. Which architecture", "## 2. How does model capacity", "## 3. Trade-off",
                 "## 4. Which configuration", "## Every job"):
        assert head in text, head
    assert "**arch_good** is best on range score" in text
    assert "more capacity lowers the 50x error" in text
    assert "**Recommendation: arch_good**" in text
    assert "WARNING" not in text
    jobs = list(csv.DictReader((folder / "study_jobs.csv").open()))
    assert len(jobs) == 12
    # every number of the job table is the record's (range score recomputed independently)
    recs = {(p.parent.parent.name, p.parent.name.split("_", 1)[0]): json.loads(p.read_text())
            for p in folder.glob("*/*/run.json")}
    by_job = {(r["part"], r["job"]): r for r in jobs}
    for key, rec in recs.items():
        row = by_job[key]
        ex = [lv["excess"] for lv in rec["calibration"]["levels"]]
        assert float(row["range score"]) == pytest.approx(math.exp(np.mean(np.log(ex))))
        assert float(row["wall time [s]"]) == rec["wall_time_s"] and int(row["params"]) == rec["params"]
        assert float(row["50x MAPE %"]) == rec["calibration"]["levels"][0]["mape"]
    configs = {r["config"]: r for r in csv.DictReader((folder / "study_configs.csv").open())}
    assert float(configs["arch_bad"]["worst excess mean"]) == pytest.approx(np.mean([9.0, 8.0, 9.5]))
    assert float(configs["arch_bad"]["worst excess sd"]) == pytest.approx(np.std([9.0, 8.0, 9.5], ddof=1))
    for name in ("per_level_excess", "extrapolation_50x", "pareto_time", "pareto_memory"):
        assert (folder / "study_figures" / f"{name}.png").stat().st_size > 5000, name


def test_differences_within_seed_noise_are_not_answerable(tmp_path):
    a = [[1.0, 1.5, 3.0], [1.2, 1.4, 1.8], [0.9, 1.9, 2.5]]
    b = [[1.1, 1.4, 2.7], [1.3, 1.6, 2.2], [0.8, 1.8, 2.6]]
    folder = _study(tmp_path, {"arch_a": a, "arch_b": b}, ext={"small": [40.0, 20.0, 30.0], "large": [25.0, 35.0, 30.0]})
    text = build_study_report(folder, figures=False)
    q1 = text.split("## 1.")[1].split("## 2.")[0]
    q2 = text.split("## 2.")[1].split("## 3.")[0]
    assert f"**Answer:** **{NOT_ANSWERABLE}**" in q1 and "is best on" not in q1
    assert NOT_ANSWERABLE in q2.split("**Answer (capacity):**")[1].splitlines()[0]
    assert "**Recommendation: none.**" in text  # no configuration passes at every seed


def test_mixed_code_versions_are_flagged_and_resume_over_them_is_refused(tmp_path, monkeypatch, capsys):
    folder = _study(tmp_path, {"arch_a": [[1.0, 1.0, 1.0], [1.1, 1.0, 1.0]]})
    _job(tmp_path / "architecture", 9, ["experiment=arch_b"], 1, [1.0, 1.0, 1.0], commit="0" * 40)
    text = build_study_report(folder, figures=False)
    assert "WARNING: this study mixes jobs from different code versions" in text
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: pytest.fail("must not launch"))
    assert study.run_study("calibration", [f"study.dir={folder}"]) == 2
    assert "Refused" in capsys.readouterr().err


def test_each_part_is_a_resuming_multirun_of_its_grid_at_the_study_seeds(tmp_path):
    cfg, job_args = study.load_study("calibration", ["study.seeds=4", "study.first_seed=7", "trainer.max_epochs=3"])
    assert list(cfg["parts"]) == ["architecture", "filters", "extrapolation"] and job_args == ["trainer.max_epochs=3"]
    cmd = study.part_command(cfg, "extrapolation", tmp_path, job_args)
    assert cmd[1:6] == ["-m", "calib_seg.train", "-m", "hparams_search=filters", "seed=7,8,9,10"]
    assert f"hydra.sweep.dir={tmp_path / 'extrapolation'}" in cmd and "+resume=true" in cmd
    assert cmd.index("data.holdout_dilutions=[50]") < cmd.index("trainer.max_epochs=3")  # the command line wins
    with pytest.raises(SystemExit):
        study.load_study("calibration", ["hydra.sweep.dir=/x"])


def test_resuming_with_other_study_settings_is_refused(tmp_path, monkeypatch, capsys):
    cfg, job_args = study.load_study("calibration", ["trainer.max_epochs=3"])
    (tmp_path / "study.json").write_text(json.dumps({"seed_list": study.seed_list(cfg), "parts": list(cfg["parts"]),
                                                     "overrides": job_args}))
    assert study.changed_settings(tmp_path, cfg, job_args) == ""
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: pytest.fail("must not launch"))
    assert study.run_study("calibration", [f"study.dir={tmp_path}", "study.seeds=5", "trainer.max_epochs=3"]) == 2
    assert "seed_list: was [1, 2, 3], now [1, 2, 3, 4, 5]" in capsys.readouterr().err
