"""The sweep report's tables and warnings on constructed job folders (no training): the experiment named only for
presets, columns empty on every job left out and named, times for people, a loud line when the best job failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calib_seg.report import build_report

DENSITY = "calib_seg.tasks.density.DensityRegressionTask"
SEGMENTATION = "calib_seg.tasks.segmentation.SegmentationTask"


def _job(sweep: Path, num: int, *, r2: float = 0.99, verdict: str | None = "pass", experiment: str | None = None,
         wall: float = 1234.0, status: str = "completed", best_val: float | None = None, cuda: float | None = None,
         target: str = DENSITY, jaccard: float | None = None, all_fg: float | None = None) -> Path:
    """A job folder as a sweep leaves it: .hydra/ and a run.json with the fields the report reads."""
    job = sweep / f"{num}_model.filters=[{8 * (num + 1)}]"
    (job / ".hydra").mkdir(parents=True)
    density = target == DENSITY
    metrics = ({"test/r2": r2, "test/mae": 50.0, "test/r2_oracle": 0.999} if density
               else {"test/jaccard": jaccard, "test/jaccard_all_foreground": all_fg})
    rec = {"status": status, "reason": None if status == "completed" else "aborted at epoch 3: scripted",
           "task": "density" if density else "segmentation",
           "choices": {"experiment": experiment, "filters": [8 * (num + 1)], "batch_size": 16, "lr": 1e-3, "seed": 42},
           "config": {"run_name": "density" if density else "segmentation", "task": {"_target_": target}},
           "optimized_metric": "val/r2" if density else "val/jaccard",
           "best_val": best_val if best_val is not None else (r2 if density else jaccard), "best_epoch": 7,
           "params": 1000 * (num + 1), "epochs": 10, "wall_time_s": wall, "time_per_epoch_s": wall / 10,
           "peak_rss_mb": 512.0, "peak_cuda_mb": cuda, "device": "cpu",
           "test_metrics": metrics if status == "completed" else {},
           "calibration": ({"verdict": verdict, "failing_levels": [] if verdict == "pass" else ["25600x", "51200x"],
                            "worst_level": "51200x", "worst_excess": 1.5 if verdict == "pass" else 9.0}
                           if density and verdict and status == "completed" else None),
           "provenance": {"git_commit": "a" * 40, "git_dirty": False, "versions": {"calib_seg": "0.1"}}}
    (job / "run.json").write_text(json.dumps(rec))
    return job


def _table_header(text: str) -> list[str]:
    line = next(ln for ln in text.split("## All jobs")[1].splitlines() if ln.startswith("| job"))
    return [h.strip() for h in line.strip("|").split("|")]


def _report(sweep: Path) -> str:
    return build_report(sweep, figures=False)


def test_experiment_is_named_only_when_a_preset_was_used(tmp_path):
    plain = tmp_path / "plain"
    for i in range(2):
        _job(plain, i, r2=0.9 + i / 100)
    text = _report(plain)
    assert "experiment" not in _table_header(text)
    best = text.split("## Best job")[1].split("##")[0]
    assert "experiment" not in best and "density" not in best  # the task's name is no experiment
    preset = tmp_path / "preset"
    for i, name in enumerate(("C01", "C02")):
        _job(preset, i, r2=0.9 + i / 100, experiment=name)
    text = _report(preset)
    assert "experiment" in _table_header(text) and "| C01 |" in text
    assert "(experiment C02, filters" in text.split("## Best job")[1]


def test_columns_empty_on_every_job_are_left_out_and_named(tmp_path):
    for i in range(2):
        _job(tmp_path / "cpu", i)  # peak_cuda_mb null: a CPU machine
    text = _report(tmp_path / "cpu")
    header = _table_header(text)
    assert "peak CUDA [MiB]" not in header and "peak RSS [MiB]" in header and "status" in header
    [note] = [ln for ln in text.splitlines() if ln.startswith("Not recorded for any job, so not shown:")]
    assert note.endswith(", peak CUDA [MiB].") and "peak RSS" not in note
    _job(tmp_path / "gpu", 0, cuda=2048.0)
    _job(tmp_path / "gpu", 1)
    assert "peak CUDA [MiB]" in _table_header(_report(tmp_path / "gpu"))


@pytest.mark.parametrize(("seconds", "text"), [(4.71, "4.7 s"), (9.96, "10 s"), (34.4, "34 s"), (59.6, "1 min 0 s"),
                                               (1234.0, "20 min 34 s"), (7500.0, "2 h 05 min"),
                                               (7199.0, "2 h 00 min"), (None, "-")])
def test_durations_read_as_people_say_them(seconds, text):
    from calib_seg.report_rows import fmt_duration

    assert fmt_duration(seconds) == text


def test_the_job_table_shows_times_as_durations(tmp_path):
    _job(tmp_path, 0, wall=1234.0)
    _job(tmp_path, 1, wall=4.71)
    text = _report(tmp_path)
    assert "time" in _table_header(text) and "time [s]" not in _table_header(text)
    assert "| 20 min 34 s |" in text and "| 4.7 s |" in text and "1234" not in text


def _top(text: str) -> str:
    """The report above its first section: where a warning cannot be missed."""
    return text.split("\n## ")[0]


def test_a_best_job_with_r2_near_zero_and_a_failed_verdict_gets_a_loud_warning(tmp_path):
    _job(tmp_path, 0, r2=-0.4, verdict="fail")
    _job(tmp_path, 1, r2=0.03, verdict="fail")
    top = _top(_report(tmp_path))
    assert "**Warning: the best job is itself a failure.**" in top
    assert "`1_model.filters=[16]`" in top and "test R² 0.03" in top and "fails (at 25600x,51200x)" in top


def test_a_healthy_best_job_gets_no_warning(tmp_path):
    _job(tmp_path, 0, r2=-0.4, verdict="fail")
    _job(tmp_path, 1, r2=0.99, verdict="pass")
    assert "Warning" not in _report(tmp_path)


def test_a_sweep_without_a_completed_job_says_there_is_no_best_job(tmp_path):
    _job(tmp_path, 0, status="aborted")
    _job(tmp_path, 1, status="failed")
    assert "**Warning: no job completed (1 aborted, 1 failed): there is no best job.**" in _top(_report(tmp_path))


def test_a_segmentation_best_job_no_better_than_all_foreground_is_flagged(tmp_path):
    _job(tmp_path, 0, target=SEGMENTATION, jaccard=0.31, all_fg=0.30)
    _job(tmp_path, 1, target=SEGMENTATION, jaccard=0.20, all_fg=0.30)
    top = _top(_report(tmp_path))
    assert "the best job is itself a failure" in top and "no better than predicting all foreground (0.3)" in top
