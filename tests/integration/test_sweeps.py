"""Sweeps: the grids in conf/hparams_search/ launch the studies of the seed reports, every sweep gets its own
folder, each job its own sub-folder with run.json, and DDP over 2 CPU processes measures what one process does.

Grids are checked by launching them for real (``python -m calib_seg.train -m ...``) with ``train=false
test=false``: each job composes, builds its data module and model and writes run.json, so the records show
exactly what ``-m`` launched, in a few seconds per job and without training.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.configs import TINY_BEADS
from helpers.paths import REPO

# fastest possible job: compose, build the datamodule and the model, write run.json; no fit, no test
NO_TRAINING = ["train=false", "test=false", "logger=none", "torch_threads=1", "data.source.n_per_level=12",
               "data.source.physics.image_size=32", "data.source.physics.pixel_size_um=16.0",
               "data.source.physics.psf_sigma_um=8.0"]
# the same for segmentation jobs: tiny synthetic EM (the models keep the grid's published sizes)
# (images as large as the grid's 256 px patches: a patch larger than the images is refused at setup)
NO_TRAINING_SEG = ["train=false", "test=false", "logger=none", "torch_threads=1", "data=mito_synth",
                   "data.source.n_train=2", "data.source.n_val=1", "data.source.n_test=1",
                   "data.source.height=256", "data.source.width=256"]


def _train(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "calib_seg.train", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _wait(proc: subprocess.Popen, timeout: int = 600) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _jobs_of(sweep: Path) -> list[dict]:
    """run.json of every job of a sweep, in launch order (job number, not folder-name order)."""
    paths = sorted(sweep.glob("*/run.json"), key=lambda p: int(p.parent.name.split("_", 1)[0]))
    return [json.loads(p.read_text()) for p in paths]


# --- grids, launched for real ----------------------------------------------------------------------------------
def test_arch_grid_launches_baseline_shallow_baseline_deep_and_resnet_deep(tmp_path):
    _wait(_train("-m", "hparams_search=arch", "data=beads_synth", *NO_TRAINING, f"hydra.sweep.dir={tmp_path}"))
    records = _jobs_of(tmp_path)
    assert [r["status"] for r in records] == ["completed"] * 3
    assert [r["config"]["run_name"] for r in records] == ["Baseline_Shallow", "Baseline_Deep", "ResNet_Deep"]
    assert [r["choices"]["model_target"].rsplit(".", 1)[1] for r in records] == [
        "DensityCNN", "DensityCNN", "DensityResNet"]
    assert records[0]["params"] < records[1]["params"]  # deep has more stages than shallow
    # the grid's folder names carry the swept group, never the constant hparams_search choice
    assert not any("hparams_search" in p.name for p in tmp_path.iterdir())


@pytest.mark.slow
def test_hpo_mito_grid_launches_3_models_x_4_lrs_x_3_batch_sizes_and_command_line_data_wins(tmp_path):
    """The 36 jobs of the mito report at their published settings; extra overrides reach every job."""
    _wait(_train("-m", "hparams_search=hpo_mito", *NO_TRAINING_SEG, "trainer.max_epochs=1",
                 f"hydra.sweep.dir={tmp_path}"), timeout=1500)
    records = _jobs_of(tmp_path)
    assert len(records) == 36 and {r["status"] for r in records} == {"completed"}
    seen = []
    for r in records:
        c = r["config"]
        assert r["optimized_metric"] == "val/jaccard" and c["task_name"] == "mito"
        assert c["callbacks"]["model_checkpoint"]["monitor"] == "val/jaccard"
        assert (c["model"]["base_filters"], c["model"]["depth"], c["data"]["patch_size"]) == (64, 4, 256)
        assert c["data"]["source"]["_target_"].endswith("MitoSynthSource") and c["trainer"]["max_epochs"] == 1
        seen.append((r["choices"]["model_target"].rsplit(".", 1)[1], c["task"]["optimizer"]["lr"],
                     c["data"]["batch_size"]))
    assert sorted(set(seen)) == sorted(itertools.product(["UNet", "AttentionUNet", "AttentionResUNet"],
                                                         [5e-3, 1e-3, 5e-4, 1e-4], [8, 16, 32]))
    # folder names: the grid parameters only, in grid order
    name = next(p.name for p in tmp_path.iterdir() if p.name.startswith("5_"))
    assert name == "5_model=unet_task.optimizer.lr=0.001_data.batch_size=32", name


# --- folders ---------------------------------------------------------------------------------------------------
def test_tiny_list_sweep_writes_one_folder_per_job_named_by_index_and_swept_values(tmp_path):
    # README: -m model.filters='[16,32,64]','[32,64,128]' (shell quotes removed); an untrained model is tested
    tiny = [*TINY_BEADS, "train=false"]
    out, _ = _wait(_train("-m", "model.filters=[8,16],[4,8]", *tiny, f"hydra.sweep.dir={tmp_path}"))
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    # named by the swept value only (resolvers.job_dirname): no fixed override (debug, train), no brackets or
    # commas; the job's own overrides are all in .hydra/overrides.yaml and run.json
    assert folders == ["0_model.filters=8-16", "1_model.filters=4-8"], folders
    assert ["- model.filters=[8,16]", "- model.filters=[4,8]"] == [
        next(line for line in (tmp_path / f / ".hydra" / "overrides.yaml").read_text().splitlines()
             if "model.filters" in line) for f in folders]
    assert all("- debug=tiny_beads" in (tmp_path / f / ".hydra" / "overrides.yaml").read_text() for f in folders)
    records = _jobs_of(tmp_path)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["choices"]["filters"] for r in records] == [[8, 16], [4, 8]]
    assert all("test/r2" in r["metrics"] for r in records)


def test_two_sweeps_started_together_land_in_different_folders_and_share_one_per_sweep(tmp_path):
    # no ${now:} in the folder name: only the ${uniq:} suffix can keep the two sweeps apart
    sweep_dir = f"hydra.sweep.dir={tmp_path}/sweep_${{uniq:}}"
    procs = [_train("-m", f"seed={a},{b}", *NO_TRAINING, sweep_dir) for a, b in ((1, 2), (3, 4))]
    for p in procs:
        _wait(p)
    sweeps = sorted(tmp_path.iterdir())
    assert len(sweeps) == 2, sweeps
    seeds = sorted(sorted(r["choices"]["seed"] for r in _jobs_of(s)) for s in sweeps)
    assert seeds == [[1, 2], [3, 4]]


def test_submitit_local_jobs_of_one_sweep_share_its_folder(tmp_path):
    """Each submitit job resolves its folder in its own process: the cached ${uniq:} must travel with it."""
    _wait(_train("-m", "seed=1,2", *NO_TRAINING, "hydra/launcher=submitit_local",
                 f"hydra.sweep.dir={tmp_path}/sweep_${{uniq:}}", "hydra.launcher.timeout_min=5"))
    sweeps = sorted(tmp_path.iterdir())
    assert len(sweeps) == 1, sweeps
    records = _jobs_of(sweeps[0])
    assert sorted(r["choices"]["seed"] for r in records) == [1, 2]
    assert all(r["status"] == "completed" for r in records)


def test_make_sweep_target_prints_where_the_sweep_landed_and_runs_the_report(tmp_path):
    args = " ".join(["data=beads_synth", *NO_TRAINING, f"hydra.sweep.dir={tmp_path}/s"])
    out = subprocess.run(["make", "--no-print-directory", "sweep-filters", f"ARGS={args}", "VENV_STAMP="],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"sweep filters landed in {tmp_path}/s" in out.stdout
    records = _jobs_of(tmp_path / "s")
    assert [r["choices"]["experiment"] for r in records] == ["C01", "C02", "C03", "C04"]
    # the four seed studies with their filters and batch sizes; a requeued job resumes from its own folder
    assert [(r["config"]["run_name"], r["choices"]["filters"], r["choices"]["batch_size"]) for r in records] == [
        ("C01_Minimal", [16, 32, 64], 256), ("C02_Standard", [32, 64, 128], 192),
        ("C03_Enhanced", [64, 128, 256], 128), ("C04_Deep", [128, 256, 512], 96)]
    assert {r["config"]["ckpt_path"] for r in records} == {"last"}
    names = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name[0].isdigit())
    assert names == [f"{i - 1}_experiment=C0{i}" for i in range(1, 5)], names  # the swept preset only
    # the target runs the report after the sweep
    assert "## All jobs (4)" in (tmp_path / "s" / "report.md").read_text()


# --- DDP -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_single_process_epoch_metrics(tmp_path):
    """Test of a fixed (seeded, untrained) model: torchmetrics states and the logged loss are synced over ranks.

    22 test images (2 per dilution level) split evenly over 2 ranks, so Lightning's DistributedSampler pads no
    duplicate; a per-rank R² (11 images) would differ from the global one.
    """
    tiny = [*TINY_BEADS, "train=false"]
    runs = {}
    for name, extra in (("ddp", ["trainer=ddp", "trainer.devices=2"]), ("single", ["trainer.devices=1"])):
        _wait(_train(*tiny, *extra, "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / name}"))
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())
    ddp, single = runs["ddp"], runs["single"]
    assert ddp["device"] == "2xcpu" and single["device"] == "cpu"
    assert ddp["data_fingerprint"]["split_sizes"]["test"] % 2 == 0
    for key in ("test/r2", "test/mae", "test/rmse", "test/mape", "test/max_error", "test/loss"):
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5, abs=1e-6), key
    # per-image predictions are gathered over ranks: every test image once, the numbers of one process
    from calib_seg.metrics.predictions import read_predictions_csv

    per_image = {n: read_predictions_csv(tmp_path / n / "test_predictions.csv") for n in runs}
    assert per_image["ddp"]["file"].tolist() == per_image["single"]["file"].tolist()
    assert per_image["ddp"]["predicted"] == pytest.approx(per_image["single"]["predicted"], rel=1e-5)
    assert ddp["calibration"]["failing_levels"] == single["calibration"]["failing_levels"]
    # only rank 0 writes the record; the worker ran in the same folder (its log is there)
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists()


@pytest.mark.slow
def test_ddp_job_on_real_slurm_runs_two_ranks_as_slurm_tasks_and_rank_0_records(slurm_cluster, tmp_path):  # noqa: F811
    """Under SLURM the launcher starts the ranks (tasks_per_node = devices); Lightning's SLURM environment wires
    them up (no re-launch) and the synced test metrics equal a single-process run of the same fixed model."""
    tiny = [*TINY_BEADS, "train=false"]
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "calib_seg.train", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *tiny,
         "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "hydra.launcher.tasks_per_node=2",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=2",
         "hydra.launcher.timeout_min=5"],
        cwd=tmp_path, env=slurm_cluster, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait(proc, timeout=240)
    [record] = _jobs_of(sweep_dir)
    assert record["status"] == "completed", record.get("reason")
    assert record["device"] == "2xcpu" and str(record["provenance"]["slurm_job_id"]).isdigit()
    _wait(_train(*tiny, "trainer.devices=1", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'single'}"))
    single = json.loads((tmp_path / "single" / "run.json").read_text())
    for key in ("test/r2", "test/mae", "test/loss"):
        assert record["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5, abs=1e-6), key
