"""Density-map runs through the train entry point: a point-annotated folder end to end, prediction with the run's
checkpoint on new images of any size, and (slow) the map counter beating the global density model at the sparse
dilutions of the same data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
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


@pytest.fixture(scope="module")
def point_run(tmp_path_factory):
    """An 8-epoch density-map run on a tiny dot-annotated folder: (folder, run folder, run record).

    Plumbing, not a learning test, but long enough (lr 0.01) that the map is no longer ~empty, so the prediction
    tests below compare counts of hundreds of objects rather than of nothing."""
    from calib_seg.train import run

    tmp = tmp_path_factory.mktemp("point_run")
    root = _dot_folder(tmp / "dots")
    # 8 epochs on 8 images learn little: the guard's R² rule and final check would call it "not a result"
    quiet = ["logger=none", "torch_threads=1", "trainer.enable_progress_bar=false", "callbacks.guard.r2_min=null",
             "callbacks.guard.final_r2_min=null"]
    cfg = compose_run_cfg([*quiet, *_MAP, "data=point_folder", f"data.source.root={root}",
                           "data.crop_size=32", "data.batch_size=4", "trainer.max_epochs=8", "task.optimizer.lr=0.01"], tmp / "run")
    return root, tmp / "run", run(cfg)


def test_point_folder_run_logs_count_and_localisation_metrics(point_run):
    root, run_dir, record = point_run
    assert record["status"] == "completed", record.get("reason")
    m = json.loads((run_dir / "run.json").read_text())["test_metrics"]
    for key in ("test/count_mae", "test/count_rmse", "test/loc_f1", "test/loc_precision", "test/loc_recall",
                "test/mae", "test/r2"):
        assert key in m and np.isfinite(m[key]), key
    assert m["test/mae"] == pytest.approx(m["test/count_mae"], rel=1e-5)  # no pixel size: density = count
    assert (run_dir / "test_predictions.csv").is_file()


def _predict(run_dir, inp, out, **extra):
    from omegaconf import OmegaConf

    from calib_seg.predict import predict

    ckpt = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    return predict(OmegaConf.create({"ckpt_path": str(ckpt), "input": str(inp), "output": str(out),
                                     "bit_depth": None, "pixel_size_um": None, "trainer": {"accelerator": "cpu"},
                                     "map_tile_size": 64, "map_tile_overlap": 32, **extra}))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_on_annotated_images_writes_counts_and_errors(point_run, tmp_path):
    root, run_dir, _ = point_run
    rows = _rows(_predict(run_dir, root / "test", tmp_path / "pred", save_density_maps=True, save_overlays=True))
    assert list(rows[0]) == ["file", "frame", "height", "width", "predicted_count", "density", "density_unit",
                             "fov_area_mm2", "detected", "tiles", "true_count", "count_error", "abs_count_error"]
    assert [Path(r["file"]).name for r in rows] == ["b0.png", "b1.png", "b2.png"]
    for r in rows:
        stem = Path(r["file"]).stem
        true = int((np.asarray(Image.open(root / "test" / "dots" / f"{stem}.png"))[..., 0] > 0).sum())
        assert float(r["true_count"]) == true  # the annotated count, read independently here
        assert float(r["count_error"]) == pytest.approx(float(r["predicted_count"]) - true, abs=1e-5)
        # no pixel size in the run or the input: density is objects per image
        assert r["density_unit"] == "objects/image" and r["fov_area_mm2"] == ""
        assert float(r["density"]) == pytest.approx(float(r["predicted_count"]))
        saved = tifffile.imread(tmp_path / "pred" / f"{stem}_map.tif")
        assert float(saved.sum(dtype=np.float64)) == pytest.approx(float(r["predicted_count"]), rel=1e-4, abs=1e-4)
        assert (tmp_path / "pred" / f"{stem}_overlay.png").is_file()
    # a user's pixel size turns the density into objects/mm²
    um = _rows(_predict(run_dir, root / "test", tmp_path / "um.csv", pixel_size_um=4.0))
    for r, base in zip(um, rows):
        assert r["density_unit"] == "objects/mm2" and float(r["fov_area_mm2"]) == pytest.approx(48 * 48 * 16e-6)
        assert float(r["density"]) == pytest.approx(float(base["predicted_count"]) / (48 * 48 * 16e-6), rel=1e-5)


def test_predict_on_an_image_several_tiles_wide_matches_its_whole_image_count(point_run, tmp_path):
    root, run_dir, _ = point_run
    tiles = [np.asarray(Image.open(root / "train" / "images" / f"b{i}.png")) for i in range(9)]
    big = np.block([[tiles[3 * r + c] for c in range(3)] for r in range(3)])  # 144 x 144, 16-bit
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", big)
    tiled = _rows(_predict(run_dir, tmp_path / "in", tmp_path / "tiled.csv"))[0]
    whole = _rows(_predict(run_dir, tmp_path / "in", tmp_path / "whole.csv", map_tile_size=256))[0]
    assert int(tiled["tiles"]) == 16 and int(whole["tiles"]) == 1 and "true_count" not in tiled  # no labels
    assert float(whole["predicted_count"]) > 1
    assert float(tiled["predicted_count"]) == pytest.approx(float(whole["predicted_count"]), rel=1e-2)


def test_predict_with_a_tile_the_network_cannot_take_exits_with_one_message(point_run, tmp_path):
    from calib_seg.errors import InputError

    root, run_dir, _ = point_run
    with pytest.raises(InputError, match="map_tile_size=31 must be a positive multiple of 2"):
        _predict(run_dir, root / "test", tmp_path / "bad.csv", map_tile_size=31, map_tile_overlap=8)


_QUIET = ["logger=none", "torch_threads=1", "trainer.enable_progress_bar=false", "callbacks.guard.r2_min=null",
          "callbacks.guard.final_r2_min=null"]


def test_init_from_a_run_folder_fine_tunes_on_images_labelled_only_by_density(point_run, tmp_path):
    from calib_seg.data.sources.bead_folder import write_bead_folder
    from calib_seg.data.sources.beads_synth import SyntheticBeads
    from calib_seg.train import run

    root, run_dir, pre = point_run
    # the same data without training: exactly the pretrained run's test numbers (its best checkpoint's weights)
    same = run(compose_run_cfg([*_QUIET, *_MAP, "data=point_folder", f"data.source.root={root}",
                                f"init_from={run_dir}", "train=false"], tmp_path / "same"))
    assert Path(same["init_from"]).name.startswith("best-")
    assert same["test_metrics"]["test/count_mae"] == pytest.approx(pre["test_metrics"]["test/count_mae"], rel=1e-6)
    # a dilution series labelled only by dilution (no centres.csv): the map's integral is trained on density x area
    src = SyntheticBeads(n_per_level=4, seed=3, dilutions=[50, 400, 3200], density_range=[7964, 124],
                         physics={"image_size": 48, "pixel_size_um": 4.0, "psf_sigma_um": 2.0})
    folder = write_bead_folder(src, tmp_path / "series")
    (folder / "centres.csv").unlink()
    data = ["data=beads_folder", f"data.source.root={folder}", "data.batch_size=4", "data.val_fraction=0.25",
            "data.test_fraction=0.25"]
    before = run(compose_run_cfg([*_QUIET, *_MAP, *data, f"init_from={run_dir}", "train=false"], tmp_path / "before"))
    tuned = run(compose_run_cfg([*_QUIET, *_MAP, *data, f"init_from={run_dir}", "trainer.max_epochs=8",
                                 "task.optimizer.lr=0.003"], tmp_path / "tuned"))
    assert tuned["status"] == "completed", tuned.get("reason")
    assert tuned["data_fingerprint"]["annotated_images"] == {"train": 0, "val": 0, "test": 0}
    assert tuned["test_metrics"]["test/mae"] < before["test_metrics"]["test/mae"], (before["test_metrics"],
                                                                                    tuned["test_metrics"])


def test_init_from_a_run_of_another_architecture_is_one_clear_error(point_run, tmp_path):
    from calib_seg.errors import InputError
    from calib_seg.train import run

    root, run_dir, _ = point_run
    cfg = compose_run_cfg([*_QUIET, *_MAP, "model.filters=[4,8,16]", "data=point_folder", f"data.source.root={root}",
                           f"init_from={run_dir}"], tmp_path / "other")
    with pytest.raises(InputError, match=r"does not fit this run's task and model \(missing: model\."):
        run(cfg)


@pytest.mark.slow
def test_density_map_beats_the_global_model_at_the_sparse_levels(tmp_path):
    from calib_seg.train import run

    # batch 16 (the tiny preset's 4 gives 4x the steps): the comparison this test was measured on; at batch 4 the
    # map still wins the sparse levels, but by less (mean MAE 51 vs 62)
    common = [*TINY_BEADS, "trainer.max_epochs=12", "data.batch_size=16", "callbacks.guard.r2_min=null",
              "callbacks.guard.final_r2_min=null"]
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


def test_predict_on_a_labelled_bead_folder_gives_count_errors_and_the_calibration_table(point_run, tmp_path):
    from calib_seg.data.sources.bead_folder import write_bead_folder
    from calib_seg.data.sources.beads_synth import SyntheticBeads

    _, run_dir, _ = point_run
    src = SyntheticBeads(n_per_level=2, seed=5, dilutions=[50, 51200], density_range=[7964, 15],
                         physics={"image_size": 48, "pixel_size_um": 4.0, "psf_sigma_um": 2.0})
    folder = write_bead_folder(src, tmp_path / "labelled")
    rows = _rows(_predict(run_dir, folder, tmp_path / "out.csv", pixel_size_um=4.0,
                          calibration={"max_excess": 2.0}))
    assert len(rows) == 4 and {r["dilution"] for r in rows} == {"50", "51200"}
    for r in rows:  # the folder's realised count is the truth; "predicted" is the density the verdict reads
        assert float(r["true_count"]) == float(r["count"])
        assert float(r["count_error"]) == pytest.approx(float(r["predicted_count"]) - float(r["count"]), abs=1e-5)
        assert float(r["predicted"]) == float(r["density"]) and r["density_unit"] == "objects/mm2"
    block = json.loads((tmp_path / "out_calibration.json").read_text())
    assert [lv["level"] for lv in block["levels"]] == ["50x", "51200x"]
