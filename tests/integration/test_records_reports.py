"""Run records, figures, TensorBoard, evaluate/predict and sweep reports (issue 6).

One tiny density run is trained once per module and shared; the report tests use one real 2-job sweep started
as a subprocess, exactly as a user would start it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf

from calib_seg.evaluate import evaluate, load_task
from calib_seg.predict import predict
from calib_seg.records import RECORD_FIELDS
from calib_seg.report import best_per_arch, build_report, collect
from calib_seg.train import print_summary, run
from helpers.configs import TINY_BEADS, compose_entry_cfg
from helpers.paths import REPO
from helpers.tensorboard import EVENT_FILES, load_events


class AbortAfterFirstEpoch(pl.Callback):
    """Stands in for the training guard: stops on purpose and says why (the attributes train.py reads)."""

    abort_reason: str | None = None
    aborted_epoch: int | None = None

    def on_train_epoch_end(self, trainer, pl_module):
        self.abort_reason, self.aborted_epoch = "aborted at epoch 1: scripted test abort", 1
        trainer.should_stop = True


class FailInFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("scripted failure")


def _assert_every_field(record: dict) -> None:
    missing = [k for k in RECORD_FIELDS if k not in record]
    assert not missing, missing
    prov = record["provenance"]
    for key in ("git_commit", "git_dirty", "versions", "host", "slurm_job_id", "pbs_job_id"):
        assert key in prov, key
    for pkg in ("python", "calib_seg", "torch", "pytorch-lightning", "torchmetrics", "hydra-core",
                "segmentation-models-pytorch"):
        assert pkg in prov["versions"], pkg
    assert record["params"] > 0 and record["device"] == "cpu" and record["peak_rss_mb"] > 0
    assert record["metric_definitions"] and record["data_fingerprint"]["sha256"]
    # the resolved config: no interpolation left in what actually ran
    assert "${" not in json.dumps(record["config"]["paths"])


def test_completed_run_record_has_every_field_history_and_figures(trained):
    cfg, record = trained
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "run.json").read_text())
    assert saved["status"] == "completed"
    _assert_every_field(saved)
    assert saved["val_metrics_final"]["epoch"] == 2
    assert saved["val_metrics_best"]["epoch"] == saved["best_epoch"]
    assert saved["val_metrics_best"]["val/r2"] == pytest.approx(saved["best_val"])
    assert saved["test_metrics"]["test/r2"] == saved["metrics"]["test/r2"]
    for key in ("test/r2", "test/mae", "test/rmse", "test/mape", "test/max_error", "test/r2_oracle", "val/r2"):
        assert key in saved["metrics"], key
    assert saved["task"] == "density" and saved["choices"]["filters"] == [8, 16]
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and all(r["time_s"] > 0 for r in history)
    assert saved["time_per_epoch_s"] == pytest.approx(np.mean([r["time_s"] for r in history]))
    for name in ("training_curves", "pred_vs_actual", "residuals", "calibration"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000, name


def test_tensorboard_event_files_hold_scalars_figures_hparams_and_outcome(trained):
    cfg, record = trained
    acc = load_events(cfg.paths.output_dir)
    tags = acc.Tags()
    for tag in ("train/loss", "val/loss", "val/r2", "test/r2", "lr-Adam", "hp/test/r2", "hp/best_val"):
        assert tag in tags["scalars"], tag
    assert len(acc.Scalars("val/r2")) == 2
    assert "figures/pred_vs_actual" in tags["images"] and "figures/training_curves" in tags["images"]
    assert acc.Images("figures/pred_vs_actual")[0].encoded_image_string[:4] == b"\x89PNG"
    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["batch_size"].number_value == 4 and start.hparams["status"].string_value == "completed"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert "hp/test/r2" in {m.name.tag for m in experiment.metric_infos}
    assert "run/outcome/text_summary" in tags["tensors"]


def test_tensorboard_run_is_named_by_the_run_with_epoch_steps_references_and_layout(trained):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.custom_scalar import layout_pb2

    from calib_seg.callbacks.tensorboard import LAYOUT_CATEGORY

    cfg, record = trained
    out = Path(cfg.paths.output_dir)
    runs = EventMultiplexer().AddRunsFromDirectory(str(out)).Runs()
    assert list(runs) == [f"{cfg.run_name}_{out.name}"]  # what TensorBoard lists for `--logdir <run folder>`
    acc = load_events(out)
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in ("train/loss", "val/loss", "val/r2", "val/mae", "lr-Adam"):
        assert steps[tag] == [1, 2], (tag, steps[tag])  # 1-based epochs, not optimizer steps
    assert "epoch" not in steps
    assert [e.step for e in acc.Images("figures/pred_vs_actual")] == [record["epochs"]]
    for tag in ("test/r2", "test/r2_oracle", "test/mae_oracle", "calibration/levels_passed", "calibration/pass"):
        assert steps[tag] == [record["epochs"]], (tag, steps[tag])
    value = {tag: acc.Scalars(tag)[0].value for tag in steps}
    assert value["test/r2_oracle"] == pytest.approx(record["test_metrics"]["test/r2_oracle"], rel=1e-6)
    assert value["test/mae_oracle"] == pytest.approx(record["test_metrics"]["test/mae_oracle"], rel=1e-6)
    levels = record["calibration"]["levels"]
    assert value["calibration/levels_passed"] == sum(lv["passed"] for lv in levels)
    assert value["calibration/levels"] == len(levels)
    assert value["calibration/pass"] == float(record["calibration"]["verdict"] == "pass")
    [config] = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    first = layout.category[0]
    assert first.title == LAYOUT_CATEGORY
    charts = [(c.title, list(c.multiline.tag)) for c in first.chart]
    assert charts[0] == ("loss (train/loss, val/loss)", ["^train/loss$", "^val/loss$"])
    assert charts[1] == ("val/r2", ["^val/r2$"])  # the optimised metric right after the losses
    assert {t for t, _ in charts[2:-1]} == {k for k in steps if k.startswith("val/") and k not in ("val/loss", "val/r2")}


def test_aborted_run_record_has_every_field_and_the_reason(run_cfg):
    cfg = run_cfg(TINY_BEADS + ["trainer.max_epochs=3",
                                "+callbacks.abort._target_=test_records_reports.AbortAfterFirstEpoch"])
    record = run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert saved["status"] == record["status"] == "aborted"
    assert saved["reason"] == "aborted at epoch 1: scripted test abort" and saved["aborted_epoch"] == 1
    assert saved["epochs"] == 1 and saved["test_metrics"] == {}
    _assert_every_field(saved)


def test_failed_run_record_has_every_field_and_the_error(run_cfg):
    cfg = run_cfg(TINY_BEADS + ["+callbacks.fail._target_=test_records_reports.FailInFirstEpoch"])
    with pytest.raises(RuntimeError, match="scripted failure"):
        run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert saved["status"] == "failed" and saved["reason"] == "RuntimeError: scripted failure"
    assert "on_train_epoch_end" in saved["traceback"] and "scripted failure" in saved["traceback"]
    _assert_every_field(saved)


def test_evaluate_reproduces_the_runs_test_metrics_from_the_checkpoint_alone(trained, tmp_path):
    cfg, record = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    ecfg = compose_entry_cfg("evaluate", [f"ckpt_path={ckpt}", "logger=none", "trainer.enable_progress_bar=false"],
                    tmp_path / "eval")
    rec = evaluate(ecfg, use_run_data=True)
    saved = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert saved["status"] == rec["status"] == "evaluated" and saved["checkpoint"] == str(ckpt.resolve())
    assert saved["metrics"]["test/r2"] == pytest.approx(record["test_metrics"]["test/r2"], rel=1e-5)
    assert (tmp_path / "eval" / "figures" / "pred_vs_actual.png").exists()


def test_evaluate_cli_prints_the_same_summary_table_as_train(trained, tmp_path, capsys):
    cfg, record = trained
    print_summary(record)
    headline = [ln for ln in capsys.readouterr().out.splitlines()  # the table rows other than epochs and time
                if ln.startswith("│") and not ln.startswith(("│ epochs", "│ wall time"))]
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    out = subprocess.run([sys.executable, "-m", "calib_seg.evaluate", f"ckpt_path={ckpt}", "logger=none",
                          f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(headline) == 7 and all(ln in out.stdout.splitlines() for ln in headline)
    assert "{'test/" not in out.stdout and f"run folder: {tmp_path / 'eval'}" in out.stdout.splitlines()


def test_predict_on_a_folder_gives_the_test_step_numbers(trained, tmp_path):
    """Same images, same checkpoint: the CSV equals the test step's predictions, with no normalisation flags."""
    import tifffile

    cfg, _ = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    dm = instantiate(cfg.data)
    beads = dm.prepare()
    folder = tmp_path / "images"
    folder.mkdir()
    for j in dm.split.test:  # raw 12-bit uint16, as a camera writes them; bit depth comes from the run config
        tifffile.imwrite(folder / f"{j:04d}.tif", beads.images[j])
    task = load_task(ckpt)
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        task, datamodule=dm, verbose=False)
    expected = task.last_test["pred"]

    pcfg = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(folder), "output": str(tmp_path / "out"),
                             "bit_depth": None, "pixel_size_um": None, "batch_size": 5,
                             "trainer": {"accelerator": "cpu"}})
    with (predict(pcfg)).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [f"{j:04d}.tif" for j in dm.split.test]  # relative to the input folder
    got = np.array([float(r["predicted_beads_per_mm2"]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    area = 64 * 64 * (8.0e-3) ** 2  # TINY_BEADS: 64 px at 8 um/px
    assert [r["implied_count_in_fov"] for r in rows] == [str(round(c)) for c in got * area]  # a count: integer
    # a second prediction into the same place never replaces the first silently
    with pytest.raises(FileExistsError, match="overwrite=true"):
        predict(pcfg)


def test_predict_resamples_inputs_to_the_training_pixel_size_and_says_so(trained, tmp_path, caplog):
    """The test images at twice the resolution (each pixel 2x2, 4 um/px) give the same densities and FOV areas;
    an image of another size than the training images is predicted with a warning."""
    import tifffile

    cfg, _ = trained
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    dm = instantiate(cfg.data)
    beads = dm.prepare()
    for name, scale in (("at8", 1), ("at4", 2)):
        (tmp_path / name).mkdir()
        for j in dm.split.test[:4]:
            tifffile.imwrite(tmp_path / name / f"{j:04d}.tif", np.kron(beads.images[j], np.ones((scale, scale),
                                                                                           beads.images[j].dtype)))

    def rows(name: str, pixel: float) -> list[dict]:
        pcfg = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(tmp_path / name), "bit_depth": None,
                                 "output": str(tmp_path / f"{name}_{pixel:g}.csv"), "pixel_size_um": pixel,
                                 "trainer": {"accelerator": "cpu"}})
        with predict(pcfg).open() as f:
            return list(csv.DictReader(f))

    with caplog.at_level("WARNING", logger="calib_seg.predict"):
        at8, at4 = rows("at8", 8.0), rows("at4", 4.0)
    assert "resampled by 0.5 to the model's 8 um/px" in caplog.text and "trained on 64x64" not in caplog.text
    for key in ("predicted_beads_per_mm2", "fov_area_mm2"):
        np.testing.assert_allclose([float(r[key]) for r in at4], [float(r[key]) for r in at8], rtol=1e-4)
    np.testing.assert_allclose([float(r["implied_count_in_fov"]) for r in at4],
                               [float(r["implied_count_in_fov"]) for r in at8], atol=1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="calib_seg.predict"):
        rows("at4", 8.0)  # claimed at the training pixel size: 128 px images the model never saw
    assert "trained on 64x64 px images; these are 128x128 px" in caplog.text


# ------------------------------------------------------------------------------------------------ reports
def _check_density_report(sw: Path, names: dict[str, str] | None = None) -> str:
    """``names``: job folder -> the name the report must give it (default: the folder name)."""
    text = build_report(sw)
    records = {p.parent.name: json.loads(p.read_text()) for p in sw.glob("*/run.json")}
    names = names or {job: job for job in records}
    assert sorted(names) == sorted(records)
    with (sw / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["job"] for r in rows) == sorted(names.values())
    assert text.count("| completed |") == len(records)
    best = max(records, key=lambda k: records[k]["best_val"])
    assert f"## Best job\n\n`{names[best]}`" in text
    assert "Warning: provenance differs" not in text and "## Incomplete" not in text
    assert (sw / "report_figures" / "training_curves.png").exists()
    assert (sw / "report_figures" / "capacity.png").exists()
    assert (sw / "report_figures" / "per_dilution_mae.png").exists()
    return text


@pytest.fixture
def two_job_sweep(trained, tmp_path):
    """A sweep folder holding the trained run twice, the second with another lr and a better score."""
    cfg, _ = trained
    sw = tmp_path / "sw"
    for i, lr in enumerate((1e-3, 1e-2)):
        job = shutil.copytree(cfg.paths.output_dir, sw / f"{i}_task.optimizer.lr={lr}",
                              ignore=shutil.ignore_patterns("checkpoints", EVENT_FILES))
        rec = json.loads((job / "run.json").read_text())
        rec["choices"]["lr"] = lr
        rec["best_val"] = rec["best_val"] + i * 0.1
        (job / "run.json").write_text(json.dumps(rec))
    return sw


def test_report_has_one_row_per_job_and_names_the_best_one(two_job_sweep):
    text = _check_density_report(two_job_sweep)
    assert "`1_task.optimizer.lr=0.01`" in text.split("## Best job")[1].split("##")[0]


@pytest.mark.slow
def test_report_on_a_real_tiny_sweep(tmp_path):
    """A real 2-job sweep launched as a user would (subprocess, Hydra multirun), then the report."""
    root = tmp_path / "sw"
    tiny = [*TINY_BEADS, "trainer.max_epochs=2"]
    out = subprocess.run([sys.executable, "-m", "calib_seg.train", "-m", "task.optimizer.lr=1e-3,1e-2", *tiny,
                          f"hydra.sweep.dir={root}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    # job folders (and so the report's job names) are what the sweep varied, never the fixed overrides
    text = _check_density_report(root, {"0_task.optimizer.lr=0.001": "0_task.optimizer.lr=0.001",
                                        "1_task.optimizer.lr=0.01": "1_task.optimizer.lr=0.01"})
    assert "2 job(s) launched" in text and "## All jobs (2)" in text


def test_report_warns_when_jobs_come_from_different_code(two_job_sweep):
    path = sorted(two_job_sweep.glob("*/run.json"))[1]
    rec = json.loads(path.read_text())
    rec["provenance"]["git_commit"] = "0123456789abcdef0123456789abcdef01234567"
    path.write_text(json.dumps(rec))
    text = build_report(two_job_sweep, figures=False)
    assert "Warning: provenance differs" in text
    assert f"`0123456789ab`: {path.parent.name}" in text


def test_report_on_a_partial_sweep_reports_what_is_there_and_names_what_is_missing(two_job_sweep):
    first, second = sorted(two_job_sweep.glob("*/run.json"), key=lambda p: p.parent.name)
    first.unlink()
    (first.parent / ".hydra").mkdir()  # a started job: Hydra made its folder, no record yet
    text = build_report(two_job_sweep, figures=False)
    assert f"`{first.parent.name}`: no run.json" in text
    assert f"| {second.parent.name} |" in text
    assert [r["status"] for r in collect(two_job_sweep)] == ["missing", "completed"]


def _fake_seg_record(job: Path, arch: str, lr: float, batch: int, best: float, status: str = "completed") -> None:
    job.mkdir(parents=True)
    rec = {"status": status, "reason": "aborted at epoch 5: trivial Jaccard" if status == "aborted" else None,
           "task": "mito", "optimized_metric": "val/jaccard", "best_val": best, "best_epoch": 3, "epochs": 5,
           "choices": {"model": arch, "lr": lr, "batch_size": batch}, "test_metrics": {"test/jaccard": best - 0.01},
           "wall_time_s": 10.0, "provenance": {"git_commit": "abc", "git_dirty": False,
                                               "versions": {"calib_seg": "0.1.0"}}}
    (job / "run.json").write_text(json.dumps(rec))


def test_report_setup_section_says_code_data_seed_device_launcher_and_what_varied(two_job_sweep):
    OmegaConf.save({"hydra": {"overrides": {"task": ["task.optimizer.lr=0.001,0.01", "torch_threads=1"]},
                              "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                              "sweeper": {"params": None}}}, two_job_sweep / "multirun.yaml")
    text = build_report(two_job_sweep, figures=False)
    setup = text.split("## Setup")[1].split("\n## ")[0]
    rec = json.loads(next(two_job_sweep.glob("*/run.json")).read_text())
    fp = rec["data_fingerprint"]
    assert f"commit `{rec['provenance']['git_commit'][:12]}`" in setup
    assert f"fingerprint `{fp['sha256']}`" in setup
    assert "split train/val/test `{train}/{val}/{test}`".format(**fp["split_sizes"]) in setup
    assert "device: `cpu`; launcher: BasicLauncher" in setup and "UTC" in setup
    assert "- varied: `task.optimizer.lr=0.001,0.01`" in setup and "- fixed overrides: `torch_threads=1`" in setup


def test_report_flags_job_numbers_with_two_folders_as_duplicates(tmp_path):
    for name in ("0_task.optimizer.lr=0.1", "1_task.optimizer.lr=0.01", "0_task.optimizer.lr=0.1,torch_threads=2"):
        _fake_seg_record(tmp_path / name, "unet", 0.1, 8, 0.5)
    text = build_report(tmp_path, figures=False)
    assert "**Warning: duplicate jobs.**" in text
    assert "> - job 0: `0_task.optimizer.lr=0.1`, `0_task.optimizer.lr=0.1,torch_threads=2`" in text
    assert "job 1:" not in text


def test_hpo_report_picks_the_best_configuration_per_architecture_and_lists_aborts(tmp_path):
    grid = [("unet", 1e-3, 8, 0.70), ("unet", 1e-4, 16, 0.75), ("attention_unet", 1e-3, 8, 0.80),
            ("attention_unet", 5e-3, 32, 0.10)]
    for i, (arch, lr, batch, best) in enumerate(grid):
        _fake_seg_record(tmp_path / f"{i}_job", arch, lr, batch, best, "aborted" if best < 0.2 else "completed")
    text = build_report(tmp_path)
    best = {r["arch"]: (r["lr"], r["batch"]) for r in best_per_arch(collect(tmp_path))}
    assert best == {"unet": (1e-4, 16), "attention_unet": (1e-3, 8)}
    assert "## Best configuration per architecture" in text and "## All jobs (4)" in text
    assert "`3_job` **aborted**: aborted at epoch 5: trivial Jaccard" in text
    assert (tmp_path / "report_figures" / "lr_vs_jaccard.png").exists()


def test_report_cli_refuses_a_missing_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "calib_seg.report", str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_report_names_jobs_by_the_overrides_that_differ():
    """Fixed overrides repeat in every folder name; the report shows only what the sweep varied."""
    from calib_seg.report import _short_job_names

    rows = [{"job": "0_experiment=C01,data.batch_size=32,model.filters=[16,32,64]"},
            {"job": "1_experiment=C02,data.batch_size=32,model.filters=[32,64,128]"}]
    assert [r["job"] for r in _short_job_names(rows)] == [
        "0_experiment=C01,model.filters=[16,32,64]", "1_experiment=C02,model.filters=[32,64,128]"]
