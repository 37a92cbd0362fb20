"""The bead folder reader: round trip with the synthetic writer, and a clear error for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from calib_seg.data.sources.bead_folder import BeadFolder, parse_dilution, write_bead_folder
from calib_seg.data.sources.beads_synth import SyntheticBeads

SMALL = {"image_size": 32, "pixel_size_um": 16.0, "psf_sigma_um": 8.0}


def _write_images(root, names, shape=(16, 16), dtype=np.uint16):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        tifffile.imwrite(root / "images" / n, np.full(shape, 100, dtype))


def _manifest(root, text):
    (root / "manifest.csv").write_text(text)


def test_written_synthetic_set_reads_back_identically(tmp_path):
    src = SyntheticBeads(n_per_level=2, physics=SMALL, seed=3)
    out = write_bead_folder(src, tmp_path / "beads")
    sim, read = src.load(), BeadFolder(out).load()
    assert read.names == [f"images/{n}.tif" for n in sim.names]
    np.testing.assert_array_equal(read.images, sim.images)
    assert read.scale == sim.scale  # 12-bit depth taken from dataset.json
    np.testing.assert_allclose(read.density, sim.density, rtol=1e-5)
    np.testing.assert_array_equal(read.count, sim.count)
    assert read.fov_area_mm2 == pytest.approx(sim.fov_area_mm2)
    assert (out / "centres.csv").read_text().count("\n") == 1 + int(sim.count.sum())


def test_writer_never_overwrites_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("earlier run")
    with pytest.raises(FileExistsError, match="not empty"):
        write_bead_folder(SyntheticBeads(n_per_level=1, physics=SMALL), tmp_path / "x")


def test_dilution_parsed_from_names_when_there_is_no_manifest(tmp_path):
    assert parse_dilution("50x_001.tif") == 50.0 and parse_dilution("img_1.tif") is None
    _write_images(tmp_path, ["50x_001.tif", "51200x_002.tif"])
    beads = BeadFolder(tmp_path).load()
    assert sorted(beads.density.round(3).tolist()) == [15.0, 7964.0]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("name,density\nimages/a.tif,10\n", "missing column 'file'"),
        ("file,other\nimages/a.tif,10\n", "needs a 'density' or a 'dilution' column"),
        ("file,density\nimages/a.tif,10\nimages/a.tif,20\n", r"line 3, column 'file': duplicate file 'images/a.tif' \(first at line 2\)"),
        ("file,density\nimages/a.tif,nan\n", r"line 2, column 'density': nan is not a finite number"),
        ("file,density\nimages/a.tif,-5\n", r"line 2, column 'density': -5 is not a finite number >= 0"),
        ("file,dilution\nimages/a.tif,75\n", r"line 2, column 'dilution': dilution 75x is not in the dilution table"),
        ("file,density\nimages/missing.tif,10\n", r"line 2, column 'file': file not found"),
    ],
)
def test_bad_manifests_name_the_line_and_column(tmp_path, manifest, message):
    _write_images(tmp_path, ["a.tif", "b.tif"])
    _manifest(tmp_path, manifest)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        BeadFolder(tmp_path).load()


def test_missing_and_empty_roots_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} does not exist"):
        BeadFolder(tmp_path / "nope").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.csv and no TIFF/PNG images"):
        BeadFolder(tmp_path / "empty").load()


def test_mixed_image_sizes_are_an_error_unless_resize_is_configured(tmp_path):
    _write_images(tmp_path, ["a.tif"], shape=(16, 16))
    _write_images(tmp_path, ["b.tif"], shape=(20, 20))
    _manifest(tmp_path, "file,density\nimages/a.tif,10\nimages/b.tif,20\n")
    with pytest.raises(ValueError, match="different sizes: images/a.tif is 16x16, images/b.tif is 20x20"):
        BeadFolder(tmp_path).load()
    assert BeadFolder(tmp_path, resize=16).load().images.shape == (2, 16, 16)


def test_corrupt_image_is_named_or_skipped_when_configured(tmp_path):
    _write_images(tmp_path, ["a.tif", "b.tif", "c.tif"])
    (tmp_path / "images" / "c.tif").write_bytes(b"II*\x00garbage")
    _manifest(tmp_path, "file,density\nimages/a.tif,10\nimages/b.tif,20\nimages/c.tif,30\n")
    with pytest.raises(ValueError, match="cannot read image .*c.tif"):
        BeadFolder(tmp_path).load()
    beads = BeadFolder(tmp_path, skip_bad_files=True).load()
    assert len(beads) == 2 and beads.fingerprint["skipped_files"] == ["images/c.tif"]
