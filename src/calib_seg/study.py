"""Seed studies as one command: ``python -m calib_seg.study calibration|mito [overrides]`` -> sweeps + study.md.

Each part of a study (``conf/study/<name>.yaml``: ``parts.<part>.grid`` names a file of conf/hparams_search/) runs
as an ordinary Hydra multirun of ``calib_seg.train`` with ``seed=<study.seeds seeds>`` swept on top of the grid,
in ``<study.dir>/<part>/``, with ``+resume=true``: re-running the same command with the same ``study.dir`` skips
every job that already finished (as a re-run sweep does). Then the study report is written into ``study.dir``.

Arguments: ``study=<name>`` picks another study config (e.g. ``study=calibration_quick``), ``study.<key>=...``
changes it (``study.seeds=5``, ``study.dir=multirun/studies/x``); everything else is passed to every job
(``hydra/launcher=slurm``, ``trainer.max_epochs=5``, ...). ``python -m calib_seg.study report <study dir>``
re-writes the report only.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from calib_seg.fileio import atomic_write_text
from calib_seg.records import code_state, read_record

META = "study.json"
KINDS = ("calibration", "mito")


def load_study(kind: str, args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(study config as a dict, the overrides for the jobs) from the command-line ``args``."""
    from hydra.core.global_hydra import GlobalHydra

    from calib_seg.config import compose

    name = next((a.split("=", 1)[1] for a in args if a.startswith("study=")), kind)
    study_args = [a for a in args if a.startswith("study.")]
    job_args = [a for a in args if not a.startswith(("study=", "study."))]
    bad = [a for a in job_args if a.startswith(("hydra.sweep.dir=", "+resume", "resume=", "-m", "--multirun"))]
    if bad:
        raise SystemExit(f"error: {' '.join(bad)}: the study chooses its sweep folders (study.dir=...) and always "
                         "resumes; leave these out")
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        cfg = compose([f"+study={name}", *study_args])
    finally:
        GlobalHydra.instance().clear()
    study = OmegaConf.to_container(cfg.study, resolve=True)
    if study.get("kind") != kind:
        raise SystemExit(f"error: study={name} is a {study.get('kind')} study, not {kind}")
    study["name"] = name
    return study, job_args


def study_dir(study: dict[str, Any]) -> Path:
    """The study folder: ``study.dir``, else a new ``multirun/studies/<date>/<time>_<name>``."""
    if study.get("dir"):
        return Path(study["dir"])
    now = datetime.now()
    return Path("multirun") / "studies" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{study['name']}"


def foreign_code(folder: Path) -> dict[str, list[str]]:
    """Git commits (other than the current one) of the finished jobs already in ``folder``, with their jobs."""
    current = code_state().get("git_commit")
    out: dict[str, list[str]] = {}
    for rec_path in sorted(folder.glob("*/*/run.json")):
        rec = read_record(rec_path.parent) or {}
        commit = (rec.get("provenance") or {}).get("git_commit")
        if rec.get("status") in ("completed", "aborted") and commit != current:
            out.setdefault(str(commit), []).append(f"{rec_path.parent.parent.name}/{rec_path.parent.name}")
    return out


def changed_settings(folder: Path, study: dict[str, Any], job_args: Sequence[str]) -> str:
    """What differs from the settings ``folder/study.json`` recorded (seeds, overrides, parts); empty if nothing."""
    path = folder / META
    if not path.exists():
        return ""
    old = json.loads(path.read_text())
    now = {"seed_list": seed_list(study), "overrides": [*(study.get("overrides") or []), *job_args],
           "parts": list(study["parts"])}
    return "; ".join(f"{k}: was {old.get(k)}, now {v}" for k, v in now.items() if old.get(k) != v)


def part_command(study: dict[str, Any], part: str, folder: Path, job_args: Sequence[str]) -> list[str]:
    """The multirun command of one part: its grid, the seeds, its folder, resume, then the overrides."""
    spec = study["parts"][part]
    seeds = ",".join(str(s) for s in seed_list(study))
    return [sys.executable, "-m", "calib_seg.train", "-m", f"hparams_search={spec['grid']}", f"seed={seeds}",
            f"hydra.sweep.dir={folder / part}", "+resume=true", *(study.get("overrides") or []),
            *(spec.get("overrides") or []), *job_args]


def seed_list(study: dict[str, Any]) -> list[int]:
    """The training seeds of every configuration: ``first_seed``, ``first_seed + 1``, ... (``seeds`` of them)."""
    return [int(study.get("first_seed", 1)) + i for i in range(int(study["seeds"]))]


def write_report(folder: Path, meta: dict[str, Any] | None = None) -> str:
    """Write the study report of ``folder`` (kind from ``study.json``); return its Markdown."""
    meta = meta or json.loads((folder / META).read_text())
    if meta.get("kind") == "mito":
        from calib_seg.study_mito import build_mito_report

        return build_mito_report(folder, meta)
    from calib_seg.study_report import build_study_report

    return build_study_report(folder, meta)


def run_study(kind: str, args: Sequence[str]) -> int:
    """Run (or resume) every part of the study, then write its report; the exit code of the first failed part."""
    study, job_args = load_study(kind, args)
    folder = study_dir(study)
    foreign = foreign_code(folder) if folder.is_dir() else {}
    if foreign:
        lines = "\n".join(f"  commit {c[:12]}: {len(j)} job(s), e.g. {j[0]}" for c, j in foreign.items())
        msg = (f"\n{'!' * 78}\nWARNING: {folder} holds finished jobs from other code than the current commit "
               f"({code_state().get('git_commit')}):\n{lines}\nResuming would mix code versions in one study.")
        if not study.get("allow_mixed"):
            print(msg + "\nRefused. Use a new study.dir, or study.allow_mixed=true to mix on purpose.\n" + "!" * 78,
                  file=sys.stderr)
            return 2
        print(msg + "\nstudy.allow_mixed=true: going on; the report flags the mix.\n" + "!" * 78, file=sys.stderr)
    changed = changed_settings(folder, study, job_args)
    if changed:
        print(f"error: {folder} was started with other study settings ({changed}). Job folders are numbered in "
              "grid x seed order, so resuming with other settings would pair folders with the wrong jobs: use the "
              "settings in study.json, or a new study.dir.", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "name": study["name"], "seeds": study["seeds"], "seed_list": seed_list(study),
            "overrides": [*(study.get("overrides") or []), *job_args], "parts": list(study["parts"]),
            "code": code_state(), "started": datetime.now().isoformat(timespec="seconds"), "commands": {}}
    rc, t0 = 0, time.monotonic()
    for part in study["parts"]:
        cmd = part_command(study, part, folder, job_args)
        meta["commands"][part] = " ".join(shlex.quote(c) for c in ["python", *cmd[1:]])
        atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
        print(f"study {study['name']}: part {part}: {meta['commands'][part]}", flush=True)
        part_rc = subprocess.run(cmd).returncode
        print(f"study {study['name']}: part {part} exit {part_rc}", flush=True)
        rc = rc or part_rc
        if part_rc in (130, 143):  # interrupted: stop here, the same command resumes
            break
    meta["wall_time_s"] = time.monotonic() - t0
    atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
    write_report(folder, meta)
    print(f"study report: {folder / 'study.md'}\nresume / extend: python -m calib_seg.study {kind} "
          f"{' '.join(shlex.quote(a) for a in args if not a.startswith('study.dir='))} study.dir={folder}")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m calib_seg.study calibration|mito [overrides]`` or ``... report <study dir>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*KINDS, "report"):
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "report":
        if len(argv) != 2 or not (Path(argv[1]) / META).exists():
            print(f"error: report needs one study folder holding {META}", file=sys.stderr)
            return 2
        write_report(Path(argv[1]))
        print(f"wrote {Path(argv[1]) / 'study.md'}")
        return 0
    return run_study(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
