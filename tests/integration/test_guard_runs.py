"""Training guard end to end: aborts recorded by real runs, in-process and through the CLI (rules: unit/test_guard.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from calib_seg.train import run
from helpers.configs import TINY_BEADS
from helpers.paths import REPO

# ---------------------------------------------------------------- end to end
# batch 4 keeps ~12 optimizer steps per epoch on 66 images, as the preset has, so min_steps is met by epoch 5
# (the preset already renders the tiny 64 px images at 8 um/px)
TINY_REPRO = ["experiment=repro_relu_collapse", "data.source.n_per_level=6", "data.batch_size=4",
              "trainer.max_epochs=6", "trainer.enable_progress_bar=false", "logger=none",
              "callbacks.early_stopping=null", "~callbacks.model_checkpoint"]


def test_tiny_relu_collapse_reproduction_is_stopped_by_the_preflight_before_epoch_1(run_cfg):
    record = run(run_cfg(TINY_REPRO))
    saved = json.loads((Path(record["run_dir"]) / "run.json").read_text())
    assert saved["status"] == "aborted"
    assert saved["aborted_epoch"] == 0 and saved["epochs"] == 0
    assert saved["reason"].startswith("aborted at epoch 0: pre-flight fit probe: loss on one training batch went ")
    assert saved["preflight"]["probe_ratio"] > 0.9 and saved["preflight"]["failed"] in saved["reason"]
    assert "test/r2" not in saved["metrics"]  # an aborted run is not tested


# the pre-flight alone: the run is built and probed, then neither trained, validated nor tested
PREFLIGHT_ONLY = ["+trainer.limit_train_batches=0", "+trainer.limit_val_batches=0", "test=false",
                  "trainer.enable_progress_bar=false", "logger=none", "torch_threads=1"]


@pytest.mark.parametrize("preset", ["repro_relu_collapse", "repro_no_target_norm", "repro_relu_collapse_literal",
                                    "repro_no_target_norm_literal"])
def test_every_reproduction_at_its_own_size_fails_the_fit_probe(run_cfg, preset):
    record = run(run_cfg([f"experiment={preset}", *PREFLIGHT_ONLY]))
    assert record["status"] == "aborted" and record["aborted_epoch"] == 0
    assert "pre-flight fit probe" in record["reason"]
    # the loss does not move (dead head) or barely (raw targets): far above the 0.995 limit's 0.5 % decrease
    assert record["preflight"]["probe_ratio"] > 0.999
    assert record["preflight"]["target_scale"] > 100  # and the target-reach check (limit 100) catches them too


@pytest.mark.parametrize("overrides", [
    [*TINY_BEADS, "task.optimizer.lr=1e-4"],  # the density grid's lowest learning rate, on the smallest CNN
    ["experiment=mito_quick", "debug=tiny_mito", "task.optimizer.lr=1e-4", "task.loss=focal"],  # hpo_mito's lowest
], ids=["density", "segmentation"])
def test_healthy_run_at_the_grids_lowest_learning_rate_passes_the_preflight(run_cfg, overrides):
    record = run(run_cfg([*overrides, *PREFLIGHT_ONLY]))
    pf = record["preflight"]
    assert record["status"] == "completed" and pf["failed"] is None
    # a slow probe: the old limits (density 0.5, segmentation 0.9) aborted such runs; the loss still clearly moves
    assert 0.9 < pf["probe_ratio"] < 0.99 if overrides[0] == TINY_BEADS[0] else 0.5 < pf["probe_ratio"] < 0.99


def test_tiny_relu_collapse_without_preflight_is_aborted_by_the_epoch_rules_within_5_epochs(run_cfg):
    record = run(run_cfg([*TINY_REPRO, "callbacks.guard.preflight=false"]))
    assert record["status"] == "aborted" and record["preflight"] is None
    assert 1 <= record["aborted_epoch"] <= 5 and record["epochs"] == record["aborted_epoch"]
    assert record["reason"].startswith(f"aborted at epoch {record['aborted_epoch']}: ")


def test_run_that_ends_with_negative_test_r2_is_recorded_aborted_not_completed(run_cfg):
    # the guard off entirely (as in "watch it fail"): the seed's failure trains to its end, and the record still
    # must not call R² < 0 a success
    record = run(run_cfg([*TINY_REPRO, "trainer.max_epochs=2", "callbacks.guard=null"]))
    assert record["metrics"]["test/r2"] < 0
    assert record["status"] == "aborted" and record["aborted_epoch"] == record["epochs"] == 2
    assert record["reason"].startswith("aborted at epoch 2: final check: test/r2 = ")


def _cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib_seg.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_multirun_goes_on_after_an_aborted_job(tmp_path):
    # job 0: the collapse reproduction, aborted by the pre-flight; job 1: the same run without pre-flight and with
    # only the non-finite rule left on, so it must train to max_epochs (the sweep did not stop at job 0's abort)
    out = _cli("-m", *TINY_REPRO, "callbacks.guard.preflight=true,false", "callbacks.guard.flat_patience=null",
               "callbacks.guard.r2_min=null", "callbacks.guard.collapse_fraction=null", "test=false",
               f"hydra.sweep.dir={tmp_path}", timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/run.json")}
    assert len(records) == 2, records.keys()
    first, second = (records[k] for k in sorted(records))
    assert first["status"] == "aborted" and first["aborted_epoch"] == 0 and "pre-flight" in first["reason"]
    assert second["status"] == "completed" and second["epochs"] == 6


def test_single_aborted_run_exits_non_zero_with_the_reason_last(tmp_path):
    out = _cli(*TINY_REPRO, f"hydra.run.dir={tmp_path}", timeout=900)
    reason = json.loads((tmp_path / "run.json").read_text())["reason"]
    assert out.returncode == 3, out.stderr[-2000:]  # docs/reliability.md: 3 = aborted by the training guard
    assert out.stderr.strip().splitlines()[-1] == f"run aborted: {reason}"


@pytest.mark.slow
@pytest.mark.parametrize("healthy", [False, True], ids=["reproduction", "healthy"])
def test_ddp_ranks_take_rank_0s_preflight_verdict_together(tmp_path, healthy):
    # both ranks probe the same batch; a verdict taken by one rank only would leave the other waiting forever
    args = [*TINY_BEADS, "trainer.max_epochs=1"] if healthy else TINY_REPRO
    out = _cli(*args, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "test=false",
               f"hydra.run.dir={tmp_path}", timeout=900)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["device"] == "2xcpu"
    if healthy:
        assert out.returncode == 0, out.stderr[-2000:]
        assert record["status"] == "completed" and record["preflight"]["failed"] is None and record["epochs"] == 1
    else:
        assert out.returncode == 3, out.stderr[-2000:]
        assert record["status"] == "aborted" and record["aborted_epoch"] == 0 and "pre-flight" in record["reason"]


@pytest.mark.slow
def test_ddp_ranks_stop_together_on_an_epoch_rule(tmp_path):
    # no pre-flight: the epoch rules judge each rank's own numbers, rank 0's verdict is broadcast; a rank that
    # went on alone would wait forever in its next collective (the timeout would fail the test)
    # each rank trains on half the images: half the optimizer steps, so min_steps is off (judge by epochs)
    out = _cli(*TINY_REPRO, "callbacks.guard.preflight=false", "callbacks.guard.min_steps=0", "trainer=ddp", "trainer.devices=2",
               "trainer.accelerator=cpu", "test=false", f"hydra.run.dir={tmp_path}", timeout=900)
    record = json.loads((tmp_path / "run.json").read_text())
    assert out.returncode == 3, out.stderr[-2000:]
    assert record["device"] == "2xcpu" and record["status"] == "aborted" and record["preflight"] is None
    assert 1 <= record["aborted_epoch"] <= 5 and record["epochs"] == record["aborted_epoch"]
