"""`python -m calib_seg.synth dots` writes the flat dot-annotated layout and never overwrites a folder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from calib_seg.data.points import read_dots
from calib_seg.synth import main


def test_synth_dots_writes_images_dots_counts_and_a_synthetic_readme(tmp_path, capsys):
    out = tmp_path / "cells"
    assert main(["dots", "--out", str(out), "--n", "4", "--size", "64", "--seed", "3"]) == 0
    stems = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert stems == sorted(p.stem for p in (out / "dots").glob("*.png")) and len(stems) == 4
    table = dict(line.split(",") for line in (out / "counts.csv").read_text().splitlines()[1:])
    for stem in stems:
        img = np.asarray(Image.open(out / "images" / f"{stem}.png"))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert len(read_dots(out / "dots" / f"{stem}.png", img.shape[:2])) == int(table[stem]) >= 20
    assert "NOT real microscopy" in (out / "README.txt").read_text()
    assert "b8_counting_protocol.py --data" in capsys.readouterr().out


def test_synth_dots_refuses_a_non_empty_folder_and_says_so(tmp_path, capsys):
    out = tmp_path / "cells"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["dots", "--out", str(out), "--n", "2", "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep"]
