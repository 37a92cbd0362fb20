"""Density-map prediction on images of any size: tiles average (never sum) the map, so a tiled count equals
the whole-image count; overlays mark the detected objects; a tile the network cannot take is a clear error."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from calib_seg.models.density_map import DensityMapNet
from calib_seg.predict_map import overlay, predict_counts, predict_map
from calib_seg.tasks.density_map import DensityMapTask


def _task(seed: int = 0) -> DensityMapTask:
    torch.manual_seed(seed)
    # softplus: a random-init map is positive everywhere, so every pixel of every tile counts
    model = DensityMapNet(filters=[4, 8, 16], convs_per_stage=1, out_activation="softplus")
    return DensityMapTask(model, optimizer=functools.partial(torch.optim.Adam, lr=1e-3)).eval()


def _image(h: int = 200, w: int = 168, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((h, w)).astype(np.float32) * 0.2
    for y, x in rng.integers(0, (h, w), size=(40, 2)):  # bright spots so the map has structure
        img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 1.0
    return img


def test_tiled_map_equals_the_whole_image_map_and_count():
    task, img = _task(), _image()
    whole, n_whole = predict_map(task, img, tile=256, overlap=64)
    tiled, n_tiled = predict_map(task, img, tile=64, overlap=48)  # margin 24 px >= the net's receptive radius
    assert n_whole == 1 and n_tiled >= 9  # several tiles in each direction
    assert tiled.shape == whole.shape == (1, 1, *img.shape)
    count_whole, count_tiled = float(whole.sum()) / 100, float(tiled.sum()) / 100
    assert count_whole > 1
    assert count_tiled == pytest.approx(count_whole, rel=1e-3)
    np.testing.assert_allclose(tiled.numpy(), whole.numpy(), rtol=1e-3, atol=1e-4 * float(whole.max()))
    # summing overlapping tiles instead of averaging would count the overlaps twice: far off the 0.1 % above
    assert n_tiled * 64 * 64 > 1.5 * img.size


def test_tiled_count_is_close_with_a_small_overlap():
    """The default-style narrow margin is an approximation, still within 1 % of the whole-image count."""
    task, img = _task(seed=3), _image(seed=4)
    whole, _ = predict_map(task, img, tile=256, overlap=64)
    tiled, n = predict_map(task, img, tile=64, overlap=16)
    assert n > 1
    assert float(tiled.sum()) == pytest.approx(float(whole.sum()), rel=1e-2)


def test_rows_count_density_and_units(tmp_path):
    import tifffile
    from PIL import Image

    task = _task()
    img = _image(96, 80)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, (img * 65535).astype(np.uint16))
    cfg = OmegaConf.create({"map_tile_size": 64, "map_tile_overlap": 32, "save_density_maps": True,
                            "save_overlays": True})
    per_image = predict_counts(task, [path], 16, None, cfg, tmp_path / "out")[0]
    per_mm2 = predict_counts(task, [path], 16, 2.0, cfg, tmp_path / "out")[0]
    assert per_image["density_unit"] == "objects/image" and per_image["density"] == per_image["predicted_count"]
    area = 96 * 80 * (2.0e-3) ** 2
    assert per_mm2["density_unit"] == "objects/mm2" and per_mm2["fov_area_mm2"] == pytest.approx(area)
    assert per_mm2["density"] == pytest.approx(per_mm2["predicted_count"] / area)
    assert per_image["tiles"] == 4
    saved = tifffile.imread(tmp_path / "out" / "a_map.tif")
    assert saved.shape == (96, 80) and saved.dtype == np.float32
    assert float(saved.sum(dtype=np.float64)) == pytest.approx(per_image["predicted_count"], rel=1e-5)
    ov = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    assert ov.shape == (96, 80, 3)


def test_overlay_marks_each_peak_in_red():
    ov = overlay(np.zeros((20, 20), np.float32), np.array([[5.5, 5.5], [14.5, 3.5]]))
    red = (ov[..., 0] == 255) & (ov[..., 1] == 0)
    assert red[5, 5] and red[14, 3] and red[5, 7] and not red[10, 10]
    assert red.sum() == 18  # two plus signs of 9 pixels, none clipped


@pytest.mark.parametrize("tile, overlap, match", [(50, 8, "multiple of 4"), (64, 64, "map_tile_overlap"),
                                                  (64, 62, "map_tile_overlap")])
def test_a_tile_the_network_cannot_take_is_a_clear_input_error(tmp_path, tile, overlap, match):
    import tifffile

    from calib_seg.errors import InputError

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((32, 32), np.uint8))
    cfg = OmegaConf.create({"map_tile_size": tile, "map_tile_overlap": overlap})
    with pytest.raises(InputError, match=match):
        predict_counts(_task(), [tmp_path / "a.tif"], None, None, cfg)


def test_an_unreadable_image_is_an_input_error_naming_the_file(tmp_path):
    from calib_seg.errors import InputError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        predict_counts(_task(), [bad], None, None, OmegaConf.create({}))


def test_inputs_at_another_pixel_size_are_counted_at_the_model_scale(tmp_path):
    import tifffile

    from calib_seg.predict import to_model_scale

    task, img = _task(), _image(96, 80)
    tifffile.imwrite(tmp_path / "a.tif", img)
    cfg = OmegaConf.create({"map_tile_size": 256, "map_tile_overlap": 64, "save_density_maps": True})
    row = predict_counts(task, [tmp_path / "a.tif"], None, 2.0, cfg, tmp_path / "out", scale=0.5)[0]
    expected, _ = predict_map(task, to_model_scale(img, 0.5), 256, 64)
    assert tifffile.imread(tmp_path / "out" / "a_map.tif").shape == (48, 40)  # the map is at the model's scale
    assert row["predicted_count"] == pytest.approx(float(expected.double().sum()) / 100, rel=1e-6)
    assert (row["height"], row["width"]) == (96, 80)  # ... the FOV is the input's own
    assert row["fov_area_mm2"] == pytest.approx(96 * 80 * (2.0e-3) ** 2)
