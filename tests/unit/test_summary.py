"""The end-of-run summary table: units survive rich, the run folder is one line, digits are sensible."""

from __future__ import annotations

import pytest

from calib_seg.summary import format_duration, print_summary, summary_rows
from calib_seg.tasks.spec import Headline

LONG_DIR = "/very/long/outputs/density/" + "2026-12-02_04-15-00_" * 6 + "model=density_cnn,data.batch_size=8"


def _record(**extra):
    metrics = {"test/r2": 0.91234, "test/r2_oracle": 0.99881, "test/mae": 100.53, "test/mae_oracle": 46.9314,
               "test/rmse": 120.0, "test/mape": 7.4567, "test/max_error": 300.0}
    return {"task": "density", "status": "completed", "run_dir": LONG_DIR, "metrics": metrics, "epochs": 3,
            "best_epoch": 2, "wall_time_s": 75.3, **extra}


def test_units_in_brackets_survive_rich_and_the_run_folder_is_one_whole_line(capsys):
    print_summary(_record())
    out = capsys.readouterr().out
    assert "test MAE [beads/mm²]" in out and "oracle-counter MAE [beads/mm²]" in out and "test MAPE [%]" in out
    assert f"run folder: {LONG_DIR}" in out.splitlines()  # not wrapped into the table title
    assert "1 min 15 s" in out


def test_numbers_have_sensible_digits():
    rows = dict(summary_rows(_record()))
    assert rows["oracle-counter MAE [beads/mm²]"] == "46.9" and rows["test MAE [beads/mm²]"] == "100.5"
    assert rows["test MAPE [%]"] == "7.46" and rows["test R²"] == "0.9123"
    assert Headline("k", "x", "um").format(0.004) == "0.00400"


def test_an_evaluation_record_has_no_epoch_row_but_names_its_checkpoint(capsys):
    record = _record(status="evaluated", checkpoint="/runs/a/checkpoints/best-epoch002.ckpt")
    del record["epochs"]
    print_summary(record)
    out = capsys.readouterr().out
    assert "density evaluation: evaluated" in out and "epochs" not in out
    assert "checkpoint: /runs/a/checkpoints/best-epoch002.ckpt" in out.splitlines()


@pytest.mark.parametrize(("seconds", "text"), [(4.71, "4.7 s"), (192, "3 min 12 s"), (3900, "1 h 05 min"),
                                               (None, "n/a")])
def test_wall_time_has_a_unit(seconds, text):
    assert format_duration(seconds) == text
