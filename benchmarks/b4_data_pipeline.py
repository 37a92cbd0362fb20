"""B4 data pipeline: samples/s the data side produces vs samples/s training consumes (goal: produce >= 5x consume).

Producers, each with the configured DataLoader settings (``num_workers`` from the data config; 0 on CPU):

- ``beads_synth`` loader: training batches of the DensityDataModule (images in memory, flips/rotations);
  plus the one-off simulation rate of the generator (images/s of ``render_beads``), paid once per run.
- ``beads_folder`` loader: the same, read from 16-bit TIFFs (written by ``write_bead_folder``) via
  ``data=beads_folder``; plus the folder read rate (images/s of ``BeadFolder.load``).
- ``mito_synth`` loader: random 128 px patches with the foreground rejection sampler and paired augmentation;
  plus the generator's rate (512x512 images/s).
- ``mito_folder`` loader on the shared Lucchi slices (PNG), same patch pipeline; plus PNG read rate.

Consumers: training steps (forward + backward + Adam step on a fixed in-memory batch, no data loading) of the
model each pipeline feeds, in samples/s: density CNN (CPU default) and the seed's C02 CNN; U-Net at the
mito_quick size. A producer is compared with its consumer; ratio = produce / consume.

    .venv/bin/python benchmarks/b4_data_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import shutil
import time

import common
import numpy as np
import torch
import torch.nn.functional as F


def loader_rate(dm, min_samples: int, max_s: float = 20.0) -> dict:
    """Samples/s of iterating the training DataLoader (first batch excluded: worker start-up)."""
    dm.setup("fit")
    n, t0, first = 0, None, None
    while True:
        for batch in dm.train_dataloader():
            b = len(batch["image"])
            if t0 is None:
                t0, first = time.perf_counter(), b
                continue
            n += b
            if n >= min_samples or time.perf_counter() - t0 > max_s:
                dt = time.perf_counter() - t0
                return {"samples_per_s": n / dt, "samples": n, "batch": first,
                        "num_workers": getattr(dm, "num_workers", None)}


def consume_rate(model: torch.nn.Module, batch: int, size: int, seg: bool, steps: int) -> dict:
    """Samples/s of training steps on a fixed batch (the consumer without any data loading)."""
    x = torch.rand(batch, 1, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float() if seg else torch.randn(batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out, y) if seg else F.mse_loss(out.reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"samples_per_s": steps * batch / dt, "batch": batch, "size": size, "steps": steps}


def main() -> None:
    from hydra.utils import instantiate

    from calib_seg.data.simulators.beads import render_beads
    from calib_seg.data.simulators.mito import generate_mito_image
    from calib_seg.data.sources.bead_folder import BeadFolder, write_bead_folder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    load0, t0 = common.load_avg(), time.perf_counter()
    q = args.quick
    scratch = common.WORK / "b4"
    res: dict = {"producers": {}, "consumers": {}, "pairs": {}}

    # --- beads: simulator rate, in-memory loader --------------------------------------------------------
    bead_ov = ["data.source.n_per_level=10"] if q else ["data=beads_seed", "data.source.n_per_level=10"]
    cfg = common.compose_run_cfg(bead_ov, scratch / "cfg")
    src = instantiate(cfg.data.source)
    rng = np.random.default_rng(0)
    levels = list(src.levels.items())
    with common.Timer() as t:
        for i in range(len(levels) * 2):
            dil, dens = levels[i % len(levels)]
            render_beads(rng, dens, dil, src.physics)
    res["producers"]["bead_simulator"] = {"samples_per_s": len(levels) * 2 / t.s, "image_px": src.physics.image_size,
                                          "note": "one-off: the whole set is simulated at setup, then served from memory"}
    dm = instantiate(cfg.data)
    res["producers"]["beads_synth_loader"] = {**loader_rate(dm, 256 if q else 1024), "image_px": src.physics.image_size}

    # --- beads folder: write TIFFs, read rate, loader ----------------------------------------------------
    folder = scratch / "bead_folder"
    shutil.rmtree(folder, ignore_errors=True)
    write_bead_folder(src, folder)
    with common.Timer() as t:
        beads = BeadFolder(folder).load()
    res["producers"]["bead_folder_read"] = {"samples_per_s": len(beads) / t.s, "image_px": int(beads.images.shape[-1])}
    cfg_f = common.compose_run_cfg(["data=beads_folder", f"data.source.root={folder}"], scratch / "cfg")
    res["producers"]["beads_folder_loader"] = loader_rate(instantiate(cfg_f.data), 256 if q else 1024)

    # --- mito synthetic: generator rate, patch loader ---------------------------------------------------
    mito_ov = ["experiment=mito_quick"] if q else ["experiment=mito_unet", "data=mito_synth", "data.patch_size=256"]
    cfg_m = common.compose_run_cfg(mito_ov, scratch / "cfg")
    rng = np.random.default_rng(0)
    with common.Timer() as t:
        for _ in range(2):
            generate_mito_image(512, 512, rng)
    res["producers"]["mito_generator"] = {"samples_per_s": 2 / t.s, "image_px": 512,
                                          "note": "one-off: split images are generated once, patches cut on the fly"}
    res["producers"]["mito_synth_loader"] = {**loader_rate(instantiate(cfg_m.data), 128 if q else 512),
                                             "patch_px": int(cfg_m.data.patch_size)}

    # --- Lucchi folder (PNG): read rate, patch loader ---------------------------------------------------
    if common.LUCCHI.is_dir():
        from calib_seg.data.sources.image_folder import FolderSource

        with common.Timer() as t:
            fs = FolderSource(common.LUCCHI)
        n_img = len(fs.split("train")) + len(fs.split("val")) + len(fs.split("test"))
        res["producers"]["lucchi_folder_read"] = {"samples_per_s": n_img / t.s, "image_px": "768x1024"}
        cfg_l = common.compose_run_cfg(mito_ov + ["data=mito_folder", f"data.source.root={common.LUCCHI}",
                                                  f"data.patch_size={cfg_m.data.patch_size}"], scratch / "cfg")
        res["producers"]["lucchi_folder_loader"] = {**loader_rate(instantiate(cfg_l.data), 128 if q else 512),
                                                    "patch_px": int(cfg_l.data.patch_size)}

    # --- consumers ----------------------------------------------------------------------------------------
    from calib_seg.models.density import DensityCNN
    from calib_seg.models.unet import UNet

    px = src.physics.image_size
    res["consumers"]["density_cnn_default"] = consume_rate(DensityCNN(filters=[8, 16, 32], convs_per_stage=1), 32, px,
                                                           False, 8 if q else 50)
    res["consumers"]["density_cnn_C02"] = consume_rate(DensityCNN(filters=[32, 64, 128], convs_per_stage=3),
                                                       32 if q else 192, px, False, 3 if q else 20)
    m = cfg_m.model
    res["consumers"]["unet_mito"] = consume_rate(UNet(base_filters=int(m.base_filters), depth=int(m.depth)),
                                                 int(cfg_m.data.batch_size), int(cfg_m.data.patch_size), True,
                                                 4 if q else 30)

    pairs = {"beads_synth_loader": "density_cnn_default", "beads_folder_loader": "density_cnn_default",
             "mito_synth_loader": "unet_mito", "lucchi_folder_loader": "unet_mito"}
    for p, c in pairs.items():
        if p in res["producers"]:
            for cc in ([c, "density_cnn_C02"] if c.startswith("density") else [c]):
                pr, co = res["producers"][p]["samples_per_s"], res["consumers"][cc]["samples_per_s"]
                res["pairs"][f"{p} -> {cc}"] = {"produce": pr, "consume": co, "ratio": pr / co, "met": pr / co >= 5}
    head = res["pairs"]["beads_synth_loader -> density_cnn_default"]
    res["produce_per_s"], res["consume_per_s"], res["ratio"] = head["produce"], head["consume"], head["ratio"]
    res["min_ratio"] = min(v["ratio"] for v in res["pairs"].values())
    res.update({"quick": q, "command": common.command_line(), "load_avg_start": load0})
    load1 = common.load_avg()
    res["load_avg_end"] = load1
    parts = [common.section_header("B4", q, [res["command"]], load0, load1, time.perf_counter() - t0)]
    parts.append(common.md_table(["producer", "samples/s", "details"],
                                 [[k, v["samples_per_s"], ", ".join(f"{a}={b}" for a, b in v.items() if a != "samples_per_s")]
                                  for k, v in res["producers"].items()]))
    parts.append("\n" + common.md_table(["consumer (train step, no data loading)", "samples/s", "batch", "size px"],
                                        [[k, v["samples_per_s"], v["batch"], v["size"]] for k, v in res["consumers"].items()]))
    parts.append("\n" + common.md_table(["loader -> consumer", "produce/s", "consume/s", "ratio", ">= 5x"],
                                        [[k, v["produce"], v["consume"], v["ratio"], "yes" if v["met"] else "**no**"]
                                         for k, v in res["pairs"].items()]))
    parts.append("\nBoth sides run on the same 2 shared cores, so on CPU the producer's time is also the "
                 "consumer's: the ratio says how small a share of each step data loading takes (1/ratio).")
    common.write_section("B4", res, "\n".join(parts))
    print(common.RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
