"""The benchmark helpers that produce numbers (classical baselines, metrics, results writer) on tiny exact inputs.

No timings here: benchmarks/ measures those; these tests only pin the arithmetic the tables rely on.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from helpers.paths import REPO

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import classical  # noqa: E402
import common  # noqa: E402


def beads_image(centres: list[tuple[float, float]], size: int = 64, sigma: float = 1.5) -> np.ndarray:
    """Bright-field-like image: background 0.7, each bead a dark Gaussian spot of depth 0.4."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    img = np.full((size, size), 0.7)
    for cy, cx in centres:
        img -= 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return img


GRID = [(10.0 + 14 * i, 10.0 + 14 * j) for i in range(4) for j in range(4)]  # 16 well-separated positions


def test_log_peaks_count_exactly_the_well_separated_beads():
    img = beads_image(GRID[:5])
    peaks = classical.log_peaks(img, sigmas=(1.0, 1.5, 2.0))
    # the five beads stand far above any noise-free background response
    assert classical.count_above(peaks, 0.5 * peaks[4]) == 5
    assert classical.count_above(peaks, 2 * peaks[0]) == 0


def test_log_counter_tuned_on_train_recovers_counts_and_calibration():
    counts = [1, 2, 3, 5, 8, 13]
    images = np.stack([beads_image(GRID[:k]) for k in counts])
    density = 100.0 * np.asarray(counts, float)  # 100 beads/mm² per bead in the FOV
    counter = classical.LoGCounter(sigma_sets=[(1.0, 1.5, 2.0)]).fit(images, density)
    np.testing.assert_array_equal(counter.count(images), counts)
    np.testing.assert_allclose(counter.predict(images), density, atol=1e-6)
    assert counter.slope == pytest.approx(100.0) and counter.intercept == pytest.approx(0.0, abs=1e-6)


def test_otsu_segmenter_finds_dark_discs_and_jaccard_dice_are_exact():
    yy, xx = np.mgrid[0:64, 0:64]
    mask = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 45) ** 2 + (xx - 40) ** 2 < 100)
    img = np.where(mask, 0.2, 0.8)
    seg = classical.OtsuSegmenter(radii=(0, 1), smooth_sigma=(0.0,)).fit([img], [mask])
    assert seg.dark
    assert classical.jaccard_dice(seg.predict(img), mask) == (1.0, 1.0)
    # 2 of 4 predicted pixels right, 3 true: IoU 2/5, Dice 4/7
    pred, truth = np.array([1, 1, 1, 1, 0]), np.array([1, 1, 0, 0, 1])
    j, d = classical.jaccard_dice(pred, truth)
    assert j == pytest.approx(2 / 5) and d == pytest.approx(4 / 7)


def test_regression_metrics_match_sklearn_and_per_dilution_mae():
    rng = np.random.default_rng(0)
    t = rng.uniform(15, 8000, 40)
    p = t + rng.normal(0, 50, 40)
    m = common.regression_metrics(p, t)
    assert m["r2"] == pytest.approx(r2_score(t, p), rel=1e-12)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
    d = np.repeat([50.0, 100.0], 20)
    per = common.per_dilution_mae(p, t, d)
    assert per == {"50x": pytest.approx(np.abs(p - t)[:20].mean()), "100x": pytest.approx(np.abs(p - t)[20:].mean())}


def test_results_writer_merges_sections_and_renders_markdown(tmp_path):
    path = tmp_path / "results.json"
    common.write_section("B3", {"ratio_small": 1.02}, "## B3 framework overhead\n\nratio 1.02", path=path)
    common.write_section("B1", {"r2_model": 0.99}, "## B1 density quality\n\nR² 0.99", path=path)
    common.write_section("B3", {"ratio_small": 1.04, "ratio_large": 1.01}, "## B3 framework overhead\n\nnew", path=path)
    data = json.loads(path.read_text())
    assert data["B1"] == {"r2_model": 0.99}
    assert data["B3"] == {"ratio_small": 1.04, "ratio_large": 1.01}  # the latest run of a section wins
    assert {"cpu_model", "cores", "torch", "device"} <= set(data["machine"])
    md = (tmp_path / "results.md").read_text()
    assert md.index("## B1") < md.index("## B3")  # sections in B1..B6 order whatever the run order
    assert "new" in md and "ratio 1.02" not in md
    with pytest.raises(ValueError):
        common.write_section("B9", {}, "", path=path)


def test_md_table_formats_numbers():
    table = common.md_table(["a", "b"], [["x", 0.123456], ["y", 1234.5678], ["z", float("nan")]])
    assert table.splitlines()[2:] == ["| x | 0.1235 |", "| y | 1234.6 |", "| z | n/a |"]


def test_recorded_commands_show_paths_a_reader_can_rerun(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    monkeypatch.setattr(common, "SHARED", shared)
    cmd = (f"python -m calib_seg.train data.source.root={shared}/data/lucchi_epfl_train "
           f"hydra.run.dir={common.REPO}/benchmarks/_work/b2e/base")
    assert common.shown(cmd) == ("python -m calib_seg.train data.source.root=../shared/data/lucchi_epfl_train "
                                 "hydra.run.dir=benchmarks/_work/b2e/base")
    # a path outside both stays as it is
    assert common.shown("data.source.root=/data/em") == "data.source.root=/data/em"


@pytest.mark.parametrize("args, says", [
    (["--train", "--only", "nosuch"], "--only nosuch: not an ablation"),
    (["--run", "a=/nowhere", "--inference-on", "b"], "--inference-on b: not a run here"),
])
def test_b2_real_em_refuses_unknown_run_names_before_any_work(args, says, capsys, monkeypatch):
    import b2_real_em

    monkeypatch.setattr(b2_real_em, "train", lambda *a, **k: pytest.fail("trained before checking the names"))
    monkeypatch.setattr(sys, "argv", ["b2_real_em.py", *args])
    with pytest.raises(SystemExit) as stop:
        b2_real_em.main()
    assert stop.value.code == 2 and says in capsys.readouterr().err
