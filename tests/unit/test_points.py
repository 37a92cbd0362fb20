"""Point annotations: the density-map target's mass, sigma units, and the dot-image / points-CSV readers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib_seg.data.points import MapTarget, density_map, dots_map, read_dots, read_points_csv


def test_map_integral_equals_count_of_centres_inside_including_border_beads():
    rng = np.random.default_rng(0)
    inside = rng.uniform(0, 32, size=(25, 2))
    border = np.array([[0.01, 5.0], [31.99, 31.99], [10.0, 0.0]])  # on the edge: centre inside, mass spills out
    outside = np.array([[-0.5, 4.0], [32.0, 3.0], [5.0, 40.0]])  # centre outside: not counted even if visible
    dmap = density_map(np.concatenate([inside, border, outside]), (32, 32), sigma_px=2.0, scale=100.0)
    assert dmap.dtype == np.float32 and dmap.shape == (32, 32) and dmap.min() >= 0
    assert dmap.sum(dtype=np.float64) == pytest.approx(100.0 * 28, rel=1e-5)
    assert dots_map(np.concatenate([inside, border, outside]), (32, 32)).sum() == 28


def test_map_is_a_gaussian_centred_on_the_point_with_the_configured_sigma():
    dmap = density_map(np.array([[20.5, 12.5]]), (41, 25), sigma_px=1.5).astype(np.float64)
    yy, xx = np.mgrid[:41, :25] + 0.5
    assert (dmap * yy).sum() == pytest.approx(20.5, abs=1e-6) and (dmap * xx).sum() == pytest.approx(12.5, abs=1e-6)
    assert np.sqrt((dmap * (yy - 20.5) ** 2).sum()) == pytest.approx(1.5, rel=0.02)  # pixel sampling error


def test_sigma_in_um_is_divided_by_the_pixel_size_and_needs_it():
    assert MapTarget(sigma_um=4.0).sigma_for(pixel_size_um=2.0) == 2.0
    assert MapTarget(sigma_px=1.5).sigma_for(pixel_size_um=2.0) == 1.5
    with pytest.raises(ValueError, match="pixel size"):
        MapTarget(sigma_um=4.0).sigma_for(None)
    a = density_map(np.array([[8.0, 8.0]]), (16, 16), MapTarget(sigma_um=4.0).sigma_for(2.0))
    b = density_map(np.array([[8.0, 8.0]]), (16, 16), 2.0)
    np.testing.assert_array_equal(a, b)


def test_rgb_dot_image_gives_one_centre_per_red_pixel_including_the_border(tmp_path):
    dots = np.zeros((20, 30, 3), np.uint8)
    for y, x in [(0, 0), (19, 29), (5, 7), (12, 3)]:
        dots[y, x, 0] = 255
    dots[8, 8, 2] = 40  # a dot in another channel counts too
    Image.fromarray(dots).save(tmp_path / "a.png")
    got = read_dots(tmp_path / "a.png", shape=(20, 30))
    assert sorted(map(tuple, got)) == sorted([(0.5, 0.5), (19.5, 29.5), (5.5, 7.5), (12.5, 3.5), (8.5, 8.5)])


def test_grey_16bit_and_empty_dot_images(tmp_path):
    d16 = np.zeros((10, 10), np.uint16)
    d16[3, 4] = 65535
    Image.fromarray(d16).save(tmp_path / "d16.png")
    assert read_dots(tmp_path / "d16.png").tolist() == [[3.5, 4.5]]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "empty.png")
    assert read_dots(tmp_path / "empty.png", (10, 10)).shape == (0, 2)


def test_dot_image_of_another_size_is_a_clear_error(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"d.png: dots image is 12x10 px .* image is 16x16"):
        read_dots(tmp_path / "d.png", shape=(16, 16))


def test_points_csv_reads_x_y_per_file_and_files_without_points(tmp_path):
    (tmp_path / "p.csv").write_text("file,x,y\na.png,3,4\na.png,10.5,0\nb.png,,\n")
    pts = read_points_csv(tmp_path / "p.csv")
    assert pts["a.png"].tolist() == [[4.0, 3.0], [0.0, 10.5]] and pts["b.png"].shape == (0, 2)
    (tmp_path / "bad.csv").write_text("file,x,y\na.png,3,four\n")
    with pytest.raises(ValueError, match="line 2"):
        read_points_csv(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("file,x\na.png,3\n")
    with pytest.raises(ValueError, match="missing column"):
        read_points_csv(tmp_path / "cols.csv")


def test_bead_folder_reads_back_the_centres_it_wrote(tmp_path):
    from calib_seg.data.sources.bead_folder import BeadFolder, write_bead_folder
    from calib_seg.data.sources.beads_synth import SyntheticBeads

    src = SyntheticBeads(n_per_level=2, dilutions=[50.0, 51200.0],
                         physics={"image_size": 32, "pixel_size_um": 8.0, "psf_sigma_um": 4.0})
    write_bead_folder(src, tmp_path / "f")
    beads, back = src.load(), BeadFolder(tmp_path / "f").load()
    assert [len(c) for c in back.centres_um] == list(back.count.astype(int)) == list(beads.count.astype(int))
    for a, b in zip(beads.centres_um, back.centres_um):
        np.testing.assert_allclose(a, b, atol=1e-3)  # written with 3 decimals


def test_bead_folder_images_centres_csv_does_not_list_are_labelled_by_density_only(tmp_path):
    from calib_seg.data.sources.bead_folder import BeadFolder, write_bead_folder
    from calib_seg.data.sources.beads_synth import SyntheticBeads

    src = SyntheticBeads(n_per_level=2, dilutions=[50.0, 51200.0],
                         physics={"image_size": 32, "pixel_size_um": 8.0, "psf_sigma_um": 4.0})
    folder = write_bead_folder(src, tmp_path / "f")
    names = src.load().names
    lines = (folder / "centres.csv").read_text().splitlines()
    # keep the first image's beads, declare the second annotated but empty, drop the others
    kept = [ln for ln in lines[1:] if ln.startswith(f"images/{names[0]}.tif,")]
    (folder / "centres.csv").write_text("\n".join([lines[0], *kept, f"images/{names[1]}.tif,,"]) + "\n")
    back = BeadFolder(folder).load()
    assert len(back.centres_um[0]) == len(kept) > 0
    assert back.centres_um[1].shape == (0, 2)  # listed with empty y/x: annotated, no bead
    assert back.centres_um[2] is None and back.centres_um[3] is None  # not listed: density only
    (folder / "centres.csv").unlink()
    assert BeadFolder(folder).load().centres_um is None
