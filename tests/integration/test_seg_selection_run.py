"""A tiny task.threshold/tta/postprocess=auto run: the choice is made on validation before any test batch is
read, recorded in run.json, and is what the test step and a checkpoint loaded for evaluate/predict use."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from calib_seg.tasks.seg_selection import POSTPROCESS_GRID, THRESHOLD_GRID
from helpers.configs import compose_run_cfg


def test_a_tiny_auto_run_chooses_on_validation_records_it_and_tests_and_evaluates_with_it(tmp_path, monkeypatch):
    from calib_seg.checkpoints import load_task
    from calib_seg.data.segmentation import SegmentationDataModule
    from calib_seg.tasks.segmentation import SegmentationTask
    from calib_seg.train import run

    events: list[str] = []
    test_loader, choose = SegmentationDataModule.test_dataloader, SegmentationTask.choose_on_validation
    monkeypatch.setattr(SegmentationDataModule, "test_dataloader",
                        lambda self: events.append("test data") or test_loader(self))
    monkeypatch.setattr(SegmentationTask, "choose_on_validation",
                        lambda self, batches: events.append("choice") or choose(self, batches))
    cfg = compose_run_cfg(["experiment=mito_quick", "debug=tiny_mito", "task.threshold=auto", "task.tta=auto",
                           "task.postprocess=auto"],
                          tmp_path / "run")
    record = run(cfg)
    assert record["status"] == "completed", record.get("reason")
    assert events[0] == "choice" and events.count("choice") == 1 and "test data" in events  # test data only after
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    choice = saved["inference_choice"]
    assert choice["source"] == "val" and choice["searched"] == ["threshold", "tta", "postprocess"]
    assert len(choice["candidates"]) == 2 * len(THRESHOLD_GRID) * len(POSTPROCESS_GRID)
    assert choice["val_jaccard"] == max(r["val_jaccard"] for r in choice["candidates"])
    assert saved["metrics"]["test/threshold"] == choice["threshold"]
    assert f"threshold={choice['threshold']}" in saved["metric_definitions"]["test/jaccard"]
    # the recorded choice is what the test step used: the checkpoint's test-image masks at that threshold
    task = load_task(next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt")))
    assert (task.threshold, task.tta) == (choice["threshold"], choice["tta"])
    assert {"median": task.postprocess.median, "min_size": task.postprocess.min_size} == choice["postprocess"]
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    tp = union = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            pred = task.predict_proba(batch["image"]) > task.threshold
            true = batch["mask"].bool()
            tp += int((pred & true).sum())
            union += int((pred | true).sum())
    assert saved["metrics"]["test/jaccard"] == pytest.approx(tp / max(union, 1), abs=1e-6)
