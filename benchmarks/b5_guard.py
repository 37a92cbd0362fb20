"""B5 guard: every reproduction stopped at epoch <= 1, and no healthy run aborted (guard + pre-flight on).

Two parts, each run with ``calib_seg.train.run`` and the default callbacks (guard and pre-flight on):

- **reproductions** (``conf/experiment/repro_*.yaml``: the CPU-size presets and the ``*_literal`` ones at the
  seed's batch and step counts): the run record's ``aborted_epoch`` is the figure, compared with the seed's 50
  epochs x 4 runs; the guard's own cost is the pre-flight's wall time and the per-epoch check's.
- **false aborts**: every healthy configuration (C01..C04 and the three architecture presets, each at the CPU
  batch and at the seed's literal batch; ``mito_quick`` with each network on the 4-slice Lucchi folder as the
  README runs it, the 42-slice Lucchi volume and synthetic EM) at 3 seeds, each trained exactly to the epoch by
  which every epoch rule has had its first chance to fire (:func:`epochs_to_judge`). Columns: aborted?, at which
  check/epoch, probe loss ratio, final metric.

Runs are cached one JSON line each in ``_work/b5_runs.jsonl`` and the section is re-rendered after every row, so
an interrupted benchmark keeps its finished rows (``--render`` only renders; rows not run are listed as such).
Groups run in this order: ``repro``, ``seed1`` (every configuration once: real EM before its synthetic
duplicate, cheap before expensive), ``seeds23``. One run at a time (the machine's cores are shared).

    CALIB_SEG_SHARED=/path/to/shared .venv/bin/python benchmarks/b5_guard.py --groups repro seed1 seeds23
    .venv/bin/python benchmarks/b5_guard.py --only "C04 batch 96 seed 42"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import b5_probe
import common

from calib_seg.callbacks.guard import GuardRules

SEED_EPOCHS, SEED_RUNS = 50, 4
CACHE = common.WORK / "b5_runs.jsonl"
LUCCHI42 = common.SHARED / "data" / "lucchi_epfl_train"
SEEDS = (42, 1, 2)  # 42 = the default seed (the README's runs)

#: the seed's image count (11 dilutions x 35, 275 training images) at CPU size: 64 px at 8 um/px, same FOV
BEADS = ["data=beads_synth", "data.source.n_per_level=35", "data.source.physics.image_size=64",
         "data.source.physics.pixel_size_um=8.0", "data.source.physics.psf_sigma_um=4.0"]
N_TRAIN_BEADS = 275
#: the seed's batch per configuration; the architecture study's batch is not in the report: 256
LITERAL_BATCH = {"C01": 256, "C02": 192, "C03": 128, "C04": 96, "arch_baseline_shallow": 256,
                 "arch_baseline_deep": 256, "arch_resnet_deep": 256}
CPU_BATCH = 32
#: mito: 80 patches at batch 8 = 10 optimizer steps per epoch (the preset's 256 = 32 steps): the epoch rules
#: then judge the run after 50 steps at epoch 5, earlier in its training than the preset's epoch 5 (160 steps)
MITO = ["experiment=mito_quick", "data.patches_per_epoch=80"]
MITO_STEPS = 80 // 8
NETS = {"unet": [], "attention_unet": ["model=attention_unet"], "attention_resunet": ["model=attention_resunet"]}
LUCCHI4 = ["data=mito_folder", f"data.source.root={common.LUCCHI}"]  # as the README runs it (1 val, 1 test slice)
#: the 42-slice volume in its flat layout, split as the README does: contiguous blocks train|val|test
LUCCHI42_FLAT = ["data=mito_folder", f"data.source.root={LUCCHI42}", "data.source.val_fraction=0.15",
                 "data.source.test_fraction=0.1", "data.source.block=last"]


def epochs_to_judge(steps_per_epoch: int) -> int:
    """The epoch by which every epoch rule has had its first chance to fire, at ``steps_per_epoch`` steps.

    Rules 2-5 wait for ``min_steps`` optimizer steps; rule 2 for ``flat_patience`` epochs; rules 3-5 for
    ``grace_epochs`` (a run never clearly good is judged at once then: its streak already counts every earlier
    epoch); the relapse case needs one clearly good epoch and ``relapse_patience`` bad ones after it.
    """
    r = GuardRules()
    by_steps = -(-r.min_steps // steps_per_epoch)  # ceil
    return max(by_steps, r.flat_patience or 1, r.grace_epochs, r.relapse_patience + 1)


def density_steps(batch: int) -> int:
    """Optimizer steps per epoch of the bead loader (it drops a trailing partial batch in training)."""
    return N_TRAIN_BEADS // batch if N_TRAIN_BEADS > batch else 1


def lucchi42_folder() -> Path:
    """The 42-slice set in the folder layout, as symlinks (no copy): a contiguous block of 6 slices is val."""
    root = common.WORK / "lucchi42"
    names = sorted(p.name for p in (LUCCHI42 / "images").glob("*.png"))
    for split, part in (("train", names[:-6]), ("val", names[-6:])):
        for kind in ("images", "masks"):
            d = root / split / kind
            d.mkdir(parents=True, exist_ok=True)
            for n in part:
                if not (d / n).exists():
                    (d / n).symlink_to(LUCCHI42 / kind / n)
    return root


def healthy_configs() -> list[tuple[str, list[str], int, float]]:
    """(configuration, overrides, steps per epoch, rough cost rank) of every healthy configuration, seed aside."""
    out = []
    for net, ov in NETS.items():
        out.append((f"mito_quick {net} lucchi4", [*MITO, *ov, *LUCCHI4], MITO_STEPS, 1))
    for net, ov in NETS.items():
        out.append((f"mito_quick {net} lucchi42", [*MITO, *ov, *LUCCHI42_FLAT], MITO_STEPS, 2))
    # density, cheapest first (CPU seconds per epoch at 64 px grow with the filters: C01 < C02 < C03 < C04)
    cost = {"arch_baseline_shallow": 0.5, "C01": 1, "C02": 2.5, "C03": 6, "arch_baseline_deep": 9,
            "arch_resnet_deep": 9, "C04": 15}
    for p, b in LITERAL_BATCH.items():
        for batch in (CPU_BATCH, b):
            steps = density_steps(batch)
            out.append((f"{p} batch {batch}", [f"experiment={p}", *BEADS, f"data.batch_size={batch}"], steps,
                        cost[p] * epochs_to_judge(steps) / 11))
    for net, ov in NETS.items():
        out.append((f"mito_quick {net} synthetic", [*MITO, *ov], MITO_STEPS, 1.5))
    return out


def matrix() -> dict[str, list[tuple[str, list[str]]]]:
    """(row name, overrides) per group, in the order they are run (a cut budget loses the tail of each group).

    ``repro``: the reproductions. ``seed1``: every healthy configuration at the first seed, real EM before its
    synthetic duplicate and cheap before expensive; ``seeds23``: the other two seeds, in the same order.
    Every healthy row trains exactly :func:`epochs_to_judge` epochs at its steps per epoch.
    """
    common_ov = ["trainer.enable_progress_bar=false", "logger=none", "torch_threads=1"]
    repro = [(p.stem, [f"experiment={p.stem}"])
             for p in sorted((common.REPO / "conf" / "experiment").glob("repro_*.yaml")) if "base" not in p.stem]
    configs = sorted(healthy_configs(), key=lambda c: c[3] if c[3] > 3 else 0)  # stable: expensive ones last
    rows = {s: [(f"{name} seed {s}", [*ov, f"trainer.max_epochs={epochs_to_judge(steps)}", f"seed={s}"])
                for name, ov, steps, _ in configs] for s in SEEDS}
    groups = {"repro": repro, "seed1": rows[SEEDS[0]], "seeds23": rows[SEEDS[1]] + rows[SEEDS[2]],
              # the mito report's lr 1e-2 without the guard: does it end at the trivial level?
              "lr_too_high": [("mito_quick unet synthetic lr 1e-2, guard off",
                               [*MITO, "task.optimizer.lr=1e-2", "callbacks.guard=null", "trainer.max_epochs=8",
                                "test=false"])]}
    return {g: [(n, [*ov, *common_ov]) for n, ov in rows] for g, rows in groups.items()}


def summarise(group: str, name: str, overrides: list[str], rec: dict, wall: float) -> dict:
    """One cached row: outcome, the check that fired, probe ratio, final metric, times."""
    pf = rec.get("preflight") or {}
    metric = rec.get("optimized_metric") or ""
    test_key = metric.replace("val/", "test/")
    final = rec.get("metrics", {}).get(test_key)
    reason = rec.get("reason") or ""
    check = ("pre-flight" if "pre-flight" in reason else "final check" if "final check" in reason
             else reason.split(": ", 2)[1].split(" ")[0] if reason.count(": ") >= 1 and rec["status"] == "aborted"
             else None)
    return {"group": group, "name": name, "status": rec["status"], "aborted_epoch": rec.get("aborted_epoch"),
            "check": check, "reason": reason or None, "epochs": rec.get("epochs"),
            "probe_ratio": pf.get("probe_ratio"), "preflight_s": pf.get("seconds"),
            "probe": f"{pf['probe_steps']}x{pf['batch_size']}" if "probe_steps" in pf else None,
            "final_metric": (test_key, final) if final is not None else (metric, rec.get("best_val")),
            "best_val": rec.get("best_val"),
            "wall_s": wall, "time_per_epoch_s": rec.get("time_per_epoch_s"), "overrides": overrides,
            "load_avg": common.load_avg()}


def _planned() -> dict[str, tuple[int, int]]:
    """Healthy row name -> (optimizer steps per epoch, epochs it is trained: epochs_to_judge)."""
    return {f"{name} seed {s}": (steps, epochs_to_judge(steps)) for name, _, steps, _ in healthy_configs()
            for s in SEEDS}


def _probe_table(previous: dict) -> str | None:
    """The probe table: from b5_probe's cache when present, else the one results.json last stored."""
    if b5_probe.CACHE.exists():
        return b5_probe.table()
    return previous.get("probe_table_md")


def _shown(overrides: list[str]) -> str:
    """Overrides as a reader types them: the shared folder as ``../shared`` (beside the clone)."""
    return common.shown(" ".join(overrides))


def render(load0: list[float], t0: float) -> None:
    """Write the B5 section (results.json/md) from every cached row; rows not run yet are listed as such."""
    rows = [json.loads(line) for line in CACHE.read_text().splitlines()] if CACHE.exists() else []
    latest = {r["name"]: r for r in rows}  # a re-run row replaces the earlier one
    repro = [r for r in latest.values() if r["group"] == "repro"]
    planned = _planned()
    healthy = [latest[n] for n in planned if n in latest]  # matrix order
    other = [r for r in latest.values() if r["group"] == "lr_too_high"]
    previous = common.read_results().get("B5", {})
    parts = [common.section_header("B5", True, [common.command_line()], load0, common.load_avg(),
                                   time.perf_counter() - t0)]
    ran = [*repro, *healthy]
    if ran:
        parts.append(f"\nThe rows were run by several invocations (`--groups`, `--only`) and cached; their summed "
                     f"wall time is {sum(r['wall_s'] for r in ran) / 60:.0f} min (load average at the end of each "
                     f"row in `results.json`).\n")

    def f(x, d=3):
        return round(float(x), d) if isinstance(x, (int, float)) else None

    parts.append("\n### Reproductions (guard and pre-flight on)\n")
    parts.append(common.md_table(
        ["preset", "status", "stopped at epoch", "check", "probe loss ratio", "epochs saved of 50", "pre-flight s",
         "wall s"],
        [[r["name"], r["status"], r["aborted_epoch"], r["check"], f(r["probe_ratio"], 4),
          f"{SEED_EPOCHS - r['aborted_epoch']} ({(SEED_EPOCHS - r['aborted_epoch']) / SEED_EPOCHS:.0%})"
          if r["aborted_epoch"] is not None else "-", f(r["preflight_s"], 1), f(r["wall_s"], 1)] for r in repro]))
    stopped = [r for r in repro if r["aborted_epoch"] is not None and r["aborted_epoch"] <= 1]
    if repro:
        worst = max(r["wall_s"] for r in repro)
        spent = sum(r["aborted_epoch"] or 0 for r in stopped)
        parts.append(
            f"\n{len(stopped)} of {len(repro)} reproductions stopped at epoch <= 1 (all at epoch 0 by the pre-flight "
            f"here: {spent} epochs trained). Compute saved against the seed: it trained 4 runs x 50 epochs = "
            f"{SEED_RUNS * SEED_EPOCHS} epochs of a failed study; with the guard the same 4 runs cost 4 pre-flights "
            f"(the pre-flight itself {max(r['preflight_s'] for r in repro):.1f} s at most; a whole reproduction, "
            f"data simulation and set-up "
            f"included, {worst:.0f} s at most) and 0 of the {SEED_RUNS * SEED_EPOCHS} epochs: 100 % of the training "
            f"epochs saved. The `_literal` presets run the seed's batch 256 (C01) and 96 (C04) on its image count: "
            f"{density_steps(256)} and {density_steps(96)} optimizer steps per epoch here (the bead loader drops a "
            f"trailing partial batch; the seed's loader, which kept it, did 2 and 3).\n")
    r0 = GuardRules()
    parts.append("\n### False aborts: healthy runs (guard and pre-flight on)\n")
    parts.append(
        f"\nEvery healthy row trains exactly to the epoch by which every epoch rule has had its first chance to "
        f"fire (`epochs_to_judge`): rules 2-5 wait for `min_steps` ({r0.min_steps}) optimizer steps, the flat rule "
        f"for `flat_patience` ({r0.flat_patience}) epochs, the streak rules for `grace_epochs` ({r0.grace_epochs}) "
        f"(a run never clearly good is judged at once then, its streak counts every earlier epoch), and the relapse "
        f"case needs one clearly good epoch and `relapse_patience` ({r0.relapse_patience}) bad ones after it, so "
        f"epochs = max(ceil({r0.min_steps} / steps per epoch), {r0.relapse_patience + 1}): "
        f"{epochs_to_judge(MITO_STEPS)} epochs at 8-10 steps per epoch, {epochs_to_judge(2)} at 2, "
        f"{epochs_to_judge(1)} at 1. A row that early stopping ended sooner shows fewer epochs run; at 1 step per "
        f"epoch (batch 256 and 192) `min_steps` is reached only at epoch {epochs_to_judge(1)}, so a run that early "
        f"stopping ends before is judged by the pre-flight and the final check alone. "
        f"Density rows: seed-count beads at CPU size (`{' '.join(BEADS)}`, {N_TRAIN_BEADS} training images), "
        f"the preset at batch {CPU_BATCH} and at the seed's literal batch; final metric test R² (the final check "
        f"runs on it). Mito rows: `{' '.join(MITO)}` ({MITO_STEPS} steps per epoch instead of the preset's 32: at "
        f"epoch 5, where the rules start, the run has had 50 steps, not 160, so this is the harder case for the "
        f"guard); lucchi4 = `{_shown(LUCCHI4)}` (the README's real-data command: of the 3 slices in `train/`, "
        f"2 train and 1 is held out whole for validation; the `test/` slice is the test); lucchi42 = "
        f"`{_shown(LUCCHI42_FLAT)}` (32 train | 6 val | 4 test "
        f"slices, contiguous blocks in name order); synthetic = `data=mito_synth`. Final metric test Jaccard at "
        f"threshold "
        f"0.5. Seeds {', '.join(map(str, SEEDS))} (`seed=`; 42 is the default). One run at a time, "
        f"`torch_threads=1`, on 2 cores shared with other work (load average per row in `results.json`).\n\n")
    parts.append(common.md_table(
        ["run", "status", "aborted?", "check / epoch", "steps / epoch", "epochs run / planned", "probe loss ratio",
         "final metric", "best val", "pre-flight s", "s / epoch", "load (1 min)"],
        [[r["name"], r["status"], "yes" if r["status"] == "aborted" else "no",
          f"{r['check']} / {r['aborted_epoch']}" if r["status"] == "aborted" else "-", planned[r["name"]][0],
          f"{r['epochs']} / {planned[r['name']][1]}", f(r["probe_ratio"]),
          f"{r['final_metric'][0]} {f(r['final_metric'][1])}", f(r.get("best_val")), f(r["preflight_s"], 1),
          f(r["time_per_epoch_s"], 1), (r.get("load_avg") or ["-"])[0]] for r in healthy]))
    # the final check stops nothing: it judges a run that trained to its end, so it is no false abort
    n_false = sum(r["status"] == "aborted" and r["check"] != "final check" for r in healthy)
    missing = [n for n in planned if n not in latest]
    weak = [r for r in healthy if r["final_metric"][1] is not None and "r2" in r["final_metric"][0]
            and r["final_metric"][1] < 0.1]
    if weak:
        parts.append("\nEnded without having learned (early stopping ended them before `min_steps`; the final check, "
                     "which judges a run after its last epoch and stops nothing, records a test R² below "
                     f"{r0.final_r2_min:g} as aborted): "
                     + "; ".join(f"{r['name']} (test R² {r['final_metric'][1]:.4f} after {r['epochs']} epochs of "
                                 f"{planned[r['name']][0]} step, {r['status']})" for r in weak)
                     + ". At 1 optimizer step per epoch val R² stayed ~0 while the training loss fell (BatchNorm "
                     "running statistics lag, see docs/guard.md).\n")
    parts.append(f"\n{n_false} false aborts in {len(healthy)} healthy runs ({len(healthy)} of the {len(planned)} "
                 f"planned rows ran; a final-check verdict on a run that trained to its end is not counted as one).\n")
    if missing:
        by_config: dict[str, list[str]] = {}
        for n in missing:
            config, seed = n.rsplit(" seed ", 1)
            by_config.setdefault(config, []).append(seed)
        parts.append("\nNot run (the benchmark's compute budget, ~100 min on the shared 2 cores, ran out first; "
                     "`--only \"<run>\"` runs one): " + "; ".join(f"{c} (seed {', '.join(s)})"
                                                         for c, s in by_config.items()) + ".\n")
    redone = [r for r in rows if r["name"] in latest and r is not latest[r["name"]] and r["status"] == "aborted"
              and r["group"] not in ("repro", "lr_too_high")]
    if redone:
        parts.append("\nRe-run after a rule change (the earlier attempt, kept in `results.json` as `superseded`, "
                     "was a false abort):\n\n" + "\n".join(f"- {r['name']}: {r['reason']}" for r in redone) + "\n")
    if other:
        parts.append("\n### Not a reproduction unless it ends trivial\n")
        parts.append(common.md_table(["run", "status", "epochs", "final metric", "measured on"],
                                     [[r["name"], r["status"], r["epochs"],
                                       f"{r['final_metric'][0]} {f(r['final_metric'][1])}",
                                       r.get("measured_before", "this code")] for r in other]))
    probe_md = _probe_table(previous)
    if probe_md:
        parts.append("\n" + probe_md)
    reasons = [r for r in [*repro, *healthy] if r["reason"]]
    if reasons:
        parts.append("\nReasons:\n\n" + "\n".join(f"- {r['name']}: {r['reason']}" for r in reasons))
    figures = {"runs": list(latest.values()), "superseded": redone, "seed_epochs": SEED_EPOCHS, "seed_runs": SEED_RUNS,
               "false_aborts": n_false, "healthy_runs": len(healthy), "not_run": missing, "quick": True,
               "probe_table_md": probe_md, "command": common.command_line()}
    common.write_section("B5", figures, "\n".join(parts))


def seed_cache() -> None:
    """A fresh clone has no cache (``_work/`` is git-ignored): start it from the rows results.json holds, so new
    rows extend the recorded table instead of replacing it."""
    if CACHE.exists():
        return
    rows = common.read_results().get("B5", {}).get("runs", [])
    if rows:
        CACHE.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"B5: cache started from the {len(rows)} rows in {common.RESULTS_JSON.name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="(the sizes are CPU sizes either way)")
    ap.add_argument("--groups", nargs="*", default=None,
                    help="repro seed1 seeds23 (the default, in this order); lr_too_high (guard off, not a guard row)")
    ap.add_argument("--only", nargs="*", default=None, help="row names to (re)run")
    ap.add_argument("--render", action="store_true", help="only re-render the section from the cached runs")
    ap.add_argument("--missing", action="store_true", help="skip rows already cached")
    args = ap.parse_args()
    load0, t0 = common.load_avg(), time.perf_counter()
    common.WORK.mkdir(parents=True, exist_ok=True)
    seed_cache()  # before --render too: rendering an empty cache would drop the recorded rows
    if not args.render:
        todo = matrix()
        done = {json.loads(line)["name"] for line in CACHE.read_text().splitlines()} if CACHE.exists() else set()
        for group in args.groups or (list(todo) if args.only else ["repro", "seed1", "seeds23"]):
            for name, ov in todo[group]:
                if (args.only and name not in args.only) or (args.missing and name in done):
                    continue
                print(f"B5: {name}", flush=True)
                s = time.perf_counter()
                rec = common.run_training(ov, "b5_" + name.replace(" ", "_").replace(",", ""))
                with CACHE.open("a") as fh:
                    fh.write(json.dumps(summarise(group, name, ov, rec, time.perf_counter() - s)) + "\n")
                render(load0, t0)
    render(load0, t0)
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
