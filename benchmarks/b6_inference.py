"""B6 inference: images/s of ``calib_seg.predict`` and peak memory per model at the preset batch sizes.

- density: 512x512 16-bit TIFFs (simulated seed-scale images, 1 um/px) -> ``predict`` -> CSV, batch 16
  (``conf/predict.yaml``);
- segmentation: whole 768x1024 slices (the shared Lucchi PNGs, else synthetic) -> ``predict`` -> mask TIFFs,
  tiled as the preset says (tile = training patch, ``task.tile_batch_size`` tiles per pass).

Checkpoints come from a one-batch training run per model (weights do not matter for speed) in
``benchmarks/_work/b6``. Each model's prediction runs in a fresh subprocess so its peak memory is its own:
peak RSS (``ru_maxrss``) on CPU, ``torch.cuda.max_memory_allocated`` on GPU; the RSS after loading the
checkpoint and before predicting is reported beside it (the Python + torch baseline). Peak RSS is /proc's VmHWM,
reset after the warm-up image: ``ru_maxrss`` is inherited from the parent across fork+exec on Linux, so it
would report the benchmark process's own training peak.

    .venv/bin/python benchmarks/b6_inference.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

DENSITY_TRAIN = ["data=beads_seed", "data.source.n_per_level=7", "data.batch_size=8"]
QUICK = {
    "density_cnn (CPU default)": ("density", ["model.filters=[8,16,32]", "model.convs_per_stage=1"]),
    "density_cnn C02": ("density", ["experiment=C02"]),
    "unet (mito_quick)": ("seg", ["experiment=mito_quick", "model=unet"]),
    "attention_unet (mito_quick)": ("seg", ["experiment=mito_quick", "model=attention_unet"]),
    "attention_resunet (mito_quick)": ("seg", ["experiment=mito_quick", "model=attention_resunet"]),
}
FULL = {
    "density_cnn C02": ("density", ["experiment=C02"]),
    "ResNet_Deep": ("density", ["experiment=arch_resnet_deep"]),
    "unet (mito_unet)": ("seg", ["experiment=mito_unet", "data=mito_synth"]),
    "attention_unet (mito_attention_unet)": ("seg", ["experiment=mito_attention_unet", "data=mito_synth"]),
    "attention_resunet (mito_attention_resunet)": ("seg", ["experiment=mito_attention_resunet", "data=mito_synth"]),
}


def make_checkpoint(name: str, kind: str, ov: list[str]) -> str:
    """One training batch + one val batch, no test: just a real run folder with a checkpoint."""
    extra = (DENSITY_TRAIN if kind == "density" else
             ["data.source.n_train=2", "data.source.n_val=1", "data.source.n_test=1", "data.patches_per_epoch=8",
              "data.source.height=256", "data.source.width=256"])
    base = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "test=false",
            "logger=none", "trainer.enable_progress_bar=false", "callbacks.figures=null"]
    if kind == "seg" and any(o.startswith("experiment=mito_") and o != "experiment=mito_quick" for o in ov):
        extra = extra + ["data.patch_size=128"]
    rec = common.run_training(ov + extra + base, "b6_" + "".join(c if c.isalnum() else "_" for c in name))
    ckpts = sorted(Path(rec["run_dir"]).glob("checkpoints/*.ckpt"))
    if not ckpts:
        raise RuntimeError(f"B6: no checkpoint for {name}: {rec['status']} {rec.get('reason')}")
    return str(ckpts[-1])


def density_inputs(folder: Path, n: int) -> Path:
    """n simulated 512x512 16-bit TIFFs at 1 um/px (the seed's images), across the dilution series."""
    import numpy as np
    import tifffile

    from calib_seg.data.simulators.beads import BeadPhysics, dilution_series, render_beads

    if folder.is_dir() and len(list(folder.glob("*.tif"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    p = BeadPhysics(image_size=512, pixel_size_um=1.0, psf_sigma_um=0.8, defocus_sigma_um=0.3)
    rng = np.random.default_rng(0)
    levels = list(dilution_series().items())
    for i in range(n):
        dil, dens = levels[i % len(levels)]
        tifffile.imwrite(folder / f"{int(dil)}x_{i:03d}.tif", render_beads(rng, dens, dil, p).image)
    (folder / "dataset.json").write_text(json.dumps({"bit_depth": 12, "pixel_size_um": 1.0}))
    return folder


def seg_inputs(folder: Path) -> Path:
    """Whole 768x1024 slices: the shared Lucchi PNGs (all 4), else 4 synthetic slices."""
    if common.LUCCHI.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(common.LUCCHI.glob("*/images/*.png")):
            if not (folder / f.name).exists():
                shutil.copy(f, folder / f.name)
        return folder
    from calib_seg.data.sources.mito_synth import write_mito_folder

    write_mito_folder(folder.parent / "mito_synth", n_train=4, n_val=0, n_test=0, overwrite=True)
    return folder.parent / "mito_synth" / "train" / "images"


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MiB (/proc: VmHWM starts afresh at exec, unlike ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is the timed pass's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def predict_one(ckpt: str, inp: str, out: str) -> dict:
    """(subprocess) time calib_seg.predict on one checkpoint; peak memory of this process only."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from calib_seg.config import compose
    from calib_seg.predict import input_files, predict

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    GlobalHydra.instance().clear()
    cfg = compose([f"ckpt_path={ckpt}", f"input={inp}", f"output={out}"], config_name="predict")
    # warm-up on one image (first-call allocations, lazy imports), then the timed pass over all
    files = input_files(inp)
    import tempfile

    warm = Path(tempfile.mkdtemp(prefix="warm_", dir=common.WORK / "b6"))
    GlobalHydra.instance().clear()
    cfg_w = compose([f"ckpt_path={ckpt}", f"input={files[0]}", f"output={warm}"], config_name="predict")
    predict(cfg_w)
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    predict(cfg)
    dt = time.perf_counter() - t0
    return {"images": len(files), "seconds": dt, "images_per_s": len(files) / dt,
            "rss_after_warmup_mb": rss_before,
            "peak_rss_mb": _status_mb("VmHWM"), "peak_reset_after_warmup": reset,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-density", type=int, default=None, help="density images (quick 32, full 256)")
    ap.add_argument("--one", nargs=3, metavar=("CKPT", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("B6JSON " + json.dumps(predict_one(*args.one)), flush=True)
        return
    load0, t0 = common.load_avg(), time.perf_counter()
    work = common.WORK / "b6"
    n_density = args.n_density or (32 if args.quick else 256)
    dens_in = density_inputs(work / "density_in", n_density)
    seg_in = seg_inputs(work / "seg_in")
    models = QUICK if args.quick else FULL
    res: dict = {"models": {}}
    for name, (kind, ov) in models.items():
        print(f"B6: {name}", flush=True)
        ckpt = make_checkpoint(name, kind, ov)
        inp = dens_in if kind == "density" else seg_in
        slug = "".join(c if c.isalnum() else "_" for c in name) + time.strftime("_%H%M%S")
        out = work / "out" / (slug + ".csv" if kind == "density" else slug)
        proc = subprocess.run([sys.executable, __file__, "--one", ckpt, str(inp), str(out)], capture_output=True,
                              text=True, cwd=common.BENCH_DIR)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("B6JSON ")]
        if proc.returncode or not line:
            raise RuntimeError(f"B6 predict subprocess failed for {name}:\n{proc.stderr[-3000:]}")
        r = json.loads(line[0][7:])
        r.update({"kind": kind, "overrides": ov, "load_avg": common.load_avg(),
                  "command": f".venv/bin/python -m calib_seg.predict ckpt_path={ckpt} input={inp} output={out}"})
        res["models"][name] = r
        print(f"  {r['images_per_s']:.2f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    dens = [v for v in res["models"].values() if v["kind"] == "density"]
    seg = [v for v in res["models"].values() if v["kind"] == "seg"]
    res["density_img_per_s"] = dens[0]["images_per_s"]
    res["mito_slices_per_s"] = seg[0]["images_per_s"]
    res.update({"quick": args.quick, "command": common.command_line(), "load_avg_start": load0})
    load1 = common.load_avg()
    res["load_avg_end"] = load1
    parts = [common.section_header("B6", args.quick, [res["command"]], load0, load1, time.perf_counter() - t0)]
    rows = [[n, "512x512 density" if v["kind"] == "density" else "768x1024 slice", v["images"], v["images_per_s"],
             v["peak_rss_mb"], v["rss_after_warmup_mb"], v["peak_cuda_mb"], v["load_avg"][0]]
            for n, v in res["models"].items()]
    parts.append(common.md_table(["model", "input", "images", "images/s", "peak RSS MB (timed pass)", "RSS after warm-up MB",
                                  "peak CUDA MB", "load (1 min)"], rows))
    parts.append("\nDensity: `predict` batch 16 (conf/predict.yaml), files read from 16-bit TIFF. Segmentation: "
                 "whole slices through the task's tiled path (tile = training patch, 4 tiles per pass). Each "
                 "model ran in its own process (one warm-up image first); the per-model predict command is in "
                 "results.json (`B6.models.<model>.command`). Checkpoints come from one-batch runs: "
                 "speed and memory do not depend on the weights.")
    common.write_section("B6", res, "\n".join(parts))
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
