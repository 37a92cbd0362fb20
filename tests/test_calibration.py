"""The calibration verdict: exact Poisson floor, per-level table, fits, range, and where a user sees it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from scipy import stats

from calib_seg.data.simulators.beads import dilution_series
from calib_seg.metrics.calibration import (
    CalibrationSettings,
    assign_levels,
    calibrate,
    floor_mae,
    poisson_mad,
    proportionality,
    quantification_range,
)
from calib_seg.metrics.predictions import calibration_of, prediction_columns, read_predictions_csv
from calib_seg.train import print_summary, run
from conftest import TINY_BEADS
from test_records_reports import _compose, trained  # noqa: F401  (the tiny trained density run, with TensorBoard)

AREA = 0.512**2  # the seed's field of view, mm²
SERIES = dilution_series()  # 50x..51200x -> 7964..15 beads/mm²
SPARSE = ["6400x", "12800x", "25600x", "51200x"]


# ------------------------------------------------------------------------------------------------ the floor
@pytest.mark.parametrize("lam", [1.0, 4.0, 50.0, 2000.0])
def test_poisson_mad_equals_a_brute_force_sum_and_a_1e5_draw_simulation(lam):
    k = np.arange(0, int(lam + 40 * math.sqrt(lam) + 40))
    brute = float(np.sum(np.abs(k - lam) * stats.poisson.pmf(k, lam)))
    assert poisson_mad(lam) == pytest.approx(brute, rel=1e-10)
    draws = np.abs(np.random.default_rng(int(lam)).poisson(lam, size=100_000) - lam)
    se = draws.std() / math.sqrt(draws.size)
    assert abs(poisson_mad(lam) - draws.mean()) < 4 * se


def test_poisson_mad_is_finite_for_huge_means_and_approaches_the_normal_value():
    assert poisson_mad(1e7) == pytest.approx(math.sqrt(2 * 1e7 / math.pi), rel=1e-6)
    assert poisson_mad(0.0) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        poisson_mad(-1.0)


def test_floor_at_the_seed_sparsest_level_is_40_percent_of_15_beads_per_mm2():
    lam = 15.0 * AREA  # 3.93 beads per field
    by_hand = 2 * lam**4 * math.exp(-lam) / math.factorial(3) / AREA  # k = floor(3.93) = 3
    assert float(floor_mae(np.array([15.0]), AREA)[0]) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand / 15.0 == pytest.approx(0.397, abs=1e-3)


# ------------------------------------------------------------------------------------------------ levels
def test_levels_are_dilutions_else_distinct_densities_else_deciles_densest_first():
    idx, names, kind = assign_levels(np.array([15.0, 7964, 15]), np.array([51200.0, 50, 51200]))
    assert (kind, names, idx.tolist()) == ("dilution", ["50x", "51200x"], [1, 0, 1])
    idx, names, kind = assign_levels(np.array([15.0, 7964, 15]), np.array([np.nan, 50, 51200]))
    assert kind == "nominal" and idx.tolist() == [1, 0, 1] and len(names) == 2
    idx, names, kind = assign_levels(np.arange(1.0, 101.0))
    assert kind == "decile" and len(names) == 10 and np.bincount(idx).tolist() == [10] * 10
    assert idx[-1] == 0  # the densest decile first


# ------------------------------------------------------------------------------------------------ constructed sets
def _series(n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dilution, nominal, Poisson SD per image in beads/mm²) of n images per seed level."""
    dil = np.repeat(list(SERIES), n)
    nominal = np.array([SERIES[d] for d in dil])
    return dil, nominal, np.sqrt(nominal * AREA) / AREA


def _alternating(nominal: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """nominal + SD, nominal - SD, ...: mean exactly nominal, MAE exactly one Poisson SD (excess ~1.25)."""
    return nominal + sd * np.where(np.arange(nominal.size) % 2 == 0, 1.0, -1.0)


def test_hand_computed_table_of_two_levels():
    pred = np.array([380.0, 400.0, 440.0, 20.0, 30.0, 40.0])
    nominal = np.array([400.0, 400, 400, 20, 20, 20])
    dilution = np.array([100.0, 100, 100, 2000, 2000, 2000])
    count = np.array([95.0, 100, 110, 4, 5, 6])
    block = calibrate(pred, nominal, dilution, count, area_mm2=0.25)
    dense, sparse = block["levels"]
    assert dense["level"] == "100x" and sparse["level"] == "2000x"
    assert dense["n"] == 3 and dense["nominal"] == 400.0
    assert dense["mean"] == pytest.approx(1220 / 3)
    assert dense["sd"] == pytest.approx(math.sqrt(((380 - 1220 / 3) ** 2 + (400 - 1220 / 3) ** 2
                                                   + (440 - 1220 / 3) ** 2) / 2))
    assert dense["bias"] == pytest.approx(100 * (1220 / 3 - 400) / 400)
    assert dense["cv"] == pytest.approx(100 * dense["sd"] / dense["mean"])
    assert dense["mae"] == pytest.approx(20.0) and dense["mape"] == pytest.approx(5.0)
    # lambda = 400 x 0.25 = 100 beads per field; floor = MAD(Poisson(100)) / 0.25
    mad100 = float(np.sum(np.abs(np.arange(400) - 100) * stats.poisson.pmf(np.arange(400), 100)))
    assert dense["floor_mae"] == pytest.approx(mad100 / 0.25, rel=1e-9)
    assert dense["excess"] == pytest.approx(20.0 / (mad100 / 0.25), rel=1e-9)
    assert dense["oracle_mae"] == pytest.approx(np.mean(np.abs(np.array([95, 100, 110]) / 0.25 - 400)))
    assert dense["poisson_cv"] == pytest.approx(10.0)  # 1 / sqrt(100)
    # the sparse level: mean 30 vs 20 = +50 %; CV 33 % -> 11 fields for a 10 % CV; lambda 5 -> Poisson CV 44.7 %
    assert sparse["bias"] == pytest.approx(50.0) and sparse["cv"] == pytest.approx(100 / 3)
    assert sparse["fields_per_sample"] == 12 and sparse["fields_per_sample_poisson"] == 20
    assert sparse["mae"] == pytest.approx(10.0) and sparse["mape"] == pytest.approx(50.0)
    # bias test: |30 - 20| = 10 vs 3 x max(SD 10, Poisson SD sqrt(5)/0.25 = 8.94) / sqrt(3) = 17.3 -> within
    assert sparse["bias_allowance"] == pytest.approx(3 * 10 / math.sqrt(3)) and sparse["bias_ok"] is True
    assert block["quantification_range"]["levels"] == ["100x"]  # 2000x: bias and CV > 20 %
    assert block["n"] == 6 and block["fov_area_mm2"] == 0.25


def test_perfect_counter_passes_every_level_with_the_oracle_equal_to_it():
    dil, nominal, _ = _series(60)
    count = np.random.default_rng(0).poisson(nominal * AREA).astype(float)
    block = calibrate(count / AREA, nominal, dil, count, AREA)
    assert block["verdict"] == "pass" and block["failing_levels"] == []
    for row in block["levels"]:
        assert row["oracle_mae"] == pytest.approx(row["mae"])
        assert 0.5 < row["excess"] < 1.6, row
    assert block["loglog"]["passed"] and abs(block["loglog"]["slope"] - 1) < 0.02
    # the floor is physics: at 15 beads/mm² (3.9 beads per field) even a perfect counter has a ~50 % CV
    sparsest = block["levels"][-1]
    assert sparsest["poisson_cv"] == pytest.approx(100 / math.sqrt(15 * AREA))
    assert sparsest["fields_per_sample_poisson"] == math.ceil((100 / math.sqrt(15 * AREA) / 10) ** 2)
    assert "51200x" not in block["quantification_range"]["levels"]


def test_constant_140_at_the_four_sparsest_levels_fails_exactly_those():
    dil, nominal, sd = _series()
    pred = np.where(dil >= 6400, 140.0, _alternating(nominal, sd))
    block = calibrate(pred, nominal, dil, None, AREA)
    assert block["verdict"] == "fail" and block["failing_levels"] == SPARSE
    rows = {r["level"]: r for r in block["levels"]}
    assert rows["51200x"]["mape"] == pytest.approx(100 * 125 / 15)  # 833 %: the seed report's "~120 for 15"
    assert rows["51200x"]["excess"] == pytest.approx(125 / float(floor_mae(np.array([15.0]), AREA)[0]))
    assert block["worst_level"] == "51200x"
    assert block["line"].startswith("calibration: FAIL at 6400x, 12800x, 25600x, 51200x (MAPE 42/166/398/833 %, "
                                    "floor 16/21/30/40 %)")
    assert block["quantification_range"]["low_level"] == "3200x"
    assert block["quantification_range"]["high_level"] == "50x"
    assert not block["loglog"]["passed"]  # the flat sparse end bends the curve too


def test_ten_percent_multiplicative_bias_fails_the_bias_test_but_not_linearity():
    dil, nominal, sd = _series()
    pred = 1.1 * _alternating(nominal, sd)
    block = calibrate(pred, nominal, dil, None, AREA)
    fit, prop = block["loglog"], block["proportionality"]
    assert fit["slope"] == pytest.approx(1.0, abs=1e-9) and fit["passed"]
    assert fit["intercept"] == pytest.approx(math.log10(1.1), abs=1e-9) and fit["r2"] == pytest.approx(1.0)
    assert prop["index"] == pytest.approx(0.0, abs=1e-9) and prop["scale"] == pytest.approx(1.1)
    # detectable where 10 % exceeds 3 SE: SE = model SD / sqrt(n) = 1.1 x Poisson SD x sqrt(30/29) / sqrt(30)
    for row in block["levels"]:
        se = 1.1 * math.sqrt(row["nominal"] * AREA) / AREA / math.sqrt(29)
        assert row["bias"] == pytest.approx(10.0)
        assert row["bias_ok"] is (0.1 * row["nominal"] <= 3 * se), row["level"]
    assert block["verdict"] == "fail"
    assert "50x" in block["failing_levels"] and "51200x" not in block["failing_levels"]  # physics at 4 beads/field


def test_slope_0_8_in_log_log_fails_linearity_with_the_proportionality_index_by_hand():
    dil, nominal, _ = _series(3)
    pred = 500**0.2 * nominal**0.8  # exact curve through 500 beads/mm²
    block = calibrate(pred, nominal, dil, None, AREA)
    fit = block["loglog"]
    assert fit["slope"] == pytest.approx(0.8, abs=1e-9) and fit["r2"] == pytest.approx(1.0) and not fit["passed"]
    x = np.array(sorted(SERIES.values(), reverse=True))
    u = 500**0.2 * x**-0.2
    pi = 100 * math.sqrt(np.mean((u / u.mean() - 1) ** 2))
    assert block["proportionality"]["index"] == pytest.approx(pi, rel=1e-9)
    assert "log-log slope 0.800" in block["line"]
    assert proportionality([10.0, 20.0], [10.0, 20.0])["index"] == 0.0


def test_quantification_range_is_the_widest_contiguous_run_with_20_percent_allowed_at_its_lowest_level():
    def level(name, nominal, cv, bias=0.0):
        return {"level": name, "nominal": nominal, "cv": cv, "bias": bias}

    levels = [level("a", 10, 25), level("b", 20, 18), level("c", 40, 12), level("d", 80, 14, bias=-14),
              level("e", 160, 30), level("f", 320, 5), level("g", 640, 19)]
    qr = quantification_range(levels)
    assert qr["levels"] == ["b", "c", "d"] and (qr["low"], qr["high"]) == (20, 80)
    assert quantification_range([level("a", 10, 16, bias=16)])["n_levels"] == 1  # 20 % at the lowest level
    assert quantification_range([level("a", 10, 21)])["levels"] == []


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="not finite"):
        calibrate(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="> 0"):
        calibrate(np.array([1.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="max_excess"):
        CalibrationSettings(max_excess=0)
    with pytest.raises(ValueError, match="unknown calibration"):
        CalibrationSettings.from_mapping({"max_exces": 2})


def test_settings_change_the_verdict_and_are_recorded():
    dil, nominal, sd = _series()
    pred = _alternating(nominal, sd) * 1.0
    pred[dil == 51200] = 15 + 2.2 * float(floor_mae(np.array([15.0]), AREA)[0])  # excess exactly 2.2
    strict = calibrate(pred, nominal, dil, None, AREA, CalibrationSettings(max_excess=2.0, bias_z=100))
    loose = calibrate(pred, nominal, dil, None, AREA, CalibrationSettings(max_excess=3.0, bias_z=100))
    assert strict["failing_levels"] == ["51200x"] and loose["verdict"] == "pass"
    assert (strict["max_excess"], loose["max_excess"], loose["bias_z"]) == (2.0, 3.0, 100)


def test_prediction_columns_drop_ddp_padding_and_name_images():
    out = {"pred": np.array([1.0, 2, 3, 1]), "target": np.array([5.0, 6, 7, 5]), "index": np.array([2.0, 0, 1, 2]),
           "dilution": np.array([50.0, 100, 200, 50]), "count": np.full(4, np.nan)}
    cols = prediction_columns(out, names=["a.tif", "b.tif", "c.tif"])
    assert cols["file"].tolist() == ["a.tif", "b.tif", "c.tif"] and cols["predicted"].tolist() == [2, 3, 1]
    assert cols["nominal"].tolist() == [6, 7, 5] and np.isnan(cols["count"]).all()
    unindexed = prediction_columns({**out, "index": np.full(4, -1.0)}, names=["a.tif", "b.tif", "c.tif"])
    assert unindexed["file"].tolist() == [f"sample_{k:05d}" for k in range(4)]  # kept, never misnamed


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


def test_run_verdict_and_table_are_consistent_with_test_predictions_csv(trained, capsys):  # noqa: F811
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


def test_tensorboard_gets_the_calibration_text_and_figure(trained):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, record = trained
    acc = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"),
                           size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    assert "calibration/verdict/text_summary" in acc.Tags()["tensors"]
    assert "figures/calibration" in acc.Tags()["images"]
    text = acc.Tensors("calibration/verdict/text_summary")[0].tensor_proto.string_val[0].decode()
    assert record["calibration"]["line"] in text and "| level |" in text.replace("  ", " ")


def test_evaluate_writes_the_same_columns_and_table_as_the_run(trained, tmp_path):  # noqa: F811
    from calib_seg.evaluate import evaluate

    cfg, record = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    ecfg = _compose("evaluate", [f"ckpt_path={ckpt}", "logger=none", "trainer.enable_progress_bar=false"],
                    tmp_path / "eval")
    rec = evaluate(ecfg, use_run_data=True)
    _assert_close(json.loads(json.dumps(rec["calibration"]["levels"])), record["calibration"]["levels"])
    ran = read_predictions_csv(Path(cfg.paths.output_dir) / "test_predictions.csv")
    evald = read_predictions_csv(tmp_path / "eval" / "test_predictions.csv")
    assert evald["file"].tolist() == ran["file"].tolist()
    np.testing.assert_allclose(evald["predicted"], ran["predicted"], rtol=1e-5)
    saved = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert saved["calibration"]["line"] == record["calibration"]["line"]


def test_predict_on_a_labelled_bead_folder_writes_the_label_columns_and_the_table(trained, tmp_path, capsys):  # noqa: F811
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


# ------------------------------------------------------------------------------------------------ sweep report
def _job(sweep: Path, name: str, best_val: float, verdict: str | None) -> None:
    dil, nominal, sd = _series(4)
    pred = _alternating(nominal, sd) if verdict == "pass" else np.where(dil >= 6400, 140.0, nominal)
    block = calibrate(pred, nominal, dil, None, AREA) if verdict else None
    record = {"status": "completed", "task": "density", "choices": {"experiment": name, "batch_size": 8},
              "optimized_metric": "val/r2", "best_val": best_val, "best_epoch": 3, "epochs": 3,
              "test_metrics": {"test/r2": best_val, "test/mae": 10.0}, "calibration": block, "provenance": {}}
    (sweep / name).mkdir(parents=True)
    (sweep / name / "run.json").write_text(json.dumps(record))


def test_report_best_job_is_the_best_passing_one_and_shows_the_verdict_columns(tmp_path):
    from calib_seg.report import build_report

    _job(tmp_path, "0_a", 0.999, "fail")
    _job(tmp_path, "1_b", 0.990, "pass")
    text = build_report(tmp_path, figures=False)
    assert "## Best job\n\n`1_b`" in text and "No job passes" not in text
    header = next(line for line in text.splitlines() if line.startswith("| job"))
    for col in ("calibration", "worst level", "worst excess", "quantification range"):
        assert f"| {col} |" in header, col
    row = next(line for line in text.splitlines() if line.startswith("| 0_a"))
    assert "| fail | 51200x |" in row and "| 3200x..50x |" in row
    csv_text = (tmp_path / "summary.csv").read_text()
    assert "calibration,failing_levels,worst_level,worst_excess,quantification_range" in csv_text


def test_report_flags_when_no_job_passes_the_calibration_verdict(tmp_path):
    from calib_seg.report import build_report

    _job(tmp_path, "0_a", 0.999, "fail")
    _job(tmp_path, "1_b", 0.990, "fail")
    text = build_report(tmp_path, figures=False)
    assert "## Best job\n\n`0_a`" in text
    assert "**No job passes the calibration verdict.** `0_a` is only the best by val/r2" in text
    assert "6400x,12800x,25600x,51200x" in text


def test_calibration_settings_are_checked_at_start_with_the_other_config_rules():
    from calib_seg.config import compose
    from calib_seg.validation import problems_in

    GlobalHydra.instance().clear()
    bad = compose(["calibration.max_excess=0", "calibration.bias_z=-1"])
    problems = problems_in(bad)
    assert any(p.startswith("calibration.max_excess: expected a number > 0") for p in problems), problems
    assert any(p.startswith("calibration.bias_z:") for p in problems), problems
    GlobalHydra.instance().clear()
    assert not [p for p in problems_in(compose([])) if p.startswith("calibration")]
