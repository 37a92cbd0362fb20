"""predict's density CSV as a person reads it: natural file order, paths relative to the input, counts as integers."""

from __future__ import annotations

import csv

from calib_seg.predict import input_files, write_density_csv


def test_folder_inputs_come_in_natural_order(tmp_path):
    for name in ("100x_1.tif", "50x_10.tif", "50x_2.tif", "200x_1.tif"):
        (tmp_path / name).write_bytes(b"")
    assert [f.name for f in input_files(tmp_path)] == ["50x_2.tif", "50x_10.tif", "100x_1.tif", "200x_1.tif"]


def test_csv_has_relative_files_integer_counts_and_six_significant_digits(tmp_path):
    folder = tmp_path / "in"
    row = {"file": str(folder / "sub" / "50x_1.tif"), "frame": 0, "height": 64, "width": 64,
           "predicted_beads_per_mm2": 1234.56789123, "fov_area_mm2": 0.262144, "implied_count_in_fov": 323.64}
    out = write_density_csv([row], tmp_path / "p.csv", folder)
    [got] = list(csv.DictReader(out.open()))
    assert got["file"] == "sub/50x_1.tif"
    assert got["predicted_beads_per_mm2"] == "1234.57" and got["fov_area_mm2"] == "0.262144"
    assert got["implied_count_in_fov"] == "324"
