"""B5 pre-flight probe statistic: healthy runs across the grids' learning rates vs every reproduction.

The fit probe's limit must pass the slowest healthy configuration a sweep can draw (the lowest learning rate of
``conf/hparams_search/density_optuna.yaml``, 1e-4, and of ``hpo_mito.yaml``, 1e-4) and still stop every seed
failure. Each row runs the real entry point with the pre-flight alone (no training batch, no validation, no test),
``probe_steps`` = ``MAX_STEPS`` and the run's own probe batch, and records the probe's loss curve, so the ratio
``loss after K steps / loss before`` is read for every K <= ``MAX_STEPS`` from one probe. One run at a time,
``torch_threads=1``; rows are cached one JSON line each in ``_work/b5_probe.jsonl``.

    .venv/bin/python benchmarks/b5_probe.py                 # all rows (~20 min on 2 loaded cores)
    .venv/bin/python benchmarks/b5_probe.py --only "repro_relu_collapse"
    .venv/bin/python benchmarks/b5_guard.py --render        # puts the table into the B5 section

The table is rendered by :func:`table` into the B5 section of ``benchmarks/results.md`` (``b5_guard.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import common

CACHE = common.WORK / "b5_probe.jsonl"
MAX_STEPS = 30
#: the probe ratio read at these step counts (the configured ``probe_steps`` is one of them)
READ_AT = (5, 10, 15, 20, 30)
PROBE_ONLY = ["+trainer.limit_train_batches=0", "+trainer.limit_val_batches=0", "test=false",
              f"callbacks.guard.probe_steps={MAX_STEPS}", "trainer.enable_progress_bar=false", "logger=none",
              "torch_threads=1"]
#: the seed's image count at CPU size (as in b5_guard.BEADS)
BEADS = ["data=beads_synth", "data.source.n_per_level=35", "data.source.physics.image_size=64",
         "data.source.physics.pixel_size_um=8.0", "data.source.physics.psf_sigma_um=4.0"]
LUCCHI4 = ["data=mito_folder", f"data.source.root={common.LUCCHI}"]
MITO_NETS = {"unet": [], "attention_unet": ["model=attention_unet"],
             "attention_resunet": ["model=attention_resunet"]}


def rows() -> list[tuple[str, str, list[str]]]:
    """(name, healthy|failure, overrides), slowest-learning healthy configurations and the failures first."""
    out: list[tuple[str, str, list[str]]] = []
    for lr in ("1e-4", "3e-4", "1e-3", "1e-2"):  # density_optuna: log-uniform 1e-4..1e-2; 1e-3 = CPU default
        out.append((f"density CPU default lr {lr}", "healthy", [f"task.optimizer.lr={lr}"]))
    out.append(("density CPU default filters [8,16] lr 1e-4", "healthy",
                ["model.filters=[8,16]", "task.optimizer.lr=1e-4"]))
    for lr in ("1e-4", "3e-4"):  # C01 at its own 3e-4 was the slowest preset measured
        out.append((f"C01 seed-count beads lr {lr}", "healthy", ["experiment=C01", *BEADS, f"task.optimizer.lr={lr}"]))
    out.append(("arch_baseline_shallow seed-count beads", "healthy", ["experiment=arch_baseline_shallow", *BEADS]))
    for lr in ("1e-4", "5e-4", "1e-3", "5e-3"):  # hpo_mito: 5e-3, 1e-3, 5e-4, 1e-4
        out.append((f"mito_quick unet synthetic lr {lr}", "healthy",
                    ["experiment=mito_quick", f"task.optimizer.lr={lr}"]))
    for net in ("attention_unet", "attention_resunet"):
        out.append((f"mito_quick {net} synthetic lr 1e-4", "healthy",
                    ["experiment=mito_quick", *MITO_NETS[net], "task.optimizer.lr=1e-4"]))
    out.append(("mito_quick unet lucchi4 lr 1e-4", "healthy", ["experiment=mito_quick", *LUCCHI4,
                                                               "task.optimizer.lr=1e-4"]))
    out.append(("mito_quick unet lucchi4 lr 1e-3", "healthy", ["experiment=mito_quick", *LUCCHI4]))
    for p in sorted((common.REPO / "conf" / "experiment").glob("repro_*.yaml")):
        if p.stem != "repro_tiny_failure_base":
            out.append((p.stem, "failure", [f"experiment={p.stem}"]))
    for p in ("repro_relu_collapse", "repro_no_target_norm"):  # the grid's top lr does not rescue raw targets
        out.append((f"{p} lr 1e-2", "failure", [f"experiment={p}", "task.optimizer.lr=1e-2"]))
    out.append(("density CPU default lr 10 (diverges)", "failure", ["task.optimizer.lr=10"]))
    out.append(("mito_quick unet synthetic lr 1e-2", "other", ["experiment=mito_quick", "task.optimizer.lr=1e-2"]))
    # a cheaper probe (half the images): does the separation hold?
    four = ["callbacks.guard.probe_batch_size=4"]
    out += [(f"{n}, probe batch 4", k, [*ov, *four]) for n, k, ov in list(out)
            if n in SMALL_PROBE_ROWS]
    return out


#: rows re-measured with a 4-image probe: the slowest healthy ones of each task and every failure
SMALL_PROBE_ROWS = ("density CPU default filters [8,16] lr 1e-4", "C01 seed-count beads lr 1e-4",
                    "mito_quick unet synthetic lr 1e-4", "mito_quick attention_resunet synthetic lr 1e-4",
                    "mito_quick attention_unet synthetic lr 1e-4", "mito_quick unet lucchi4 lr 1e-4",
                    "repro_relu_collapse", "repro_no_target_norm", "repro_relu_collapse_literal",
                    "repro_no_target_norm_literal", "repro_no_target_norm lr 1e-2", "repro_relu_collapse lr 1e-2",
                    "density CPU default lr 10 (diverges)")


def summarise(name: str, kind: str, overrides: list[str], rec: dict, wall: float) -> dict:
    """One cached row: the probe's curve, ratios at READ_AT, the other checks' numbers and the verdict."""
    pf = rec.get("preflight") or {}
    curve = pf.get("loss_curve") or []
    ratios = {k: curve[k] / curve[0] for k in READ_AT if k < len(curve) and curve[0] > 0}
    return {"name": name, "kind": kind, "overrides": overrides, "ratios": ratios, "curve": curve,
            "clamp": [pf.get("clamp_fraction_initial"), pf.get("clamp_fraction_final")],
            "target_scale": pf.get("target_scale"), "plumbing_error": pf.get("plumbing_error"),
            "failed_at_30": pf.get("failed"), "preflight_s": pf.get("seconds"), "batch_s": pf.get("batch_seconds"),
            "batch_size": pf.get("batch_size"), "wall_s": wall, "load_avg": common.load_avg()}


def cached() -> dict[str, dict]:
    """The latest cached row per name."""
    lines = CACHE.read_text().splitlines() if CACHE.exists() else []
    return {r["name"]: r for r in map(json.loads, lines)}


def table() -> str:
    """Markdown: one row per configuration, probe ratio at each K, and what the other checks measured."""
    def f(x, d=3):
        return f"{x:.{d}g}" if isinstance(x, (int, float)) else "-"

    body = ["| configuration | kind | " + " | ".join(f"ratio @{k}" for k in READ_AT)
            + " | clamp (before/after) | target scale | probe s (batch s) | load (1 min) |",
            "|---|---|" + "---|" * len(READ_AT) + "---|---|---|---|"]
    for r in cached().values():
        ratios = [f(r["ratios"].get(str(k), r["ratios"].get(k)), 4) for k in READ_AT]
        clamp = "/".join(f(c, 2) for c in r["clamp"])
        body.append(f"| {r['name']} | {r['kind']} | " + " | ".join(ratios)
                    + f" | {clamp} | {f(r['target_scale'])} | {f(r['preflight_s'], 3)} ({f(r['batch_s'], 2)}) | "
                    f"{r['load_avg'][0] if r['load_avg'] else '-'} |")
    return "\n".join(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="row names to (re)run")
    ap.add_argument("--missing", action="store_true", help="only rows not cached yet")
    args = ap.parse_args()
    common.WORK.mkdir(parents=True, exist_ok=True)
    done = cached()
    for name, kind, ov in rows():
        if (args.only and name not in args.only) or (args.missing and name in done):
            continue
        print(f"B5 probe: {name}  load {common.load_avg()}", flush=True)
        s = time.perf_counter()
        rec = common.run_training([*ov, *PROBE_ONLY], "b5probe_" + name.replace(" ", "_"))
        with CACHE.open("a") as fh:
            fh.write(json.dumps(summarise(name, kind, ov, rec, time.perf_counter() - s)) + "\n")
    print(table())


if __name__ == "__main__":
    main()
