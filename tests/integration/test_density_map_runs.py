"""Density-map runs through the train entry point: a point-annotated folder end to end, and (slow) the map
counter beating the global density model at the sparse dilutions of the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from calib_seg.data.simulators.beads import BeadPhysics, render_beads
from helpers.configs import TINY_BEADS, compose_run_cfg

_MAP = ["model=density_map", "model.filters=[4,8]", "model.convs_per_stage=1"]


def _dot_folder(root, n_train=10, n_test=3, size=48):
    """Simulated bead images (16-bit) with red-dot annotations, in the dot-image layout."""
    rng = np.random.default_rng(0)
    p = BeadPhysics(image_size=size, pixel_size_um=4.0, psf_sigma_um=2.0)
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "dots"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            b = render_beads(rng, float(rng.choice([200.0, 1000.0, 3000.0])), 1.0, p)
            Image.fromarray(b.image).save(root / split / "images" / f"b{i}.png")
            dots = np.zeros((size, size, 3), np.uint8)
            yx = np.floor(b.centres_um / p.pixel_size_um).astype(int)
            dots[yx[:, 0], yx[:, 1], 0] = 255  # two beads in one pixel would be one dot: rare at these densities
            Image.fromarray(dots).save(root / split / "dots" / f"b{i}.png")
    return root


def test_point_folder_run_logs_count_and_localisation_metrics(tmp_path):
    from calib_seg.train import run

    root = _dot_folder(tmp_path / "dots")
    # plumbing only (2 epochs on 8 images learn little: the guard's final R² rule would call it "not a result")
    quiet = ["logger=none", "torch_threads=1", "trainer.enable_progress_bar=false", "callbacks.guard.r2_min=null"]
    cfg = compose_run_cfg([*quiet, *_MAP, "data=point_folder", f"data.source.root={root}",
                           "data.crop_size=32", "data.batch_size=4", "trainer.max_epochs=2"], tmp_path / "run")
    record = run(cfg)
    assert record["status"] == "completed", record.get("reason")
    m = json.loads((tmp_path / "run" / "run.json").read_text())["test_metrics"]
    for key in ("test/count_mae", "test/count_rmse", "test/loc_f1", "test/loc_precision", "test/loc_recall",
                "test/mae", "test/r2"):
        assert key in m and np.isfinite(m[key]), key
    assert m["test/mae"] == pytest.approx(m["test/count_mae"], rel=1e-5)  # no pixel size: density = count
    assert (tmp_path / "run" / "test_predictions.csv").is_file()


@pytest.mark.slow
def test_density_map_beats_the_global_model_at_the_sparse_levels(tmp_path):
    from calib_seg.train import run

    common = [*TINY_BEADS, "trainer.max_epochs=12", "callbacks.guard.r2_min=null"]
    sparse = ("6400", "12800", "25600", "51200")
    maes = {}
    for name, extra in (("global", []), ("map", ["model=density_map"])):
        rec = run(compose_run_cfg([*common, *extra], tmp_path / name))
        assert rec["status"] == "completed", rec.get("reason")
        tm = json.loads((tmp_path / name / "run.json").read_text())["test_metrics"]
        maes[name] = np.mean([tm[f"test/mae_dilution_{d}x"] for d in sparse])
        maes[f"{name}_r2"] = tm["test/r2"]
    assert maes["map"] < 0.5 * maes["global"], maes
    assert maes["map_r2"] > 0.5, maes  # it learned the range too, not only an empty map at the sparse end
