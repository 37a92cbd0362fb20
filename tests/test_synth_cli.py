"""`python -m calib_seg.synth` writes sets the folder readers take back."""

from __future__ import annotations

import numpy as np

from calib_seg.data.sources.bead_folder import BeadFolder
from calib_seg.data.sources.image_folder import FolderSource
from calib_seg.synth import main


def test_synth_beads_writes_a_folder_the_bead_reader_takes(tmp_path, capsys):
    out = tmp_path / "beads"
    assert main(["beads", "--out", str(out), "--n-per-level", "1", "--seed", "5"]) == 0
    beads = BeadFolder(out).load()
    assert len(beads) == 11 and sorted(set(beads.dilution.tolist()))[0] == 50.0
    assert np.isfinite(beads.count).all() and beads.fov_area_mm2 > 0
    assert "data=beads_folder" in capsys.readouterr().out


def test_synth_refuses_to_overwrite_and_says_so(tmp_path, capsys):
    out = tmp_path / "beads"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["beads", "--out", str(out), "--n-per-level", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_synth_mito_writes_a_folder_the_em_reader_takes_back(tmp_path):
    out = tmp_path / "mito"
    assert main(["mito", "--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "128"]) == 0
    source = FolderSource(out)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        data = source.split(split)
        assert len(data.images) == len(data.masks) == n
        for img, mask in zip(data.images, data.masks):
            assert img.shape == mask.shape == (128, 128) and img.dtype == np.float32
            assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.02  # a picture, not a flat field
            assert set(np.unique(mask).tolist()) == {0, 1} and 0.01 < mask.mean() < 0.5
            # mitochondria are darker than the rest, as in EM
            assert img[mask > 0].mean() < img[mask == 0].mean() - 0.05
