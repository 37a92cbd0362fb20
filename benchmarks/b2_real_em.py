"""B2 on real EM: experiment=mito_lucchi_cpu on the 42 EPFL training slices, ablations at equal training steps.

Data: ``../shared/data/lucchi_epfl_train`` (42 slices, every 4th of the EPFL training volume), split by name order
into contiguous blocks train | val | test = 28 | 6 | 8 (the preset's flat-folder split); the 8-slice test block
stands in for the EPFL test volume. Every training run is the CLI command below with the same number of epochs
(``trainer.max_epochs``; 64 steps of 8 patches each), run one at a time, load average recorded before and after.

Inference ablation (on the weights of one run, so every row has the same training; ``--inference-on`` names the
runs, each scored once and cached in its folder as ``b2e_inference.json``): the whole val and test slices are
predicted plain and with TTA; threshold / post-processing are chosen on validation exactly as
``task.threshold=auto`` / ``task.postprocess=auto`` do (:func:`calib_seg.tasks.seg_selection.select_inference`)
and only then applied to the test block. Otsu + morphology is tuned on the 28 training slices.

Curve width: span of the thresholds 0.1..0.9 whose Jaccard is >= 90 % of the curve's peak (wider = the score
depends less on the exact threshold).

    .venv/bin/python benchmarks/b2_real_em.py --train --epochs 3            # trains every ablation, then scores
    .venv/bin/python benchmarks/b2_real_em.py --train --only base focal --data DIR   # some of them, other folder
    .venv/bin/python benchmarks/b2_real_em.py --run base=DIR --run elastic=DIR ...   # score finished runs
    .venv/bin/python benchmarks/b2_real_em.py --run base=DIR --run plateau=DIR --reuse   # Otsu row kept
    .venv/bin/python benchmarks/b2_real_em.py --run a=DIR --run b=DIR --inference-on a b  # inference on both

A run trained with ``data.source.block=first`` holds out the first slices instead (test | val | train): its row says
so in the "held out" column, a second stand-in test block independent of the default (last) one;
``data.source.block=middle data.source.gap=1`` a third (train | val | test | train, the training slice next to each
held-out block dropped, as the test block there borders training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
import torch
from classical import OtsuSegmenter, jaccard_dice

DATA = common.SHARED / "data" / "lucchi_epfl_train"
BASE = ["experiment=mito_lucchi_cpu", "logger=none"]
#: ablation name -> overrides on top of BASE (one change each against ``base``)
ABLATIONS = {
    "base": [],
    "plateau": ["task/scheduler=plateau", "task.scheduler.patience=3"],  # the preset's schedule before one_cycle
    "elastic": ["data.augment={_target_:calib_seg.data.augment.PairAugment,elastic_alpha:6}"],
    "focal": ["task.loss=focal"],
    "patch256": ["data.patch_size=256", "data.batch_size=2", "data.patches_per_epoch=128"],  # same pixels per step
    "width24": ["model.base_filters=24"],
    "float32": ["trainer.precision=32-true"],  # the preset's bf16 autocast (on CPUs with bf16 units) off
    "attention_unet": ["model=attention_unet"],  # the other two networks, same recipe and steps
    "attention_resunet": ["model=attention_resunet"],
}
CURVE = tuple(round(0.1 * i, 1) for i in range(1, 10))


def curve_width(curve: dict[float, float], frac: float = 0.9) -> float:
    """Span of the thresholds whose Jaccard is >= ``frac`` x the peak of ``curve`` (threshold -> Jaccard)."""
    peak = max(curve.values())
    kept = [t for t, j in curve.items() if j >= frac * peak]
    return max(kept) - min(kept)


def train(name: str, overrides: list[str], epochs: int, out: Path, threads: int | None, data: Path = DATA) -> Path:
    """One CLI training run (``threads``, else torch_threads 2 if the load is < 3, else 1); returns its folder."""
    load = common.load_avg()
    threads = threads or (2 if load[0] < 3 else 1)
    cmd = [sys.executable, "-m", "calib_seg.train", *BASE, f"data.source.root={data}", *overrides,
           f"trainer.max_epochs={epochs}",
           f"torch_threads={threads}", f"hydra.run.dir={out / name}"]
    print("B2e:", " ".join(cmd[1:]), f"(load {load})", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=common.REPO, check=True, stdout=subprocess.DEVNULL)
    meta = {"load_start": load, "load_end": common.load_avg(), "wall_s": time.perf_counter() - t0,
            "threads": threads, "command": " ".join(["python", *cmd[1:]])}
    (out / name / "bench_meta.json").write_text(json.dumps(meta))
    return out / name


def run_row(name: str, run_dir: Path) -> dict:
    """Headline numbers of one training run from its run.json (test block at the run's own inference)."""
    rec = json.loads((run_dir / "run.json").read_text())
    source = rec["config"]["data"]["source"]
    meta_path = run_dir / "bench_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    m = rec["metrics"]
    curve = {t: m[f"test/jaccard_t{t:.2f}"] for t in CURVE}
    return {"name": name, "val_jaccard": rec["best_val"], "test_jaccard": m["test/jaccard"],
            "test_curve": curve, "curve_width": curve_width(curve), "epochs": rec["epochs"],
            "steps": rec["epochs"] * rec["data_fingerprint"]["sampling"]["patches_per_epoch"]
            // rec["config"]["data"]["batch_size"],
            "held_out": (source.get("block") or "last") + (f", gap {source['gap']}" if source.get("gap") else ""),
            "fit_wall_s": rec["wall_time_s"], "inference_choice": {k: v for k, v in
                                                                   (rec.get("inference_choice") or {}).items()
                                                                   if k != "candidates"}, **meta}


def _slices(datamodule, split: str) -> list[dict]:
    return list(datamodule._whole_loader(datamodule.get_split(split), 1))


def inference_ablation(run_dir: Path) -> dict:
    """Plain / threshold chosen on val / TTA / TTA + post-processing chosen on val, on one checkpoint.

    Scored once per run folder (``b2e_inference.json`` there; delete it to score again)."""
    cached = run_dir / "b2e_inference.json"
    if cached.exists():
        rows = json.loads(cached.read_text())
        return {k: {**v, "test_curve": {float(t): j for t, j in v["test_curve"].items()}}  # JSON keys are str
                for k, v in rows.items()}
    from hydra.utils import instantiate

    from calib_seg.checkpoints import load_run_config, load_task, resolve_checkpoint
    from calib_seg.tasks.seg_selection import AUTO, select_inference

    ckpt = resolve_checkpoint(run_dir)
    cfg = load_run_config(ckpt)
    task = load_task(ckpt, cfg)
    dm = instantiate(cfg.data)
    dm.setup(None)
    cache: dict = {}

    def plain(x: torch.Tensor) -> torch.Tensor:  # every (slice, flip/rotation) is predicted once
        key = (tuple(x.shape), hash(x.numpy().tobytes()))
        if key not in cache:
            with torch.no_grad():
                cache[key] = task.plain_proba(x)
        return cache[key]

    val, test = _slices(dm, "val"), _slices(dm, "test")
    rows = {}
    settings = {"plain, threshold 0.5": (0.5, False, None), "plain, threshold chosen on val": (AUTO, False, None),
                "TTA, threshold 0.5": (0.5, True, None),
                "TTA + post-processing chosen on val, threshold 0.5": (0.5, True, AUTO),
                "TTA + post-processing + threshold chosen on val": (AUTO, True, AUTO)}
    for label, (thr, tta, pp) in settings.items():
        t0 = time.perf_counter()
        choice = select_inference(plain, val, thr, tta, pp)  # chosen on validation only
        # the test block at that choice; its Jaccard at CURVE's thresholds too (a diagnostic curve, chooses nothing)
        on_test = select_inference(plain, test, choice["threshold"], choice["tta"], choice["postprocess"])
        curve = {r["threshold"]: r["val_jaccard"] for r in
                 select_inference(plain, test, AUTO, choice["tta"], choice["postprocess"], thresholds=CURVE)[
                     "candidates"]}
        rows[label] = {"val_jaccard": choice["val_jaccard"], "test_jaccard": on_test["val_jaccard"],
                       "threshold": choice["threshold"], "postprocess": choice["postprocess"],
                       "tta": choice["tta"], "test_curve": curve, "curve_width": curve_width(curve),
                       "seconds": time.perf_counter() - t0}
        print("B2e inference:", label, rows[label], flush=True)
    cached.write_text(json.dumps(rows, indent=1))
    return rows


def otsu_row(run_dir: Path) -> dict:
    """Otsu + morphology tuned on the training slices, scored on the test block."""
    from hydra.utils import instantiate

    from calib_seg.checkpoints import load_run_config, resolve_checkpoint

    cfg = load_run_config(resolve_checkpoint(run_dir))
    source = instantiate(cfg.data.source)
    unit = lambda a: np.asarray(a, np.float64) / (255.0 if np.asarray(a).dtype == np.uint8 else 1.0)  # noqa: E731
    tr, te = source.split("train"), source.split("test")
    otsu = OtsuSegmenter().fit([unit(tr.images[i]) for i in range(len(tr))],
                               [np.asarray(tr.masks[i]) > 0 for i in range(len(tr))])
    pred = np.concatenate([otsu.predict(unit(te.images[i])).ravel() for i in range(len(te))])
    truth = np.concatenate([(np.asarray(te.masks[i]) > 0).ravel() for i in range(len(te))])
    j, _ = jaccard_dice(pred, truth)
    return {"test_jaccard": j, "all_foreground": float(truth.mean()), "n_train": len(tr), "n_test": len(te)}


def _short(choice: dict) -> str:
    if not choice:
        return "plain, threshold 0.5"
    pp = choice["postprocess"]
    return (f"threshold {choice['threshold']}, TTA {'on' if choice['tta'] else 'off'}, median {pp['median']}, "
            f"min_size {pp['min_size']}")


def markdown(runs: list[dict], inference: dict[str, dict], otsu: dict | None, load0, load1, wall: float) -> str:
    """The B2e section: one row per run, then an inference table per ``inference`` run (name -> rows)."""
    parts = [common.section_header("B2e", True, [common.command_line()], load0, load1, wall)]
    parts.append("\nThat time is this command's (training, if any, and scoring; inference tables cached in a run "
                 "folder are read, not re-scored); each run's own training wall time is its row's \"wall s\".\n")
    parts.append("\n42 real EPFL slices, contiguous blocks train 28 | val 6 | test 8 (stand-in test block); "
                 "whole 768x1024 slices, foreground Jaccard pooled over all pixels. One change per row against "
                 "`base` (= `experiment=mito_lucchi_cpu`) at equal epochs/steps; rows with other step counts "
                 "are the preset's full budget or earlier full-length runs (their names say which). \"held out\": where the "
                 "val and test blocks sit in the 42 slices (last: train | val | test, the default; first: "
                 "test | val | train, a second, independent stand-in test block; middle, gap 1: train | val | test | "
                 "train with one slice dropped from training on each side, a third, 26 training slices).\n")
    rows = [[r["name"], r["held_out"], r["steps"], r["val_jaccard"], r["test_jaccard"], _short(r["inference_choice"]),
             " / ".join(f"{r['test_curve'][t]:.3f}" for t in (0.3, 0.5, 0.7)), r["curve_width"],
             f"{r.get('wall_s', r['fit_wall_s']):.0f}", r.get("threads", "?"),
             f"{(r.get('load_start') or ['?'])[0]} -> {(r.get('load_end') or ['?'])[0]}"] for r in runs]
    parts.append(common.md_table(["run", "held out", "steps", "best val J (tiles, 0.5)", "test J", "test inference (chosen on val)",
                                  "test J @0.3 / 0.5 / 0.7 (that inference)",
                                  "curve width (>= 90 % of peak)", "wall s", "threads", "load 1-min"], rows))
    parts.append("\nCommands (`<run>` overrides in `ABLATIONS`): " + "; ".join(f"`{common.shown(r.get('command', ''))}`"
                                                                              for r in runs))
    held = {r["name"]: r["held_out"] for r in runs}
    for name, table in inference.items():
        parts.append(f"\n### Inference choices on the `{name}` weights (held out: {held[name]}; chosen "
                     "on val, then applied to test)\n")
        parts.append(common.md_table(["inference", "val J", "test J", "threshold", "post-processing",
                                      "test J @0.3 / 0.5 / 0.7", "curve width (>= 90 % of peak)"],
                                     [[k, v["val_jaccard"], v["test_jaccard"], v["threshold"], v["postprocess"],
                                       " / ".join(f"{v['test_curve'][t]:.3f}" for t in (0.3, 0.5, 0.7)),
                                       v["curve_width"]] for k, v in table.items()]))
    if otsu:
        parts.append(f"\nOtsu + morphology (tuned on the {otsu['n_train']} training slices): test J "
                     f"{otsu['test_jaccard']:.3f}; all-foreground: {otsu['all_foreground']:.3f}.")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", action="store_true", help="train every ablation (one at a time)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of every run (default: 2 if the load is < 3, else 1; thread counts change "
                         "the numerics, so compare runs at one count)")
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR of a finished run to score")
    ap.add_argument("--data", type=Path, default=DATA, help=f"the 42-slice folder (default {DATA})")
    ap.add_argument("--only", nargs="*", default=None, help="train only these ABLATIONS (default: all)")
    ap.add_argument("--inference-on", nargs="+", default=["base"],
                    help="the runs (--run/ABLATIONS names) whose weights get an inference table, e.g. the "
                         "full-budget preset run on each held-out block; the first also gets the Otsu row "
                         "(default: base)")
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--no-otsu", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="take the Otsu row from results.json when it was scored on the same base run (e.g. after "
                         "adding an ablation run; inference tables are cached in each run folder anyway)")
    args = ap.parse_args()
    load0, t0 = common.load_avg(), time.perf_counter()
    dirs = dict(r.split("=", 1) for r in args.run)
    if args.only is not None and (bad := [n for n in args.only if n not in ABLATIONS]):
        ap.error(f"--only {' '.join(bad)}: not an ablation (ABLATIONS: {', '.join(ABLATIONS)})")
    to_train = [n for n in ABLATIONS if args.only is None or n in args.only] if args.train else []
    unknown = [n for n in args.inference_on if n not in {*dirs, *to_train} and n != "base"]
    if unknown:  # checked before any training starts
        ap.error(f"--inference-on {' '.join(unknown)}: not a run here (runs: {', '.join([*dirs, *to_train])})")
    if args.train:
        out = common.WORK / "b2e" / time.strftime("%Y%m%d-%H%M%S")
        dirs.update({name: str(train(name, ov, args.epochs, out, args.threads, args.data))
                     for name, ov in ABLATIONS.items() if name in to_train})
    runs = [run_row(name, Path(d)) for name, d in dirs.items()]
    names = [n for n in args.inference_on if n in dirs] or [next(n for n in ("base", *dirs) if n in dirs)]
    base = Path(dirs[names[0]])
    prev = common.read_results().get("B2e") or {}
    reuse = args.reuse and (prev.get("base_run") == str(base) or f"base={base}" in prev.get("command", ""))
    inference = {} if args.no_inference else {n: inference_ablation(Path(dirs[n])) for n in names}
    otsu = prev.get("otsu") if reuse else None if args.no_otsu else otsu_row(base)
    res = {"runs": runs, "base_run": str(base), "inference": inference, "otsu": otsu,
           "command": common.command_line(), "inference_on": names,
           "load_avg_start": load0, "load_avg_end": common.load_avg()}
    common.write_section("B2e", res, markdown(runs, inference, otsu, load0, res["load_avg_end"],
                                              time.perf_counter() - t0))
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
