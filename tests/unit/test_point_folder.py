"""Point-annotated folders: dots/ and points.csv readers, hold-out of whole training images, crops by centre."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib_seg.data.counting import PointDataModule
from calib_seg.data.points import MapTarget
from calib_seg.data.sources.point_folder import PointFolder


def _write(root, split, stem, img, dots):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "dots").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / split / "images" / f"{stem}.png")
    Image.fromarray(dots).save(root / split / "dots" / f"{stem}.png")


def _folder(tmp_path, n_train=5, size=(40, 48)):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", 2)):
        for i in range(n):
            img = rng.integers(0, 65535, size=size, dtype=np.uint16)  # 16-bit grey images
            dots = np.zeros((*size, 3), np.uint8)
            ys, xs = rng.integers(0, size[0], 3 + i), rng.integers(0, size[1], 3 + i)
            dots[ys, xs, 0] = 255
            dots[0, size[1] - 1, 0] = 255  # a dot on the border
            _write(tmp_path, split, f"im{i}", img, dots)
    return tmp_path


def test_point_folder_reads_16bit_images_and_rgb_dots(tmp_path):
    src = PointFolder(_folder(tmp_path))
    train = src.split("train")
    assert len(train) == 5 and train.images[0].dtype == np.uint16 and train.scales[0] == 65535.0
    counts = [len(c) for c in train.centres_px]
    dots = [np.count_nonzero(np.asarray(Image.open(tmp_path / "train" / "dots" / f"im{i}.png"))[..., 0])
            for i in range(5)]
    assert counts == dots


def test_dots_image_of_another_size_names_the_file(tmp_path):
    _folder(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "train" / "dots" / "im0.png")
    with pytest.raises(ValueError, match="im0.png: dots image is 10x10 px"):
        PointFolder(tmp_path).split("train")


def test_points_csv_replaces_dot_images(tmp_path):
    _folder(tmp_path)
    (tmp_path / "test" / "points.csv").write_text("file,x,y\nim0.png,1,2\nim0.png,3,4\nim1.png,,\n")
    test = PointFolder(tmp_path).split("test")
    assert [len(c) for c in test.centres_px] == [2, 0]


def test_without_val_whole_training_images_are_held_out_and_crops_count_by_centre(tmp_path):
    dm = PointDataModule(PointFolder(_folder(tmp_path)), crop_size=16, batch_size=2, val_fraction=0.4)
    dm.serve_maps(MapTarget(sigma_px=1.0, scale=100.0))
    splits = dm.prepare()
    assert (len(splits["train"]), len(splits["val"])) == (3, 2)
    assert not set(splits["train"].names) & set(splits["val"].names)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16) and batch["map"].shape == (2, 1, 16, 16)
    np.testing.assert_allclose(batch["map"].sum(dim=(1, 2, 3)).numpy() / 100.0, batch["count"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(batch["dots"].sum(dim=(1, 2, 3)).numpy(), batch["count"].numpy())
    whole = next(iter(dm.test_dataloader()))
    assert whole["image"].shape == (1, 1, 40, 48)
    assert float(whole["count"][0]) == len(splits["test"].centres_px[0]) == float(whole["density"][0])
