"""B2 segmentation quality: the three U-Nets vs Otsu threshold + morphology vs all-foreground.

Data: synthetic EM (``data=mito_synth``: 8 train / 2 val / 2 test whole 512x512 images) and the shared real
Lucchi slices (``data=mito_folder`` on ``../shared/data/lucchi_train``: train/ = 3 slices, one of them held out
whole for validation, test/ = slice 124, 768x1024). Models are trained with ``calib_seg.train.run`` and tested
on whole test images (tiled as the preset says); metrics are the run record's ``test/jaccard``/``test/dice``
(torchmetrics, foreground, threshold 0.5 on sigmoid probabilities, pixels pooled over the test set).
Otsu: per-image Otsu threshold after optional Gaussian smoothing, then opening + closing with a disk; polarity,
smoothing and radius tuned on the training images only. All-foreground: Jaccard = foreground fraction.

Quick (CPU): ``experiment=mito_quick`` (16 base filters, 128 px patches) with fewer epochs and patches.
Full (GPU): ``experiment=mito_<model>`` presets (64 base filters, 256 px patches, 50 epochs).

    .venv/bin/python benchmarks/b2_seg_quality.py --quick
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np
from classical import OtsuSegmenter, jaccard_dice

MODELS = ("unet", "attention_unet", "attention_resunet")


def overrides(model: str, dataset: str, quick: bool, epochs: int | None, patches: int | None) -> list[str]:
    if quick:
        ov = ["experiment=mito_quick", f"model={model}"]
    else:
        ov = [f"experiment=mito_{model}"]
    if dataset == "lucchi":
        ov += ["data=mito_folder", f"data.source.root={common.LUCCHI}"]
        if quick:
            ov += ["data.patch_size=128", "task.tile_size=128", "task.tile_overlap=32"]
    else:
        ov += ["data=mito_synth"] if not quick else []
        if not quick:
            ov += ["data.patch_size=256", "task.tile_size=256"]
    if epochs:
        ov.append(f"trainer.max_epochs={epochs}")
    if patches:
        ov.append(f"data.patches_per_epoch={patches}")
    return ov + ["trainer.enable_progress_bar=false"]


def baselines(ov: list[str]) -> dict:
    from hydra.utils import instantiate

    cfg = common.compose_run_cfg(ov, common.WORK / "scratch")
    source = instantiate(cfg.data.source)
    tr, te = source.split("train"), source.split("test")
    unit = lambda a: np.asarray(a, np.float64) / (255.0 if np.asarray(a).dtype == np.uint8 else 1.0)  # noqa: E731
    tr_img, tr_msk = [unit(tr.images[i]) for i in range(len(tr))], [np.asarray(tr.masks[i]) > 0 for i in range(len(tr))]
    te_img, te_msk = [unit(te.images[i]) for i in range(len(te))], [np.asarray(te.masks[i]) > 0 for i in range(len(te))]
    otsu = OtsuSegmenter().fit(tr_img, tr_msk)
    pred = np.concatenate([otsu.predict(im).ravel() for im in te_img])
    truth = np.concatenate([m.ravel() for m in te_msk])
    j, d = jaccard_dice(pred, truth)
    fj, fd = jaccard_dice(np.ones_like(truth), truth)
    return {"otsu": {"jaccard": j, "dice": d, "params": {"dark": otsu.dark, "radius": otsu.radius, "sigma": otsu.sigma}},
            "all_foreground": {"jaccard": fj, "dice": fd}, "n_train_images": len(tr), "n_test_images": len(te),
            "test_shape": list(te.shapes()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="quick default 3")
    ap.add_argument("--patches", type=int, default=None, help="training patches per epoch (quick default 64)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--datasets", nargs="+", default=["synth", "lucchi"], choices=["synth", "lucchi"])
    args = ap.parse_args()
    epochs = args.epochs or (3 if args.quick else None)
    patches = args.patches or (64 if args.quick else None)
    load0, t0 = common.load_avg(), time.perf_counter()
    res: dict = {"datasets": {}}
    for ds in args.datasets:
        if ds == "lucchi" and not common.LUCCHI.is_dir():
            print(f"B2: {common.LUCCHI} absent, Lucchi skipped")
            continue
        entry = {"models": {}}
        entry["baselines"] = baselines(overrides("unet", ds, args.quick, epochs, patches))
        for m in args.models:
            ov = overrides(m, ds, args.quick, epochs, patches)
            print(f"B2: {ds} {m}: {' '.join(ov)}", flush=True)
            t1 = time.perf_counter()
            rec = common.run_training(ov, f"b2_{ds}_{m}")
            tm = rec.get("test_metrics") or {}
            entry["models"][m] = {"status": rec["status"], "reason": rec.get("reason"),
                                  "jaccard": tm.get("test/jaccard"), "dice": tm.get("test/dice"),
                                  "jaccard_all_foreground": tm.get("test/jaccard_all_foreground"),
                                  "best_val_jaccard": rec.get("best_val"), "epochs": rec.get("epochs"),
                                  "params": rec.get("params"), "wall_s": time.perf_counter() - t1, "overrides": ov}
        res["datasets"][ds] = entry
    res["jaccard_synth"] = {m: v["jaccard"] for m, v in res["datasets"].get("synth", {}).get("models", {}).items()}
    res["jaccard_lucchi"] = {m: v["jaccard"] for m, v in res["datasets"].get("lucchi", {}).get("models", {}).items()}
    for ds in res["datasets"]:
        b = res["datasets"][ds]["baselines"]
        res[f"jaccard_otsu_{ds}"] = b["otsu"]["jaccard"]
        res[f"jaccard_all_foreground_{ds}"] = b["all_foreground"]["jaccard"]
    res.update({"quick": args.quick, "command": common.command_line(), "load_avg_start": load0})
    load1 = common.load_avg()
    res["load_avg_end"] = load1
    parts = [common.section_header("B2", args.quick, [res["command"]], load0, load1, time.perf_counter() - t0)]
    for ds, e in res["datasets"].items():
        b = e["baselines"]
        parts.append(f"\n### {ds}: {b['n_train_images']} training images (validation images held out separately), "
                     f"{b['n_test_images']} test image(s) of {b['test_shape'][0]}x{b['test_shape'][1]}\n")
        rows = [[m, v["jaccard"], v["dice"], v["epochs"], v["params"], v["status"]] for m, v in e["models"].items()]
        rows += [["Otsu + morphology", b["otsu"]["jaccard"], b["otsu"]["dice"], "-", 0, f"tuned on train: {b['otsu']['params']}"],
                 ["all-foreground", b["all_foreground"]["jaccard"], b["all_foreground"]["dice"], "-", 0, "trivial"]]
        parts.append(common.md_table(["method", "test Jaccard (fg)", "test Dice (fg)", "epochs", "params", "status / note"], rows))
        ov = next(iter(e["models"].values()))["overrides"] if e["models"] else []
        parts.append(f"\nOverrides (unet shown; `model=` differs): `{common.shown(' '.join(ov))}`")
    if args.quick:
        parts.append("\nQuick size: a few epochs of 128 px patches with 16 base filters on 2 shared CPU cores; "
                     "these are not the models' converged quality (the full presets train 50 epochs at 64 "
                     "filters on 256 px patches), only an end-to-end measurement against the baselines.")
    common.write_section("B2", res, "\n".join(parts))
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
