"""B8 dot-annotated counting protocol: N training images from the first half, test on the second half, 5 draws.

The standard protocol of the dot-annotated cell counting literature, on any folder in the dot-image format
(``DIR/images/<stem>.png`` + ``DIR/dots/<stem>.png``, one non-zero pixel per object, e.g. the public synthetic
cells set): stems sorted by name, the first half is the training pool and the second half the fixed test set.
For each N (default 8 16 32) and draw (default 5) N images are drawn at random from the pool, a run folder of
symlinks (``train/`` = the N images, ``test/`` = the test half; no val/, so the trainer holds out whole
training images for validation, ``data.val_fraction``) is trained with ``model=density_map`` at a fixed step
budget, and the test count MAE, RMSE and localisation F1 of the run record are reported as mean ± sd over the
draws, beside the trivial baseline (every test image predicted as the mean count of the N training images).

Without ``--data`` the synthetic stand-in (``python -m calib_seg.synth dots``, 200 images of 256x256 px) is
generated into ``_work/`` and the section says it is synthetic. Finished runs are cached one JSON line each in
``_work/b8_runs.jsonl`` (keyed by data, N, draw and settings), so an interrupted benchmark resumes; the section is
re-rendered after every run. One run at a time, ``torch_threads=1``.

    .venv/bin/python benchmarks/b8_counting_protocol.py                          # synthetic stand-in
    .venv/bin/python benchmarks/b8_counting_protocol.py --data /path/to/cells    # your dot folder
    .venv/bin/python benchmarks/b8_counting_protocol.py --render                 # section from the cache only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import common
import numpy as np

CACHE = common.WORK / "b8_runs.jsonl"
STAND_IN = common.WORK / "b8_cells_synth"
STAND_IN_ARGS = {"n": 200, "size": 256, "seed": 0}
DEFAULT_N = (8, 16, 32)
#: optimizer steps per run when --epochs is not given (epochs = ceil(steps / steps per epoch at that N))
DEFAULT_STEPS = 300
CROP, BATCH, VAL_FRACTION = 128, 8, 0.2
#: published test MAE on the real synthetic-cells set (200 images, first 100 pool, last 100 test) at N = 32
LITERATURE_N32 = [("Lempitsky & Zisserman 2010 (density, MESA)", 3.5), ("FCRN-A (Xie et al. 2016)", 2.9),
                  ("Count-ception (Cohen et al. 2017)", 2.4)]
#: the protocol's overrides on top of data/model/threads (fixed budget: no early stop; no figures, no logger)
FIXED = ["model=density_map", "torch_threads=1", "logger=none", "trainer.enable_progress_bar=false",
         "callbacks.early_stopping=null", "callbacks.figures=null", "callbacks.guard=null",
         "optimized_metric=val/mae", "callbacks.model_checkpoint.mode=min"]


# ------------------------------------------------------------------------------------------------ protocol
def list_stems(root: Path) -> list[str]:
    """Sorted stems of ``root/images`` that have a dots image; an image without one is an error."""
    from calib_seg.data.images import list_images

    root = Path(root)
    if not (root / "images").is_dir() or not (root / "dots").is_dir():
        raise FileNotFoundError(f"{root}: needs images/ and dots/ (flat dot-annotated layout)")
    images = {p.stem: p for p in list_images(root / "images")}
    dots = {p.stem for p in list_images(root / "dots")}
    missing = sorted(set(images) - dots)
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} image(s) without a dots image, e.g. dots/{missing[0]}.png")
    if len(images) < 4:
        raise ValueError(f"{root}: {len(images)} image(s); the protocol needs at least 4")
    return sorted(images)


def split_pool_test(stems: Sequence[str]) -> tuple[list[str], list[str]]:
    """First half (sorted by name) = training pool, second half = the fixed test set (odd: test has one more)."""
    stems = sorted(stems)
    half = len(stems) // 2
    return stems[:half], stems[half:]


def draw_training(pool: Sequence[str], n: int, draw: int, seed: int = 0) -> list[str]:
    """The ``n`` distinct pool images of draw ``draw`` (depends only on seed, n, draw), in pool order."""
    if not 1 <= n <= len(pool):
        raise ValueError(f"N={n} training images but the pool holds {len(pool)} (the first half of the folder)")
    idx = np.random.default_rng([int(seed), int(n), int(draw)]).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(idx)]


def read_counts(root: Path, stems: Sequence[str]) -> dict[str, int]:
    """Objects per image: the non-zero pixels of each dots image (as ``data=point_folder`` reads them)."""
    from calib_seg.data.points import read_dots

    out = {}
    for s in stems:
        path = next(p for p in sorted((Path(root) / "dots").glob(f"{s}.*")))
        out[s] = len(read_dots(path))
    return out


def trivial_baseline(train_counts: Sequence[float], test_counts: Sequence[float]) -> dict[str, float]:
    """Every test image predicted as the mean training count: MAE and RMSE on the test counts."""
    guess = float(np.mean(train_counts))
    err = np.asarray(test_counts, float) - guess
    return {"prediction": guess, "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1; NaN for fewer than two values) of the finite values: the study reports'
    :func:`calib_seg.study_stats.mean_sd`, as a pair with NaN for what is undefined."""
    from calib_seg.study_stats import mean_sd as stats

    s = stats(values)
    return tuple(float("nan") if s[k] is None else float(s[k]) for k in ("mean", "sd"))


def steps_per_epoch(n: int, batch: int = BATCH, val_fraction: float = VAL_FRACTION) -> int:
    """Optimizer steps per epoch with N images and no val/: PointDataModule holds out round(val_fraction x N)
    whole images (at least 1) and its loader drops a partial last batch unless the set fits one batch."""
    n_train = n - min(n - 1, max(1, int(round(val_fraction * n))))
    return n_train // batch if n_train > batch else 1


def epochs_for(n: int, steps: int, batch: int = BATCH) -> int:
    """Epochs that give at least ``steps`` optimizer steps at N images."""
    return max(1, math.ceil(steps / steps_per_epoch(n, batch)))


def val_every(epochs: int) -> int:
    """Validate (and checkpoint) about 50 times per run: at 1-3 steps per epoch, every epoch's validation and
    checkpoint would cost more than its training."""
    return max(1, epochs // 50)


def build_run_folder(root: Path, dest: Path, train: Sequence[str], test: Sequence[str]) -> Path:
    """``dest/{train,test}/{images,dots}/`` as symlinks to the files of ``root`` (no copies); returns ``dest``."""
    for split, stems in (("train", train), ("test", test)):
        for sub in ("images", "dots"):
            folder = dest / split / sub
            folder.mkdir(parents=True, exist_ok=True)
            for s in stems:
                src = next(p for p in sorted((Path(root) / sub).glob(f"{s}.*")))
                link = folder / src.name
                if not link.is_symlink():
                    link.symlink_to(src.resolve())
    return dest


def data_tag(root: Path) -> str:
    """Fingerprint of a dot folder: names and sizes of its images and dots."""
    from calib_seg.fileio import content_hash

    files = sorted(p for sub in ("images", "dots") for p in (Path(root) / sub).iterdir() if p.is_file())
    return content_hash([(f"{p.parent.name}/{p.name}", p.stat().st_size) for p in files], length=12)


# ------------------------------------------------------------------------------------------------ runs
def stand_in() -> Path:
    """The synthetic stand-in in ``_work/`` (written once)."""
    if not (STAND_IN / "README.txt").is_file():
        from calib_seg.data.sources.point_folder import write_dots_folder

        print(f"B8: writing the synthetic stand-in to {STAND_IN}", flush=True)
        write_dots_folder(STAND_IN, overwrite=STAND_IN.exists(), **STAND_IN_ARGS)
    return STAND_IN


def cached() -> list[dict]:
    """Every cached run (a later line with the same key replaces an earlier one)."""
    rows = [json.loads(line) for line in CACHE.read_text().splitlines() if line.strip()] if CACHE.exists() else []
    return list({r["key"]: r for r in rows}.values())


def run_key(tag: str, n: int, draw: int, settings: dict) -> str:
    """Cache key of one run: data, N, draw and every setting that changes the result."""
    return json.dumps({"data": tag, "n": n, "draw": draw, **settings}, sort_keys=True)


def run_one(root: Path, tag: str, n: int, draw: int, train: list[str], test: list[str], counts: dict[str, int],
            settings: dict) -> dict:
    """Train + test one draw; returns its cache row."""
    run_data = build_run_folder(root, common.WORK / "b8" / tag / f"N{n}_d{draw}" / "data", train, test)
    ov = ["data=point_folder", f"data.source.root={run_data}", *FIXED, f"trainer.max_epochs={settings['epochs']}",
          f"data.crop_size={settings['crop']}", f"data.batch_size={settings['batch']}",
          f"trainer.check_val_every_n_epoch={val_every(settings['epochs'])}", f"seed={settings['seed'] + draw}",
          *settings["extra"]]
    t0 = time.perf_counter()
    rec = common.run_training(ov, f"b8/{tag}/N{n}_d{draw}/runs")
    wall = time.perf_counter() - t0
    m = rec.get("metrics") or {}
    base = trivial_baseline([counts[s] for s in train], [counts[s] for s in test])
    return {"key": run_key(tag, n, draw, settings), "data": tag, "n": n, "draw": draw, "status": rec.get("status"),
            "reason": rec.get("reason"), "count_mae": m.get("test/count_mae"), "count_rmse": m.get("test/count_rmse"),
            "loc_f1": m.get("test/loc_f1"), "epochs_run": rec.get("epochs"), "best_val": rec.get("best_val"),
            "baseline_mae": base["mae"], "baseline_rmse": base["rmse"], "baseline_prediction": base["prediction"],
            "train": train, "wall_s": wall, "load": common.load_avg(), "run_dir": rec.get("run_dir"),
            "overrides": ov, "settings": settings}


# ------------------------------------------------------------------------------------------------ section
def summarise(rows: Sequence[dict], ns: Sequence[int]) -> list[dict]:
    """Per N: draws, count MAE / RMSE / loc F1 and baseline MAE as mean ± sd, mean wall time per run."""
    out = []
    for n in ns:
        r = sorted((x for x in rows if x["n"] == n), key=lambda x: x["draw"])
        if not r:
            continue
        ok = [x for x in r if x["status"] == "completed"]
        out.append({"n": n, "draws": len(ok), "not_completed": len(r) - len(ok),
                    **{k: mean_sd([x[k] for x in ok]) for k in ("count_mae", "count_rmse", "loc_f1", "baseline_mae")},
                    "wall_s": float(np.mean([x["wall_s"] for x in r])),
                    "epochs": r[0]["settings"]["epochs"],
                    "per_draw": [(x["draw"], x["count_mae"], x["baseline_mae"]) for x in r]})
    return out


def _pm(ms: tuple[float, float], d: int = 2) -> str:
    m, s = ms
    if not np.isfinite(m):
        return "n/a"
    return f"{m:.{d}f} ± {s:.{d}f}" if np.isfinite(s) else f"{m:.{d}f}"


def render(rows: list[dict], ns: Sequence[int], info: dict, load0: list[float], t0: float) -> None:
    """Write the B8 section of results.json / results.md from the runs of this data and settings."""
    summary = summarise(rows, ns)
    wall = sum(r["wall_s"] for r in rows)
    parts = [common.section_header("B8", True, [info["command"]], load0, common.load_avg(), time.perf_counter() - t0)]
    if info["synthetic"]:
        parts.append(f"\n**Data: the synthetic stand-in, not real cells.** `python -m calib_seg.synth dots --out DIR "
                     f"--n {STAND_IN_ARGS['n']} --size {STAND_IN_ARGS['size']} --seed {STAND_IN_ARGS['seed']}` "
                     f"(simulated fluorescence cells, {info['count_min']}..{info['count_max']} per image, mean "
                     f"{info['count_mean']:.1f}; `calib_seg.data.simulators.cells`). Its numbers are not comparable "
                     "with the literature's on the real set.\n")
    else:
        parts.append(f"\nData: `{info['data']}` ({info['n_images']} images, {info['count_min']}..{info['count_max']} "
                     f"objects per image, mean {info['count_mean']:.1f}).\n")
    parts.append(
        f"\nProtocol: images sorted by name, first {info['n_pool']} = training pool, last {info['n_test']} = fixed "
        f"test set; per N, {info['draws']} draws of N distinct pool images (seeded by seed, N, draw). Each run: "
        f"`data=point_folder` on symlinks (`train/` = the N images, `test/` = the test half; no `val/`, so "
        f"round({VAL_FRACTION} x N) whole training images are held out for validation and checkpoint choice), "
        f"`model=density_map` (filters [8,16,32], sigma 1 px), random {info['settings']['crop']} px crops, batch "
        f"{info['settings']['batch']}, {info['settings']['steps_note']}, validation about 50 times per run, no early "
        f"stopping and no guard (both would judge R² on those few images), test on the checkpoint with the "
        f"best validation count MAE (`optimized_metric=val/mae`), `torch_threads=1`, seed = "
        f"{info['settings']['seed']} + draw. MAE/RMSE: per-image count error on the test half (objects per image); loc F1: map peaks matched to dots within 2 px. Baseline: every "
        f"test image predicted as the mean count of that draw's N training images.\n")
    header = ["N", "draws", "epochs", "count MAE", "count RMSE", "loc F1", "baseline MAE (mean count)",
              "wall s / run"]
    table = [[s["n"], s["draws"] if not s["not_completed"] else f"{s['draws']} (+{s['not_completed']} not completed)",
              s["epochs"], _pm(s["count_mae"]), _pm(s["count_rmse"]), _pm(s["loc_f1"], 3), _pm(s["baseline_mae"]),
              round(s["wall_s"], 1)] for s in summary]
    parts.append(common.md_table(header, table))
    parts.append("\nPer draw (count MAE / baseline MAE):\n")
    parts.append(common.md_table(["N", *[f"draw {d}" for d in range(info["draws"])]],
                                 [[s["n"], *[f"{m:.2f} / {b:.2f}" if m is not None else f"n/a / {b:.2f}"
                                             for _, m, b in s["per_draw"]]] for s in summary]))
    parts.append(f"\nSummed run wall time {wall / 60:.1f} min ({len(rows)} runs; load average at the end of each run "
                 "in `results.json`).\n")
    parts.append("\nLiterature, **real** synthetic-cells set (VGG, 200 images, same protocol), test MAE at N = 32, "
                 "for reference only" + (" (not comparable with the stand-in above)" if info["synthetic"] else "")
                 + ":\n")
    parts.append(common.md_table(["method", "MAE at N=32"], LITERATURE_N32))
    figures = {"data": info, "summary": summary, "runs": rows, "literature_n32": LITERATURE_N32,
               "command": info["command"], "quick": True}
    common.write_section("B8", figures, "\n".join(parts))


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="flat dot folder (images/ + dots/); default: the synthetic stand-in in _work/")
    ap.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N), help="training images per draw")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of every run (default: enough for --steps optimizer steps at each N)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per run without --epochs")
    ap.add_argument("--crop", type=int, default=CROP, help="training crop side, px")
    ap.add_argument("--batch", type=int, default=BATCH, help="training crops per batch")
    ap.add_argument("--seed", type=int, default=0, help="seeds the draws (and the runs: seed + draw)")
    ap.add_argument("--render", action="store_true", help="only re-render the section from the cached runs")
    ap.add_argument("--quick", action="store_true", help="(the sizes are CPU sizes either way)")
    ap.add_argument("overrides", nargs="*", help="extra train overrides, e.g. task.optimizer.lr=1e-3")
    args = ap.parse_args()
    load0, t0 = common.load_avg(), time.perf_counter()
    common.WORK.mkdir(parents=True, exist_ok=True)
    root = (args.data or stand_in()).resolve()
    stems = list_stems(root)
    pool, test = split_pool_test(stems)
    counts = read_counts(root, stems)
    tag = ("synth-" if args.data is None else f"{root.name}-") + data_tag(root)
    c = np.array(list(counts.values()))
    info = {"data": str(root) if args.data else "synthetic stand-in", "synthetic": args.data is None,
            "tag": tag, "n_images": len(stems), "n_pool": len(pool), "n_test": len(test), "draws": args.draws,
            "count_min": int(c.min()), "count_max": int(c.max()), "count_mean": float(c.mean()),
            "command": common.command_line().replace(str(root), "DIR") if args.data else common.command_line()}
    base_settings = {"crop": args.crop, "batch": args.batch, "seed": args.seed, "extra": list(args.overrides)}
    todo = []
    for n in args.n:
        epochs = args.epochs or epochs_for(n, args.steps, args.batch)
        settings = {**base_settings, "epochs": epochs}
        for d in range(args.draws):
            todo.append((n, d, draw_training(pool, n, d, args.seed), settings))
    info["settings"] = {**base_settings, "steps_note": (f"{args.epochs} epochs" if args.epochs else
                                                         f">= {args.steps} optimizer steps (epochs per N below)")}
    keys = {run_key(tag, n, d, s) for n, d, _, s in todo}
    done = {r["key"]: r for r in cached()}
    for i, (n, d, train, settings) in enumerate(todo):
        if args.render or run_key(tag, n, d, settings) in done:
            continue
        print(f"B8: N={n} draw {d + 1}/{args.draws} ({i + 1}/{len(todo)}), {settings['epochs']} epochs, "
              f"elapsed {time.perf_counter() - t0:.0f} s, load {common.load_avg()}", flush=True)
        row = run_one(root, tag, n, d, train, test, counts, settings)
        with CACHE.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[row["key"]] = row
        print(f"B8: N={n} draw {d + 1}: {row['status']}, count MAE {row['count_mae']}, baseline "
              f"{row['baseline_mae']:.2f}, {row['wall_s']:.0f} s", flush=True)
        render([done[k] for k in keys if k in done], args.n, info, load0, t0)
    render([done[k] for k in keys if k in done], args.n, info, load0, t0)
    print(common.RESULTS_MD.read_text().split(f"## {common.SECTION_TITLES['B8']}")[1].split("\n## ")[0])
    print(f"B8: done in {time.perf_counter() - t0:.0f} s (load {common.load_avg()}; pid {os.getpid()})")


if __name__ == "__main__":
    main()
