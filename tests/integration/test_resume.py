"""Kill and resume, sweep resume, determinism: a killed job costs only the time since its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from calib_seg.records import read_record, write_record
from calib_seg.resume import failure_reason
from calib_seg.train import run
from helpers.configs import TINY_BEADS
from helpers.paths import REPO, pythonpath_with_tests
from helpers.pause import pause_overrides, wait_until_paused

DETERMINISTIC = [
    *TINY_BEADS, "trainer.deterministic=true", "trainer.accelerator=cpu", "seed=7",
]


def _test_metrics(record: dict) -> dict:
    return dict(record["test_metrics"])


def test_same_seed_same_config_on_cpu_gives_identical_metrics(run_cfg, tmp_path):
    records = []
    for name in ("a", "b"):
        cfg = run_cfg([*DETERMINISTIC, "trainer.max_epochs=2"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        records.append(run(cfg))
    a, b = records
    assert a["status"] == b["status"] == "completed"
    assert _test_metrics(a) == _test_metrics(b)  # bit-identical, not merely close
    assert a["best_val"] == b["best_val"]


def test_resume_true_skips_a_completed_run_without_training(run_cfg):
    cfg = run_cfg([*TINY_BEADS, "+resume=true"])
    out = Path(cfg.paths.output_dir)
    write_record(out, {"status": "completed", "best_val": 0.875, "optimized_metric": "val/r2", "task": "density",
                       "run_dir": str(out), "metrics": {}, "test_metrics": {}})
    record = run(cfg)
    assert record["best_val"] == 0.875
    assert not (out / "checkpoints").exists()  # nothing was built or trained


def test_resume_true_does_not_retrain_an_aborted_run(run_cfg):
    # an abort is a verdict: a re-run sweep must not train (or re-judge) the job again and again
    cfg = run_cfg([*TINY_BEADS, "+resume=true"])
    out = Path(cfg.paths.output_dir)
    write_record(out, {"status": "aborted", "reason": "aborted at epoch 0: pre-flight fit probe: ...",
                       "aborted_epoch": 0, "best_val": None, "optimized_metric": "val/r2", "task": "density",
                       "run_dir": str(out), "metrics": {}, "test_metrics": {}})
    record = run(cfg)
    assert record["status"] == "aborted" and record["aborted_epoch"] == 0
    assert not (out / "checkpoints").exists()


def test_a_finished_run_folder_is_never_trained_over_without_resume(run_cfg):
    from calib_seg.resume import RunFolderTaken

    cfg = run_cfg(TINY_BEADS)
    out = Path(cfg.paths.output_dir)
    write_record(out, {"status": "completed", "best_val": 0.5})
    before = (out / "run.json").read_bytes()
    with pytest.raises(RunFolderTaken, match=r"already holds a completed run \(run.json\); nothing was overwritten"):
        run(cfg)
    assert (out / "run.json").read_bytes() == before and not (out / "checkpoints").exists()


def test_resume_true_retrains_a_folder_whose_record_says_failed(run_cfg):
    cfg = run_cfg([*TINY_BEADS, "+resume=true"])
    out = Path(cfg.paths.output_dir)
    write_record(out, {"status": "failed", "reason": "interrupted: SIGTERM"})
    record = run(cfg)
    assert record["status"] == "completed" and (out / "checkpoints" / "last.ckpt").exists()


def test_interruptions_are_recorded_as_failed_with_how_to_resume():
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    assert failure_reason(SIGTERMException(), "/runs/x").startswith("interrupted: SIGTERM received")
    assert "ckpt_path=last hydra.run.dir=/runs/x" in failure_reason(SIGTERMException(), "/runs/x")
    assert failure_reason(KeyboardInterrupt()).startswith("interrupted: Ctrl-C")
    assert failure_reason(ValueError("boom")) == "ValueError: boom"


def test_resume_restores_the_fitted_density_target_transform(run_cfg, tmp_path):
    """The checkpoint's transform wins over a refit on (here deliberately different) training targets."""
    first = run_cfg([*DETERMINISTIC, "trainer.max_epochs=1"])
    run(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert bool(saved["data_fitted"]) and bool(saved["target_tf.fitted"])

    cfg = run_cfg([*DETERMINISTIC, "trainer.max_epochs=2", "data.holdout_dilutions=[50]"])
    task = instantiate(cfg.task, model=instantiate(cfg.model))
    dm = instantiate(cfg.data)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path / "r"))
    trainer.fit(task, datamodule=dm, ckpt_path=str(ckpt))
    refit_mean = float(torch.as_tensor(dm.train_targets()).double().mean())
    assert float(task.target_tf.mean) == pytest.approx(float(saved["target_tf.mean"]), rel=1e-12)
    assert float(task.target_tf.mean) != pytest.approx(refit_mean, rel=1e-9)
    assert float(task.target_tf.std) == pytest.approx(float(saved["target_tf.std"]), rel=1e-12)
    assert float(task.input_mean) == pytest.approx(float(saved["input_mean"]), rel=1e-6)


# ------------------------------------------------------------------------------------------- subprocesses
def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath_with_tests(env)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "2"
    return env


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib_seg.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=_env())


def test_killed_run_resumes_in_its_folder_and_ends_with_the_uninterrupted_metrics(tmp_path):
    """SIGTERM after epoch 1 of 2 through the real CLI: exit 143, record failed, resume ends bit-identical."""
    args = [*DETERMINISTIC, "trainer.max_epochs=2"]
    # the uninterrupted reference runs beside the killed run (two cores; each run is single-threaded)
    reference = subprocess.Popen([sys.executable, "-m", "calib_seg.train", *args, f"hydra.run.dir={tmp_path / 'ref'}"],
                                 cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-m", "calib_seg.train", *args, *pause_overrides(marker, epoch=1),
                             f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_paused(proc, marker)
        last = run_dir / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # 0-based: epoch 1 done
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        _, ref_err = reference.communicate(timeout=300)
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
    assert reference.returncode == 0, ref_err[-3000:]
    assert proc.returncode == 143, err[-3000:]
    killed = read_record(run_dir)
    assert killed["status"] == "failed" and killed["reason"].startswith("interrupted: SIGTERM"), killed["reason"]
    assert killed["epochs"] == 1

    resumed = _train(*args, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record, ref = read_record(run_dir), read_record(tmp_path / "ref")
    assert record["status"] == "completed" and record["epochs"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paused", "ref", "run"]  # no second run folder
    assert _test_metrics(record) and _test_metrics(record) == _test_metrics(ref)  # bit-identical, not close
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [1, 2]


def _job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_rerun_sweep_with_resume_trains_only_the_job_without_a_completed_record(tmp_path):
    """A real 2-job multirun (basic launcher, 1 epoch, 1 thread): folders named by the swept value only; the
    same command with +resume=true skips the finished job in its folder; a changed fixed override is refused."""
    args = ["-m", *TINY_BEADS, "trainer.max_epochs=1", "torch_threads=1", "seed=1,2", f"hydra.sweep.dir={tmp_path}"]
    first = _train(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = _job_folders(tmp_path)
    assert [p.name for p in jobs] == ["0_seed=1", "1_seed=2"]  # no debug=..., torch_threads=..., epochs
    keep, redo = jobs
    assert [read_record(j)["status"] for j in jobs] == ["completed", "completed"]
    kept_record = (keep / "run.json").read_bytes()
    kept_mtime = (keep / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    (redo / "run.json").unlink()
    for f in (redo / "checkpoints").iterdir():  # as if the job died before its first checkpoint
        f.unlink()

    again = _train(*args, "+resume=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _job_folders(tmp_path) == jobs  # no new folder
    assert (keep / "run.json").read_bytes() == kept_record
    assert (keep / "checkpoints" / "last.ckpt").stat().st_mtime_ns == kept_mtime
    assert read_record(redo)["status"] == "completed"
    assert (redo / "checkpoints" / "last.ckpt").exists()

    # one fixed override changed: the folder names would be the same, so resume must compare what the jobs ran with
    overrides = (keep / ".hydra" / "overrides.yaml").read_bytes()
    changed = _train(*[a.replace("torch_threads=1", "torch_threads=2") for a in args], "+resume=true")
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "2 finished job(s) of sweep" in changed.stderr
    assert "ran with other fixed overrides: torch_threads=1 then, 2 now" in changed.stderr
    assert "start a new sweep (leave hydra.sweep.dir unset)" in changed.stderr and "Traceback" not in changed.stderr
    assert changed.stderr.count("error: resume=true") == 1  # said once
    assert _job_folders(tmp_path) == jobs and (keep / "run.json").read_bytes() == kept_record
    assert (keep / ".hydra" / "overrides.yaml").read_bytes() == overrides  # refused before any job started
