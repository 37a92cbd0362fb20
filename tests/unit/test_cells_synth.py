"""Synthetic cells in the dot format: one red dot per counted cell, exact counts, seeded, never overwriting."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib_seg.data.points import read_dots
from calib_seg.data.simulators.cells import CellParams, generate_cell_image, render_cells
from calib_seg.data.sources.point_folder import write_dots_folder


def test_dots_image_holds_one_red_pixel_per_counted_cell():
    for i in range(6):
        cell = generate_cell_image(i, seed=3, params=CellParams(size=96, count_range=(20, 300)))
        dots = cell.dots()
        assert cell.image.shape == dots.shape == (96, 96, 3) and dots.dtype == np.uint8
        assert cell.count == len(cell.centres_px)
        assert np.count_nonzero(dots[..., 0]) == cell.count  # no two centres share a pixel
        assert not dots[..., 1:].any() and set(np.unique(dots[..., 0]).tolist()) <= {0, 255}
        assert np.all((cell.centres_px >= 0) & (cell.centres_px < 96))


def test_counts_are_log_uniform_over_the_range_and_cells_are_bright():
    p = CellParams(size=64, count_range=(20, 300))
    cells = [render_cells(np.random.default_rng(k), p) for k in range(40)]
    counts = np.array([c.count for c in cells])
    assert counts.min() >= 20 and counts.max() <= 300 and counts.min() < 50 and counts.max() > 150
    sparse = cells[int(np.argmin(counts))]  # at 300 cells in 64x64 px the whole field glows
    img = sparse.image.astype(float).mean(axis=2)
    yx = np.floor(sparse.centres_px).astype(int)
    assert img[yx[:, 0], yx[:, 1]].mean() > 2 * np.median(img)  # cells stand out of the background


def test_written_folder_counts_match_the_placed_cells_and_the_reader(tmp_path):
    out = tmp_path / "cells"
    summary = write_dots_folder(out, n=5, size=64, seed=1)
    stems = sorted(summary["counts"])
    assert [p.stem for p in sorted((out / "images").glob("*.png"))] == stems
    assert "synthetic" in (out / "README.txt").read_text().lower()
    table = dict(line.split(",") for line in (out / "counts.csv").read_text().splitlines()[1:])
    for i, stem in enumerate(stems):
        placed = generate_cell_image(i, seed=1, params=CellParams(size=64))
        img = np.asarray(Image.open(out / "images" / f"{stem}.png"))
        dots = np.asarray(Image.open(out / "dots" / f"{stem}.png"))
        assert img.shape == dots.shape == (64, 64, 3)
        assert summary["counts"][stem] == int(table[stem]) == placed.count == len(read_dots(out / "dots" / f"{stem}.png"))
        np.testing.assert_array_equal(img, placed.image)


def test_same_seed_same_images_other_seed_other_images_and_image_i_ignores_n(tmp_path):
    write_dots_folder(tmp_path / "a", n=3, size=48, seed=7)
    write_dots_folder(tmp_path / "b", n=2, size=48, seed=7)
    write_dots_folder(tmp_path / "c", n=2, size=48, seed=8)
    for sub in ("images", "dots"):
        for stem in ("cell_000", "cell_001"):
            a, b, c = (np.asarray(Image.open(tmp_path / s / sub / f"{stem}.png")) for s in "abc")
            np.testing.assert_array_equal(a, b)
            assert not np.array_equal(a, c)


def test_refuses_a_non_empty_folder_and_writes_nothing_there(tmp_path):
    out = tmp_path / "cells"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_dots_folder(out, n=2, size=32, params=CellParams(size=32, count_range=(2, 10)))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_impossible_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="too many cells"):
        CellParams(size=16, count_range=(20, 300))
    with pytest.raises(ValueError, match="count_range"):
        CellParams(count_range=(30, 10))
