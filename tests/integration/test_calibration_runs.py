"""The calibration verdict where a user sees it: run record, summary, TensorBoard, evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib_seg.metrics.predictions import calibration_of, read_predictions_csv
from calib_seg.train import print_summary, run
from helpers.configs import TINY_BEADS, compose_entry_cfg
from helpers.tensorboard import load_events

AREA = 0.512**2  # the seed's field of view, mm²


# ------------------------------------------------------------------------------------------------ in a run
def _assert_close(got, want, where="block"):
    """Equal structure and text, numbers to float precision (the CSV holds every digit of a float)."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def test_run_verdict_and_table_are_consistent_with_test_predictions_csv(trained, capsys):
    cfg, record = trained
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "run.json").read_text())
    cal = saved["calibration"]
    assert saved["status"] == "completed" and cal["verdict"] in ("pass", "fail")
    cols = read_predictions_csv(out / "test_predictions.csv")
    assert len(cols["file"]) == saved["data_fingerprint"]["split_sizes"]["test"] == cal["n"]
    assert len(set(cols["file"])) == len(cols["file"]) and all(f.split("_")[0].endswith("x") for f in cols["file"])
    assert np.all(np.isfinite(cols["count"]))  # synthetic data: realised counts are known
    # the mean of the CSV's predictions reproduces the logged test MAE (the same images, once each)
    assert np.mean(np.abs(cols["predicted"] - cols["nominal"])) == pytest.approx(saved["metrics"]["test/mae"], rel=1e-4)
    again = json.loads(json.dumps(calibration_of(cols, cal["fov_area_mm2"], cfg.calibration, "test")))
    _assert_close(again, {k: v for k, v in cal.items() if k != "val"})
    assert cal["fov_area_mm2"] == pytest.approx(AREA)  # TINY_BEADS keeps the seed FOV: 64 px x 8 um
    assert cal["val"]["split"] == "val" and (out / "val_predictions.csv").exists()
    assert (out / "figures" / "calibration.png").stat().st_size > 10_000
    print_summary(record)
    text = capsys.readouterr().out
    assert cal["line"] in text and "| level |" in text.replace("  ", " ")


def test_one_level_test_set_records_r2_as_null_and_answers_with_the_calibration_table(run_cfg, capsys):
    cfg = run_cfg(TINY_BEADS + ["data.holdout_dilutions=[50]"])
    record = run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert saved["metrics"]["test/r2"] is None and saved["metrics"]["test/r2_oracle"] is None
    assert saved["metrics"]["test/mae"] > 0
    [level] = saved["calibration"]["levels"]
    assert level["level"] == "50x" and level["n"] == 12 and level["mae"] == pytest.approx(saved["metrics"]["test/mae"])
    assert saved["calibration"]["loglog"] is None
    print_summary(record)
    text = capsys.readouterr().out
    assert "n/a" in text and "6222798" not in text and "50x" in text


def test_tensorboard_gets_the_calibration_text_and_figure(trained):
    cfg, record = trained
    acc = load_events(cfg.paths.output_dir)
    assert "calibration/verdict/text_summary" in acc.Tags()["tensors"]
    assert "figures/calibration" in acc.Tags()["images"]
    text = acc.Tensors("calibration/verdict/text_summary")[0].tensor_proto.string_val[0].decode()
    assert record["calibration"]["line"] in text and "| level |" in text.replace("  ", " ")


def test_evaluate_writes_the_same_columns_and_table_as_the_run(trained, tmp_path):
    from calib_seg.evaluate import evaluate

    cfg, record = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    ecfg = compose_entry_cfg("evaluate", [f"ckpt_path={ckpt}", "logger=none", "trainer.enable_progress_bar=false"],
                    tmp_path / "eval")
    rec = evaluate(ecfg, use_run_data=True)
    _assert_close(json.loads(json.dumps(rec["calibration"]["levels"])), record["calibration"]["levels"])
    ran = read_predictions_csv(Path(cfg.paths.output_dir) / "test_predictions.csv")
    evald = read_predictions_csv(tmp_path / "eval" / "test_predictions.csv")
    assert evald["file"].tolist() == ran["file"].tolist()
    np.testing.assert_allclose(evald["predicted"], ran["predicted"], rtol=1e-5)
    saved = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert saved["calibration"]["line"] == record["calibration"]["line"]


def test_predict_on_a_labelled_bead_folder_writes_the_label_columns_and_the_table(trained, tmp_path, capsys):
    from omegaconf import OmegaConf

    from calib_seg.data.sources.bead_folder import write_bead_folder
    from calib_seg.data.sources.beads_synth import SyntheticBeads
    from calib_seg.predict import predict

    cfg, _ = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    src = SyntheticBeads(n_per_level=2, seed=5, dilutions=[50, 800, 51200], density_range=[7964, 15],
                         physics={"image_size": 64, "pixel_size_um": 8.0, "psf_sigma_um": 4.0})
    folder = write_bead_folder(src, tmp_path / "labelled")
    pcfg = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(folder), "output": str(tmp_path / "out.csv"),
                             "bit_depth": None, "pixel_size_um": None, "batch_size": 4,
                             "trainer": {"accelerator": "cpu"}, "calibration": {"max_excess": 2.0}})
    csv_path = predict(pcfg)
    cols = read_predictions_csv(csv_path)
    assert len(cols["file"]) == 6 and np.all(np.isfinite(cols["count"])) and set(cols["dilution"]) == {50, 800, 51200}
    block = json.loads((tmp_path / "out_calibration.json").read_text())
    assert [r["level"] for r in block["levels"]] == ["50x", "800x", "51200x"]
    again = calibration_of(cols, AREA, {"max_excess": 2.0}, "predict")
    assert again["line"] == block["line"] and block["line"] in capsys.readouterr().out
