"""Sweeps: the grids in conf/hparams_search/ expand to the studies of the seed reports, every sweep gets its own
folder, each job its own sub-folder with run.json, and DDP over 2 CPU processes measures what one process does.

Grids are expanded with Hydra's own BasicSweeper code path (params from the composed config, parsed by the
OverridesParser, crossed by ``BasicSweeper.split_arguments``) so nothing is trained to check their size.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from calib_seg.config import compose
from conftest import REPO, TINY_BEADS
from test_slurm_real import slurm_cluster  # noqa: F401, F811  (fixture: a local SLURM cluster, or skip)

# fastest possible job: compose, build the datamodule and the model, write run.json; no fit, no test
NO_TRAINING = ["train=false", "test=false", "logger=none", "data.source.n_per_level=12",
               "data.source.physics.image_size=32", "data.source.physics.pixel_size_um=16.0",
               "data.source.physics.psf_sigma_um=8.0"]


def expand(cli: list[str]) -> list[list[str]]:
    """The jobs Hydra's BasicSweeper would launch for ``python -m calib_seg.train -m <cli>`` (one batch)."""
    # as Hydra in MULTIRUN mode: the primary config (which holds hydra.sweeper.params) is composed without the
    # command line's sweep overrides; then exactly BasicSweeper.sweep(): the config's params, then the command line
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(list(cli)) if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    try:
        cfg = compose(fixed, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()] + list(cli)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params), max_batch_size=None)
    assert len(batches) == 1
    return batches[0]


def job_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        return compose(overrides)
    finally:
        GlobalHydra.instance().clear()


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


# --- grid sizes and members ------------------------------------------------------------------------------------
def test_filters_grid_is_the_four_seed_studies_with_their_filters_and_batch_sizes():
    jobs = expand(["hparams_search=filters"])
    assert len(jobs) == 4
    got = []
    for job in jobs:
        cfg = job_config(job)
        got.append((cfg.run_name, list(cfg.model.filters), cfg.data.batch_size))
        assert cfg.ckpt_path == "last"  # a requeued job resumes from its own folder
    assert got == [("C01_Minimal", [16, 32, 64], 256), ("C02_Standard", [32, 64, 128], 192),
                   ("C03_Enhanced", [64, 128, 256], 128), ("C04_Deep", [128, 256, 512], 96)]


def test_arch_grid_is_baseline_shallow_baseline_deep_and_resnet_deep():
    jobs = expand(["hparams_search=arch"])
    assert len(jobs) == 3
    cfgs = [job_config(job) for job in jobs]
    assert [c.run_name for c in cfgs] == ["Baseline_Shallow", "Baseline_Deep", "ResNet_Deep"]
    assert [c.model._target_.rsplit(".", 1)[1] for c in cfgs] == ["DensityCNN", "DensityCNN", "DensityResNet"]


def test_hpo_mito_grid_is_3_models_x_4_lrs_x_3_batch_sizes_maximising_val_jaccard():
    jobs = expand(["hparams_search=hpo_mito"])
    assert len(jobs) == 36
    seen = set()
    for job in jobs:
        cfg = job_config(job)
        assert cfg.optimized_metric == "val/jaccard" and cfg.task_name == "mito"
        assert cfg.callbacks.model_checkpoint.monitor == "val/jaccard"
        # published settings of the mito presets apply to every architecture of the grid
        assert (cfg.model.base_filters, cfg.model.depth, cfg.data.patch_size) == (64, 4, 256)
        seen.add((cfg.model._target_.rsplit(".", 1)[1], cfg.task.optimizer.lr, cfg.data.batch_size))
    expected = set(itertools.product(["UNet", "AttentionUNet", "AttentionResUNet"], [5e-3, 1e-3, 5e-4, 1e-4],
                                     [8, 16, 32]))
    assert seen == expected


def test_extra_overrides_reach_every_job_of_a_grid_and_command_line_data_wins():
    jobs = expand(["hparams_search=hpo_mito", "data=mito_synth", "trainer.max_epochs=1"])
    assert len(jobs) == 36
    cfg = job_config(jobs[-1])
    assert cfg.data.source._target_.endswith("MitoSynthSource") and cfg.trainer.max_epochs == 1
    assert cfg.data.batch_size == 32 and cfg.model._target_.endswith("AttentionResUNet")


def test_product_card_forms_a_sweep_over_lists_and_over_experiments():
    # what the shell passes for: -m model.filters='[16,32,64]','[32,64,128]'
    jobs = expand(["model.filters=[16,32,64],[32,64,128]"])
    assert [list(job_config(j).model.filters) for j in jobs] == [[16, 32, 64], [32, 64, 128]]
    jobs = expand(["experiment=C01,C02,C03,C04"])
    assert [job_config(j).run_name for j in jobs] == ["C01_Minimal", "C02_Standard", "C03_Enhanced", "C04_Deep"]


# --- folders ---------------------------------------------------------------------------------------------------
def test_job_folder_names_put_the_grid_parameters_first_then_the_other_overrides_sorted():
    from calib_seg.resolvers import _job_dirname

    job = expand(["hparams_search=hpo_mito", "trainer.max_epochs=1", "data=mito_synth", "ckpt_path=null"])[5]
    GlobalHydra.instance().clear()
    try:
        cfg = compose(job, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    # hparams_search and ckpt_path are excluded (same for every job / must not move a resumed job's folder)
    assert _job_dirname(_root_=cfg) == ("model=unet,task.optimizer.lr=0.001,data.batch_size=32,"
                                        "data=mito_synth,trainer.max_epochs=1")


def _jobs_of(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]


@pytest.mark.slow
def test_tiny_list_sweep_writes_one_folder_per_job_named_by_index_and_overrides(tmp_path):
    tiny = [o for o in TINY_BEADS if not o.startswith("model.filters")]
    out, _ = _wait(_train("-m", "model.filters=[8,16],[4,8]", *tiny, f"hydra.sweep.dir={tmp_path}"))
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [f[:2] for f in folders] == ["0_", "1_"]
    # the name is override_dirname (sorted overrides, cut at 200 characters: ten fixed tiny-size overrides push
    # the swept value out here); the job's own overrides are always in .hydra/overrides.yaml and run.json
    assert all(f[2:].startswith("data.batch_size=16,") for f in folders), folders
    assert ["- model.filters=[8,16]", "- model.filters=[4,8]"] == [
        next(line for line in (tmp_path / f / ".hydra" / "overrides.yaml").read_text().splitlines()
             if "model.filters" in line) for f in folders]
    assert ["- model.filters=[8,16]", "- model.filters=[4,8]"] == [
        next(line for line in (tmp_path / f / ".hydra" / "overrides.yaml").read_text().splitlines()
             if "model.filters" in line) for f in folders]
    records = _jobs_of(tmp_path)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["choices"]["filters"] for r in records] == [[8, 16], [4, 8]]
    assert all("test/r2" in r["metrics"] for r in records)


@pytest.mark.slow
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


@pytest.mark.slow
def test_submitit_local_jobs_of_one_sweep_share_its_folder(tmp_path):
    """Each submitit job resolves its folder in its own process: the cached ${uniq:} must travel with it."""
    _wait(_train("-m", "seed=1,2", *NO_TRAINING, "hydra/launcher=submitit_local",
                 f"hydra.sweep.dir={tmp_path}/sweep_${{uniq:}}", "hydra.launcher.timeout_min=5"))
    sweeps = sorted(tmp_path.iterdir())
    assert len(sweeps) == 1, sweeps
    records = _jobs_of(sweeps[0])
    assert sorted(r["choices"]["seed"] for r in records) == [1, 2]
    assert all(r["status"] == "completed" for r in records)


@pytest.mark.slow
def test_make_sweep_target_prints_where_the_sweep_landed_and_runs_the_report(tmp_path):
    args = " ".join(["data=beads_synth", *NO_TRAINING, f"hydra.sweep.dir={tmp_path}/s"])
    out = subprocess.run(["make", "--no-print-directory", "sweep-filters", f"ARGS={args}", "VENV_STAMP="],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"sweep filters landed in {tmp_path}/s" in out.stdout
    assert [r["choices"]["experiment"] for r in _jobs_of(tmp_path / "s")] == ["C01", "C02", "C03", "C04"]
    names = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [n.split("_", 1)[1][:14] for n in names] == [f"experiment=C0{i}" for i in range(1, 5)], names
    assert not any("hparams_search" in n for n in names)  # same for every job: left out of the name
    # the report runs when calib_seg.report exists (it is optional for the target, never silently skipped)
    assert (tmp_path / "s" / "report.md").exists() or "calib_seg.report not installed" in out.stdout


# --- DDP -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_single_process_epoch_metrics(tmp_path):
    """Test of a fixed (seeded, untrained) model: torchmetrics states and the logged loss are synced over ranks.

    22 test images (2 per dilution level) split evenly over 2 ranks, so Lightning's DistributedSampler pads no
    duplicate; a per-rank R² (11 images) would differ from the global one.
    """
    tiny = [o for o in TINY_BEADS if not o.startswith("trainer.max_epochs")] + ["train=false"]
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
    tiny = [o for o in TINY_BEADS if not o.startswith("trainer.max_epochs")] + ["train=false"]
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
