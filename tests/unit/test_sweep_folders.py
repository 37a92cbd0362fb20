"""Sweep job folders are named by the swept values only, and ``+resume=true`` matches finished jobs by them
(resolvers.job_dirname, hydra_plugins.calib_seg_basic_sweeper, resume.check_resumed_grid); the real multiruns are
in tests/integration/test_resume.py and test_sweeps.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from calib_seg.resolvers import MAX_DIRNAME, folder_value, job_dirname, job_folder
from calib_seg.resume import SweepChanged, check_resumed_grid
from hydra_plugins.calib_seg_basic_sweeper.sweeper import CalibSegBasicSweeper, swept_keys

EXCLUDE = ["resume", "ckpt_path", "data.source.root"]


def test_folder_values_have_no_brackets_commas_quotes_or_spaces():
    assert folder_value("[8,16,32]") == "8-16-32"
    assert folder_value("[8, 16]") == "8-16"
    assert folder_value("'a b'") == "a_b"
    assert folder_value("{_target_:calib_seg.data.augment.PairAugment,elastic_alpha:6}") == (
        "_target_-calib_seg.data.augment.PairAugment-elastic_alpha-6")
    assert folder_value("1e-05") == "1e-05" and folder_value("unet") == "unet"
    assert folder_value("-1.0") == "-1.0" and folder_value("[-1,2]") == "-1-2"  # a sign is kept


def test_a_job_folder_is_its_number_and_the_swept_values_in_grid_order():
    job = ["debug=tiny_beads", "seed=2", "torch_threads=1", "model.filters=[8,16,32]", "+resume=true"]
    assert job_folder(3, job_dirname(job, ["model.filters", "seed"])) == "3_model.filters=8-16-32_seed=2"
    assert job_folder(0, job_dirname(job, [])) == "0"  # nothing swept: just the number
    # a sweeper that does not name its swept keys: every override but the excluded ones, sorted
    assert job_dirname(job, None, EXCLUDE) == "debug=tiny_beads_model.filters=8-16-32_seed=2_torch_threads=1"


def test_a_long_name_is_cut_with_a_hash_of_the_whole_name():
    keys = [f"model.k{i}" for i in range(40)]
    a = job_dirname([f"{k}=value{i}" for i, k in enumerate(keys)], keys)
    b = job_dirname([f"{k}=value{i}" for i, k in enumerate(keys)][:-1] + [f"{keys[-1]}=other"], keys)
    assert len(a) == len(b) == MAX_DIRNAME and a != b and a[:150] == b[:150]
    assert a == job_dirname([f"{k}=value{i}" for i, k in enumerate(keys)], keys)  # stable


def test_swept_keys_are_the_sweep_overrides_and_the_command_line_wins_over_the_grid():
    parse = OverridesParser.create().parse_overrides
    # params first (hparams_search), then the command line, as the BasicSweeper expands them
    assert swept_keys(parse(["experiment=C01,C02", "seed=1,2", "torch_threads=1"])) == ["experiment", "seed"]
    assert swept_keys(parse(["experiment=C01,C02", "seed=1,2", "experiment=C03"])) == ["seed"]
    # unbound: Hydra's plugin scan re-imports basic_sweeper, so an instance made here may not init in a long session
    (batch,) = CalibSegBasicSweeper.split_arguments(SimpleNamespace(config={"resume": False}),
                                                    parse(["seed=1,2", "torch_threads=1"]), None)
    assert batch == [["seed=1", "torch_threads=1", "hydra.sweeper.swept_keys=['seed']"],
                     ["seed=2", "torch_threads=1", "hydra.sweeper.swept_keys=['seed']"]]


def _ran(sweep: Path, name: str, overrides: list[str]) -> None:
    """A finished job folder as a sweep leaves it (Hydra's .hydra/overrides.yaml + a run record)."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (sweep / name / "run.json").write_text('{"status": "completed"}')


def _grid(seeds, threads=1, extra=()):
    return [["debug=tiny_beads", f"seed={s}", f"torch_threads={threads}", *extra, "+resume=true"] for s in seeds]


def test_resume_accepts_the_same_grid_an_extended_grid_and_a_moved_data_folder(tmp_path):
    for i, s in enumerate((1, 2)):
        _ran(tmp_path, f"{i}_seed={s}", ["debug=tiny_beads", f"seed={s}", "torch_threads=1"])
    check_resumed_grid(tmp_path, _grid([1, 2]), ["seed"], EXCLUDE)
    check_resumed_grid(tmp_path, _grid([1, 2, 3]), ["seed"], EXCLUDE)  # a value added at the end: a new job
    check_resumed_grid(tmp_path, _grid([1, 2], extra=["data.source.root=/elsewhere"]), ["seed"], EXCLUDE)
    check_resumed_grid(tmp_path / "new", _grid([5]), ["seed"], EXCLUDE)  # nothing ran yet


def test_resume_refuses_a_changed_fixed_override_naming_it(tmp_path):
    for i, s in enumerate((1, 2)):
        _ran(tmp_path, f"{i}_seed={s}", ["debug=tiny_beads", f"seed={s}", "torch_threads=1"])
    with pytest.raises(SweepChanged, match=r"2 finished job\(s\) .* torch_threads=1 then, 2 now\. .*overrides\.yaml"):
        check_resumed_grid(tmp_path, _grid([1, 2], threads=2), ["seed"], EXCLUDE)
    with pytest.raises(SweepChanged, match=r"trainer\.max_epochs=\(not set\) then, 3 now"):
        check_resumed_grid(tmp_path, _grid([1, 2], extra=["trainer.max_epochs=3"]), ["seed"], EXCLUDE)


def test_resume_refuses_a_reordered_or_changed_grid_and_folders_of_the_older_naming(tmp_path):
    for i, s in enumerate((1, 2)):
        _ran(tmp_path, f"{i}_seed={s}", ["debug=tiny_beads", f"seed={s}", "torch_threads=1"])
    with pytest.raises(SweepChanged, match=r"0_seed=1 \(seed=1\) would now be job 1_seed=1"):
        check_resumed_grid(tmp_path, _grid([2, 1]), ["seed"], EXCLUDE)
    with pytest.raises(SweepChanged, match=r"1_seed=2 \(seed=2\) is not a job of this grid"):
        check_resumed_grid(tmp_path, _grid([1, 3]), ["seed"], EXCLUDE)
    old = tmp_path / "old"
    _ran(old, "0_debug=tiny_beads,seed=1,torch_threads=1", ["debug=tiny_beads", "seed=1", "torch_threads=1"])
    with pytest.raises(SweepChanged, match=r"0_debug=tiny_beads,seed=1,torch_threads=1 is job 0_seed=1 in the older "
                                           r"folder naming \(rename the folder to 0_seed=1 to resume it\)"):
        check_resumed_grid(old, _grid([1]), ["seed"], EXCLUDE)
    (old / "0_debug=tiny_beads,seed=1,torch_threads=1").rename(old / "0_seed=1")
    check_resumed_grid(old, _grid([1]), ["seed"], EXCLUDE)  # renamed as told: it resumes
