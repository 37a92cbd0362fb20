"""Segmentation end to end: the CLI and ``train.run`` train, test and record a run; evaluate and predict give back
the test step's numbers from the checkpoint alone; the same path works on a real Lucchi slice from ../shared.

Tiny sizes (a 2-level U-Net, 64 px patches, 2 epochs): these tests check the plumbing and the numbers, not the
learning, which tests/integration/test_seg_learning.py bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from calib_seg.train import run
from helpers.configs import compose_run_cfg
from helpers.paths import REPO

# experiment=mito_quick at toy size (conf/debug/tiny_mito.yaml): 2 epochs on four 128 px images, a depth-2 U-Net;
# whole test images go through the tiled path (64 px tiles); the guard's Jaccard-margin final rule is off
SEG_TINY = ["experiment=mito_quick", "debug=tiny_mito"]


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU pooled over all pixels (sklearn's jaccard_score on the flattened masks)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def _assert_segmentation_record(record: dict, epochs: int) -> None:
    assert record["status"] == "completed", record.get("reason")
    assert record["task"] == "mito" and record["optimized_metric"] == "val/jaccard"
    assert record["epochs"] == epochs and record["best_epoch"] in range(1, epochs + 1)
    m = record["metrics"]
    for key in ("val/jaccard", "test/jaccard", "test/dice", "test/precision", "test/recall",
                "test/jaccard_all_foreground", "test/best_threshold", "test/jaccard_t0.50"):
        assert key in m and np.isfinite(m[key]), key
    assert m["test/jaccard_t0.50"] == pytest.approx(m["test/jaccard"], abs=1e-6)  # headline at threshold 0.5
    assert 0 < m["test/jaccard_all_foreground"] < 0.5  # EM is mostly background
    assert record["best_val"] == pytest.approx(record["val_metrics_best"]["val/jaccard"])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny segmentation run through the real CLI: its folder."""
    out = tmp_path_factory.mktemp("seg") / "run"
    proc = subprocess.run([sys.executable, "-m", "calib_seg.train", *SEG_TINY, f"hydra.run.dir={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_cli_trains_tests_and_records_a_segmentation_run(cli_run):
    record = json.loads((cli_run / "run.json").read_text())
    _assert_segmentation_record(record, epochs=2)
    assert (cli_run / "checkpoints" / "last.ckpt").exists() and list((cli_run / "checkpoints").glob("best-*.ckpt"))
    assert [r["epoch"] for r in json.loads((cli_run / "history.json").read_text())] == [1, 2]


def test_evaluate_reproduces_the_segmentation_test_metrics_from_the_checkpoint(cli_run, tmp_path):
    ckpt = next((cli_run / "checkpoints").glob("best-*.ckpt"))
    out = subprocess.run([sys.executable, "-m", "calib_seg.evaluate", f"ckpt_path={ckpt}", "logger=none",
                          "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    trained = json.loads((cli_run / "run.json").read_text())["test_metrics"]
    evaluated = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert evaluated["status"] == "evaluated"
    for key in ("test/jaccard", "test/dice", "test/jaccard_all_foreground"):
        assert evaluated["metrics"][key] == pytest.approx(trained[key], rel=1e-5, abs=1e-7), key


def test_predict_writes_masks_whose_jaccard_is_the_test_steps_and_keeps_stacks_as_stacks(cli_run, tmp_path):
    """The run's test images (128 px, larger than the 64 px patch: tiled) as PNG files and as one TIFF stack."""
    from calib_seg.data.sources.mito_synth import MitoSynthSource

    run_cfg = OmegaConf.load(cli_run / ".hydra" / "config.yaml")
    test = MitoSynthSource(**{k: v for k, v in OmegaConf.to_container(run_cfg.data.source).items()
                              if k != "_target_"}).split("test")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(test.images):  # the generator's images are 8-bit quantised: PNG keeps them exactly
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(folder / f"t{i}.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([np.rint(i * 255).astype(np.uint8) for i in test.images]))
    ckpt = next((cli_run / "checkpoints").glob("best-*.ckpt"))

    def predict(source: Path, output: Path, mask_format: str) -> None:
        from calib_seg.predict import predict as run_predict

        run_predict(OmegaConf.create({"ckpt_path": str(ckpt), "input": str(source), "output": str(output),
                                      "bit_depth": None, "pixel_size_um": None, "mask_format": mask_format,
                                      "trainer": {"accelerator": "cpu"}}))

    predict(folder, tmp_path / "masks", "png")
    predict(tmp_path / "stack.tif", tmp_path / "stack_masks", "tif")
    masks = [np.asarray(Image.open(tmp_path / "masks" / f"t{i}_mask.png")) for i in range(len(test.images))]
    for m, truth in zip(masks, test.masks):
        assert m.shape == truth.shape and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    stack = tifffile.imread(tmp_path / "stack_masks" / "stack_mask.tif")
    assert stack.shape == (len(masks), *masks[0].shape) and np.array_equal(stack, np.stack(masks))
    expected = json.loads((cli_run / "run.json").read_text())["test_metrics"]["test/jaccard"]
    got = jaccard(np.stack(masks) > 0, np.stack(test.masks) > 0)
    assert got == pytest.approx(expected, abs=2e-3), (got, expected)  # pooled over both test images


def test_train_run_in_process_writes_a_complete_segmentation_record(tmp_path):
    cfg = compose_run_cfg([*SEG_TINY, "trainer.max_epochs=1"], tmp_path / "run")
    try:
        record = run(cfg)
    finally:
        GlobalHydra.instance().clear()
    _assert_segmentation_record(record, epochs=1)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["metrics"] == record["metrics"]


def test_plain_segmentation_command_without_a_preset_trains(tmp_path):
    plain = ["task=segmentation", "model=unet", "data=mito_synth",
             *[o for o in SEG_TINY if not o.startswith(("experiment=", "trainer.max_epochs"))], "trainer.max_epochs=1"]
    cfg = compose_run_cfg(plain, tmp_path / "run")
    try:
        record = run(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert record["status"] == "completed", record.get("reason")
    assert record["task"] == "segmentation" and record["optimized_metric"] == "val/jaccard"
    assert record["best_val"] == pytest.approx(record["val_metrics_best"]["val/jaccard"])
    assert (tmp_path / "run" / "figures" / "jaccard_vs_threshold.png").exists()  # the task's figures were drawn


def test_one_real_lucchi_slice_trains_and_the_whole_test_slice_is_scored_in_tiles(shared_dir, tmp_path):
    """Train on one real slice (../shared/data/lucchi_train), validate and test on the 768x1024 test slice."""
    real = shared_dir / "data" / "lucchi_train"
    train_img = sorted((real / "train" / "images").glob("*.png"))[0]
    test_img = sorted((real / "test" / "images").glob("*.png"))[0]
    root = tmp_path / "lucchi"
    for split, img in (("train", train_img), ("val", test_img), ("test", test_img)):
        for sub in ("images", "masks"):  # links, not copies: the data stay in ../shared
            (root / split / sub).mkdir(parents=True)
            (root / split / sub / img.name).symlink_to(img.parent.parent / sub / img.name)
    overrides = ["experiment=mito_quick", "data=mito_folder", f"data.source.root={root}", "data.patch_size=64",
                 "data.patches_per_epoch=32", "data.batch_size=8", "model.base_filters=8", "model.depth=2",
                 "task.tile_size=256", "task.tile_overlap=32", "trainer.max_epochs=1", "logger=none",
                 "trainer.enable_progress_bar=false", "torch_threads=1", "callbacks.figures=null",
                 "callbacks.guard.jaccard_margin=null"]  # one toy epoch is no result; the plumbing is what is tested
    cfg = compose_run_cfg(overrides, tmp_path / "run")
    try:
        record = run(cfg)
    finally:
        GlobalHydra.instance().clear()
    _assert_segmentation_record(record, epochs=1)
    truth = np.asarray(Image.open(real / "test" / "masks" / test_img.name)) > 0
    assert truth.shape == (768, 1024)
    # the trivial baseline is the test slice's foreground fraction, counted here from the mask file itself
    assert record["metrics"]["test/jaccard_all_foreground"] == pytest.approx(truth.mean(), rel=1e-5)
    assert record["data_fingerprint"]["sha256"]
