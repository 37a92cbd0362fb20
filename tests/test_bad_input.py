"""Bad data, the gaps of issue 7's table (missing roots, manifests, EM shape/mask errors and slice counts are
already specified in test_bead_folder.py and test_em_data.py): corrupt PNG/TIFF in every reader, skipping them
when asked, manifest leftovers, and one conversion for grey, RGB and 16-bit inputs across readers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from calib_seg.data import images
from calib_seg.data.images import read_image, to_gray, to_unit_float
from calib_seg.data.sources import image_folder
from calib_seg.data.sources.bead_folder import BeadFolder
from calib_seg.data.sources.epfl import EPFLSource
from calib_seg.data.sources.image_folder import FolderSource


def _pair(split_dir, stem, img, mask, ext=".png"):
    for sub, arr in (("images", img), ("masks", mask)):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)
        path = split_dir / sub / f"{stem}{ext}"
        Image.fromarray(arr).save(path) if ext == ".png" else tifffile.imwrite(path, arr)
    return split_dir / "images" / f"{stem}{ext}"


def _mask(h=32, w=32):
    m = np.zeros((h, w), np.uint8)
    m[4:12, 4:20] = 255
    return m


def _truncate(path, keep=40):
    path.write_bytes(path.read_bytes()[:keep])


def _beads(root, names, arrays):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for n, a in zip(names, arrays):
        p = root / "images" / n
        Image.fromarray(a).save(p) if n.endswith(".png") else tifffile.imwrite(p, a)
    (root / "manifest.csv").write_text("file,density\n" + "".join(f"images/{n},{10 * (i + 1)}\n"
                                                                  for i, n in enumerate(names)))


# ------------------------------------------------------------------------------------------ corrupt files
def test_truncated_png_in_a_bead_folder_is_named_or_skipped_and_counted(tmp_path):
    _beads(tmp_path, ["a.png", "b.png", "c.png"], [np.full((16, 16), 9, np.uint8)] * 3)
    _truncate(tmp_path / "images" / "b.png")
    with pytest.raises(ValueError, match=r"cannot read image .*images/b\.png"):
        BeadFolder(tmp_path).load()
    beads = BeadFolder(tmp_path, skip_bad_files=True).load()
    assert beads.names == ["images/a.png", "images/c.png"]
    assert beads.fingerprint["skipped_files"] == ["images/b.png"]


def test_corrupt_png_in_an_em_folder_is_named(tmp_path):
    for s in ("a", "b", "c"):
        _pair(tmp_path / "train", s, np.zeros((32, 32), np.uint8), _mask())
    _truncate(tmp_path / "train" / "images" / "b.png")
    with pytest.raises(ValueError, match=r"cannot read image .*train/images/b\.png"):
        FolderSource(tmp_path)


def test_corrupt_tiff_mask_in_an_em_folder_is_named(tmp_path):
    for s in ("a", "b"):
        _pair(tmp_path / "train", s, np.zeros((32, 32), np.uint8), _mask(), ext=".tif")
    (tmp_path / "train" / "masks" / "a.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*train/masks/a\.tif"):
        FolderSource(tmp_path)


def test_em_folder_skips_unreadable_pairs_when_asked_and_lists_them_in_the_fingerprint(tmp_path):
    for s in ("a", "b", "c"):
        _pair(tmp_path / "train", s, np.full((32, 32), ord(s), np.uint8), _mask())
    _truncate(tmp_path / "train" / "images" / "b.png")
    src = FolderSource(tmp_path, skip_bad_files=True)
    assert sorted(src.split("train").names + src.split("val").names) == ["a", "c"]
    assert src.fingerprint()["skipped_files"] == ["train/images/b.png"]


def test_em_folder_with_every_pair_unreadable_is_an_error_even_when_skipping(tmp_path):
    _pair(tmp_path / "train", "a", np.zeros((32, 32), np.uint8), _mask())
    _truncate(tmp_path / "train" / "images" / "a.png")
    with pytest.raises(ValueError, match=r"train: none of the 1 image/mask pairs could be read"):
        FolderSource(tmp_path, skip_bad_files=True)


@pytest.mark.parametrize(("keep", "message"), [(8, "cannot read TIFF stack"), (300, "truncated/corrupt file")])
def test_truncated_epfl_stack_is_named(tmp_path, keep, message):
    stack = np.zeros((4, 32, 32), np.uint8)
    masks = np.zeros((4, 32, 32), np.uint8)
    for name, arr in (("training.tif", stack), ("training_groundtruth.tif", masks), ("testing.tif", stack),
                      ("testing_groundtruth.tif", masks)):
        tifffile.imwrite(tmp_path / name, arr, photometric="minisblack", compression="zlib")
    _truncate(tmp_path / "testing.tif", keep=keep)  # 300 bytes: tifffile still returns the first slice
    with pytest.raises(ValueError, match=r"testing\.tif") as err:
        EPFLSource(tmp_path, mmap=False)
    assert message in str(err.value)


def test_epfl_test_stacks_with_different_slice_counts_name_both_files(tmp_path):
    for name, n in (("training.tif", 4), ("training_groundtruth.tif", 4), ("testing.tif", 3),
                    ("testing_groundtruth.tif", 2)):
        tifffile.imwrite(tmp_path / name, np.zeros((n, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match=r"different slice counts: .*testing\.tif has 3, .*testing_groundtruth\.tif has 2"):
        EPFLSource(tmp_path)


# ---------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("file,density\n", "the manifest has no rows"),
        ("file,density,dilution\nimages/a.tif,,\n", "line 2: neither 'density' nor 'dilution' is given"),
        ("file,density\nimages/a.tif,many\n", "line 2, column 'density': 'many' is not a number"),
        ("file,density\n,10\n", "line 2, column 'file': empty file name"),
    ],
)
def test_more_bad_manifests_name_the_line_and_column(tmp_path, manifest, message):
    _beads(tmp_path, ["a.tif", "b.tif"], [np.zeros((8, 8), np.uint16)] * 2)
    (tmp_path / "manifest.csv").write_text(manifest)
    with pytest.raises(ValueError, match=message):
        BeadFolder(tmp_path).load()


def test_bead_folder_mixing_8_and_16_bit_images_is_an_error(tmp_path):
    _beads(tmp_path, ["a.tif", "b.tif"], [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16)])
    with pytest.raises(ValueError, match=r"images mix pixel types \['uint16', 'uint8'\]"):
        BeadFolder(tmp_path).load()


# ------------------------------------------------------------------------------------ grey / RGB / 16 bit
def test_em_reader_uses_the_one_conversion_of_calib_seg_data_images():
    assert image_folder.to_unit_float is images.to_unit_float


LEVELS = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("grey8.png", LEVELS),
        ("grey8.tif", LEVELS),
        ("rgb8.png", np.repeat(LEVELS[..., None], 3, axis=-1)),
        ("rgba8.png", np.concatenate([np.repeat(LEVELS[..., None], 3, -1), np.full((2, 3, 1), 7, np.uint8)], -1)),
        ("grey16.tif", LEVELS.astype(np.uint16) * 257),
        ("grey16.png", LEVELS.astype(np.uint16) * 257),
        ("rgb16.tif", np.repeat(LEVELS[..., None].astype(np.uint16) * 257, 3, axis=-1)),
        ("float.tif", LEVELS.astype(np.float32) / 255),
    ],
)
def test_grey_rgb_and_16_bit_files_of_the_same_picture_read_the_same(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path) if name.endswith(".png") else tifffile.imwrite(path, array)
    expected = LEVELS / 255.0
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)
    np.testing.assert_allclose(to_unit_float(image_folder.read_image_file(path)), expected, atol=1e-6)


def test_rgb_colours_become_itu601_luminance_in_float_and_rounded_in_stored_type():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0], rgb[0, 1, 1], rgb[0, 2, 2] = 255, 255, 255
    np.testing.assert_allclose(to_unit_float(rgb)[0], [0.299, 0.587, 0.114], rtol=1e-6)
    assert to_gray(rgb)[0].tolist() == [76, 150, 29]  # 76.245, 149.685, 29.07 rounded, not truncated


def test_twelve_bit_camera_data_uses_the_known_bit_depth():
    np.testing.assert_allclose(to_unit_float(np.array([[0, 4095]], np.uint16), bit_depth=12), [[0.0, 1.0]])
    np.testing.assert_allclose(to_unit_float(np.array([[0, 4095]], np.uint16)), [[0.0, 4095 / 65535]])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0.0, 2.0]], np.float32), r"x\.tif: float image values span \[0, 2\], outside \[0, 1\]"),
        (np.array([[0.0, np.nan]], np.float32), r"x\.tif: float image contains NaN or inf"),
        (np.array([[-1, 5]], np.int16), r"x\.tif: unsupported image dtype int16"),
        (np.array([[0, 70000]], np.int32), r"x\.tif: integer image with values 0\.\.70000 does not fit 16 bits"),
        (np.zeros((2, 5, 6), np.uint8), r"x\.tif: expected a 2-D grey or RGB\(A\) image, got shape \(2, 5, 6\)"),
    ],
)
def test_inputs_that_cannot_be_converted_without_guessing_are_errors_naming_the_file(array, message):
    with pytest.raises(ValueError, match=message):
        to_unit_float(array, "x.tif")


def test_bead_folder_rgb_and_grey_copies_of_an_image_give_the_same_pixels(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    _beads(tmp_path / "g", ["a.png", "b.png"], [grey, grey])
    _beads(tmp_path / "c", ["a.png", "b.png"], [np.repeat(grey[..., None], 3, -1)] * 2)
    g, c = BeadFolder(tmp_path / "g").load(), BeadFolder(tmp_path / "c").load()
    np.testing.assert_array_equal(g.images, c.images)
    assert g.scale == c.scale == 255.0
