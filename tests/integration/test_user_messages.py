"""What a user sees at the console: one message and exit 2 for a bad config or input, exit 130 with the resume
command for Ctrl-C, epoch numbers counted from 1 everywhere, a train.log that holds the run, no noise.

Messages and exit codes go through the real entry points in a subprocess, as a user would meet them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from calib_seg.cli import override_problems
from calib_seg.config import compose
from calib_seg.data.sources.bead_folder import BeadFolder
from calib_seg.data.sources.image_folder import FolderSource
from calib_seg.data.splits import split_note, stratified_split
from calib_seg.synth import main as synth_main
from calib_seg.train import run
from calib_seg.validation import LOCAL_WITHOUT_HEADER, problems_in
from helpers.configs import TINY_BEADS
from helpers.paths import REPO, pythonpath_with_tests
from helpers.pause import pause_overrides, wait_until_paused


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = pythonpath_with_tests(env)
    env.update(extra)
    return env


def _cli(module: str, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"calib_seg.{module}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=_env(**env))


def _message(out: subprocess.CompletedProcess) -> str:
    """stderr from the line that starts with ``error:`` (Lightning may say ``Seed set to ...`` before it)."""
    lines = out.stderr.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(("error:", "config error:"))), 0)
    return "\n".join(lines[start:])


def _no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stderr + out.stdout
    assert "Error in call to target" not in out.stderr
    assert "HYDRA_FULL_ERROR" not in out.stderr


# ------------------------------------------------------------------------------------------ item 5: typos
def test_every_typo_in_overrides_is_named_at_once_with_did_you_mean_and_exit_2(tmp_path):
    out = _cli("train", "trainer.max_epoch=2", "model.filtres=[8,16]", "modle=unet", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("config error: invalid configuration (3 problems):")
    assert "trainer.max_epoch: unknown key (did you mean 'max_epochs'?); allowed keys under trainer: " in out.stderr
    assert "model.filtres: unknown key (did you mean 'filters'?); allowed keys under model: " in out.stderr
    assert "modle: unknown key (did you mean 'model'?); allowed keys at the top level: " in out.stderr
    assert "+trainer.max_epoch" not in out.stderr and "is not in struct" not in out.stderr
    _no_traceback(out)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # refused before a run folder was made


def test_the_console_script_checks_overrides_like_python_m(tmp_path, capsys, monkeypatch):
    """``calib-seg-train`` runs the function pyproject names: it must do the override check, not start Hydra."""
    import importlib

    import tomllib

    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["calib-seg-train"]
    module, _, name = target.partition(":")
    monkeypatch.setattr(sys, "argv", ["calib-seg-train", "trainer.max_epoch=2", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), name)()
    assert exit_info.value.code == 2
    assert "trainer.max_epoch: unknown key (did you mean 'max_epochs'?)" in capsys.readouterr().err


def test_the_console_script_finds_the_configs_from_any_folder(tmp_path):
    """Run as a console script (the app's module is not ``__main__``), Hydra must still find conf/."""
    out = subprocess.run([sys.executable, "-c", "from calib_seg.train import main; main()", "--cfg", "job",
                          "trainer.max_epochs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "max_epochs: 1" in out.stdout


def test_hydra_full_error_keeps_hydras_own_composition_error():
    out = _cli("train", "trainer.max_epoch=2", HYDRA_FULL_ERROR="1")
    assert out.returncode != 0
    assert "ConfigCompositionException" in out.stderr and "Could not override 'trainer.max_epoch'" in out.stderr


def test_override_check_knows_group_options_sweeps_adds_and_deletes():
    assert override_problems(["model=unett"]) == [
        "model=unett: unknown option (did you mean 'unet'?); allowed: attention_resunet, attention_unet, "
        "density_cnn, density_map, density_resnet, smp, unet"]
    # a sweep is checked value by value; keys inside a node added with + are the add's business
    assert override_problems(["experiment=C01,C0x"])[0].startswith("experiment=C0x: unknown option (did you mean")
    fine = ["seed=1,2", "experiment=C01,C02", "hydra.run.dir=/tmp/x", "hydra/launcher=slurm", "data=mito_folder",
            "data.source.root=/x", "+callbacks.pause._target_=x", "+callbacks.pause.epoch=2", "~callbacks.figures",
            "++trainer.new_flag=1", "callbacks.guard=null"]
    assert override_problems(fine) == []
    assert override_problems(["+trainer.max_epochs=3"]) == [
        "trainer.max_epochs: already in the config, so it takes no '+': write trainer.max_epochs=3"]
    assert override_problems(["~trainer.max_epoch"])[0].startswith("trainer.max_epoch: unknown key (did you mean")


# ------------------------------------------------------------------------------------------ item 6: bad input
def _png(path: Path, value: int = 9, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def test_bead_folder_without_manifest_lists_every_bad_name_in_one_message_and_exit_2(tmp_path):
    root = tmp_path / "beads"
    for name in ("50x_001.png", "foo.png", "75x_002.png", "100x_001.png", "bar.png"):
        _png(root / name)
    out = _cli("train", "data=beads_folder", f"data.source.root={root}", f"hydra.run.dir={tmp_path / 'run'}",
               "torch_threads=1")
    assert out.returncode == 2, out.stderr[-3000:]
    assert _message(out).startswith(f"error: {root}: no manifest.csv, and 3 of 5 file name(s) give no known dilution")
    for line in ("  75x_002.png: dilution 75x is not in the dilution table", "  bar.png: no dilution in the file name",
                 "  foo.png: no dilution in the file name"):
        assert line in out.stderr.splitlines()
    _no_traceback(out)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("ValueError: ") and "bar.png" in record["reason"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_mito_folder_is_one_message_not_hydras_instantiate_wrapper(tmp_path):
    out = _cli("train", "experiment=mito_quick", "data=mito_folder", f"data.source.root={tmp_path / 'nope'}",
               f"hydra.run.dir={tmp_path / 'run'}", "torch_threads=1")
    assert out.returncode == 2, out.stderr[-3000:]
    assert _message(out).startswith(f"error: folder dataset {tmp_path / 'nope'} does not exist")
    _no_traceback(out)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("FileNotFoundError: folder dataset")


def test_unreadable_image_errors_say_how_to_skip_such_files(tmp_path):
    for reader, files in ((lambda r: BeadFolder(r).load(), ["50x_001.png", "100x_001.png", "200x_001.png"]),
                          (FolderSource, ["train/images/a.png", "train/masks/a.png", "train/images/b.png",
                                          "train/masks/b.png"])):
        root = tmp_path / str(len(files))
        for f in files:
            _png(root / f, value=255 if "masks" in f else 9)
        bad = root / files[-1]
        bad.write_bytes(bad.read_bytes()[:40])
        with pytest.raises(ValueError, match="cannot read image") as err:
            reader(root)
        assert "data.source.skip_bad_files=true" in str(err.value)


def _fake_run_folder(root: Path) -> Path:
    """A run folder as calib_seg.train leaves it (config + checkpoint of an untrained tiny model)."""
    cfg = compose([*TINY_BEADS, "torch_threads=null"])
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    task = instantiate(cfg.task, model=instantiate(cfg.model))
    ckpt = root / "checkpoints" / "best-epoch001.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": task.state_dict()}, ckpt)
    return ckpt


def test_predict_refuses_an_existing_output_and_a_missing_checkpoint_with_one_message(tmp_path):
    ckpt = _fake_run_folder(tmp_path / "run")
    _png(tmp_path / "in" / "a.png", size=64)
    taken = tmp_path / "out.csv"
    taken.write_text("earlier predictions\n")
    out = _cli("predict", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={taken}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert _message(out).strip() == (f"error: {taken} exists and is not empty; choose a new output or pass "
                                  "overwrite=true (nothing is overwritten)")
    assert taken.read_text() == "earlier predictions\n"
    missing = _cli("predict", f"ckpt_path={tmp_path / 'gone' / 'checkpoints' / 'x.ckpt'}",
                   f"input={tmp_path / 'in'}", f"output={tmp_path / 'new.csv'}")
    assert missing.returncode == 2 and _message(missing).startswith("error: no training config for "), missing.stderr
    _no_traceback(out)
    _no_traceback(missing)


# ------------------------------------------------------------------------------------------ item 7: ckpt_path
@pytest.mark.parametrize("module", ["evaluate", "predict"])
def test_evaluate_and_predict_without_ckpt_path_say_it_is_required(module, tmp_path):
    out = _cli(module, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith("config error: invalid configuration")
    assert "  - ckpt_path: required, not given; a checkpoint written by calib_seg.train" in out.stderr
    if module == "predict":
        assert "  - input: required" in out.stderr and "  - output: required" in out.stderr
    _no_traceback(out)
    assert "NoneType" not in out.stderr


# ------------------------------------------------------------------------------------------ item 8: Ctrl-C
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A tiny 3-epoch run stopped with SIGINT (as Ctrl-C sends it) after its first epoch."""
    tmp = tmp_path_factory.mktemp("ctrl_c")
    run_dir, marker = tmp / "run", tmp / "paused"
    args = [*TINY_BEADS, "trainer.max_epochs=3", *pause_overrides(marker, epoch=1)]
    # SIGINT must raise KeyboardInterrupt in the child even when this process was started with SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "calib_seg.train", *args, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until_paused(proc, marker)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr, run_dir


def test_ctrl_c_exits_130_and_prints_the_command_that_resumes(interrupted):
    code, _, stderr, run_dir = interrupted
    assert code == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-2] == "run interrupted by Ctrl-C; its run.json says failed; continue with:"
    command = shlex.split(lines[-1])
    assert command[:3] == ["python", "-m", "calib_seg.train"]
    assert command[-2:] == ["ckpt_path=last", f"hydra.run.dir={run_dir.resolve()}"]
    assert "trainer.max_epochs=3" in command and "+callbacks.pause.epoch=1" in command
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith("interrupted: Ctrl-C")


@pytest.mark.slow
def test_the_printed_resume_command_finishes_the_interrupted_run(interrupted):
    _, _, stderr, run_dir = interrupted
    command = shlex.split(stderr.strip().splitlines()[-1])
    command = [a for a in command if not a.startswith("+callbacks.pause")]  # the test's pause, not the user's
    out = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["epochs"] == 3


# ------------------------------------------------------------------------------------------ item 9: conf/local
def test_a_local_file_without_the_global_package_header_is_an_error_not_silently_ignored(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "plain.yaml").write_text("# my machine\ntrainer:\n  max_epochs: 2\n")
    (tmp_path / "local" / "global.yaml").write_text("# @package _global_\n# my machine\ntrainer:\n  max_epochs: 2\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    plain = compose([search, "local=plain"])
    assert plain.trainer.max_epochs == 30 and LOCAL_WITHOUT_HEADER in problems_in(plain)
    applied = compose([search, "local=global"])
    assert applied.trainer.max_epochs == 2 and LOCAL_WITHOUT_HEADER not in problems_in(applied)


# ------------------------------------------------------------------------------------------ item 10: synth size
def test_synth_mito_refuses_a_size_the_suggested_training_cannot_take(tmp_path, capsys):
    assert synth_main(["mito", "--out", str(tmp_path / "m"), "--size", "100"]) == 2
    assert "--size 100 is smaller than the 128 px training patches" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ item 11: splits
def test_small_data_split_differing_from_the_fractions_is_said_in_the_log_and_record(run_cfg, caplog):
    note = split_note(stratified_split(np.repeat(np.arange(11), 3)), 0.15, 0.15)
    assert note.startswith("split train/val/test is 11/11/11 images = 33/33/33 %, not the requested 70/15/15 %")
    assert split_note(stratified_split(np.repeat(np.arange(11), 60)), 0.15, 0.15) is None  # 462/99/99
    dm = instantiate(run_cfg([*TINY_BEADS, "data.source.n_per_level=3"]).data)
    with caplog.at_level("WARNING", logger="calib_seg.data.density"):
        fingerprint = dm.fingerprint()
    assert fingerprint["split_note"] == note and note in caplog.text


# ------------------------------------------------------------------------------------------ items 13, 14, 17
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-epoch CLI run on 33 images, with an srun on PATH (as on a SLURM login node)."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    (tmp / "bin").mkdir()
    (tmp / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp / "bin" / "srun").chmod(0o755)
    # lr 1e-2: 3 epochs on 23 training images then learn (test R² 0.48-0.71 at seeds 42, 1, 2; 0.0-0.08 at 1e-3),
    # so the run completes instead of being refused by the final check
    args = [*TINY_BEADS, "trainer.max_epochs=3", "data.source.n_per_level=3", "~callbacks.early_stopping",
            "task.optimizer.lr=1e-2"]
    out = _cli("train", *args, f"hydra.run.dir={tmp / 'run'}", PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert out.returncode == 0, out.stderr[-3000:]
    return out, tmp / "run", json.loads((tmp / "run" / "run.json").read_text())


def test_train_log_holds_the_epoch_lines_the_summary_and_the_split_note(tiny_run):
    out, run_dir, record = tiny_run
    log = (run_dir / "train.log").read_text()
    for text in ("epoch 1/3 | train/loss", "epoch 3/3 | train/loss", "density run: completed", "test R²",
                 record["data_fingerprint"]["split_note"]):
        assert text in log
    assert "\x1b[" not in log
    assert out.stdout.count("epoch 3/3 |") == 1  # on the console once, not also through the log handler


def test_checkpoint_names_count_epochs_from_1_like_the_record_and_the_epoch_lines(tiny_run):
    out, run_dir, record = tiny_run
    assert record["best_epoch"] is not None
    assert (run_dir / "checkpoints" / f"best-epoch{record['best_epoch']:03d}.ckpt").is_file()
    assert "epoch 3/3" in out.stdout and "epoch 0/" not in out.stdout
    assert not list((run_dir / "checkpoints").glob("best-epoch000*"))


def test_a_run_shows_none_of_the_known_noise(tiny_run):
    out, _, _ = tiny_run
    console = out.stdout + out.stderr
    for noise in ("srun", "litlogger", "LeafSpec", "log_every_n_steps"):
        assert noise not in console, noise


def test_progress_bar_counts_epochs_from_1_with_the_total(run_cfg, capfd):
    run(run_cfg([*TINY_BEADS, "trainer.max_epochs=2", "trainer.enable_progress_bar=true", "callbacks.figures=null"]))
    bar = capfd.readouterr().out  # Lightning's TQDM bars write to stdout
    assert "Epoch 2/2" in bar and "Epoch 0" not in bar


# (the preset already renders the tiny 64 px images at 8 um/px)
TINY_REPRO = ["experiment=repro_relu_collapse", "data.source.n_per_level=6", "data.batch_size=4",
              "trainer.max_epochs=6", "trainer.enable_progress_bar=false", "logger=none", "torch_threads=1",
              "callbacks.early_stopping=null", "~callbacks.model_checkpoint"]


def test_a_guard_abort_is_printed_once_and_kept_in_the_log(tmp_path):
    out = _cli("train", *TINY_REPRO, f"hydra.run.dir={tmp_path}")
    reason = json.loads((tmp_path / "run.json").read_text())["reason"]
    assert out.returncode == 3
    assert (out.stdout + out.stderr).count(reason) == 1
    assert out.stderr.strip().splitlines()[-1] == f"run aborted: {reason}"
    assert (tmp_path / "train.log").read_text().count(reason) == 2  # the guard's warning and the final line


# ------------------------------------------------------------------------------------------ item 18: Makefile
def test_make_help_is_plain_text_when_piped_and_tensorboard_binds_to_localhost():
    helped = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "tensorboard" in helped.stdout and "\x1b[" not in helped.stdout
    for extra, host in (([], "127.0.0.1"), (["HOST=0.0.0.0"], "0.0.0.0")):
        dry = subprocess.run(["make", "-n", "tensorboard", *extra], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        line = [ln for ln in dry.stdout.splitlines() if "tensorboard --logdir" in ln][0]
        assert f"--host {host} " in line and "--bind_all" not in line
