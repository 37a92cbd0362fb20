"""Write the domain-shifted bead series of docs/density_map.md "Image-level labels and fine-tuning" (labelled by
dilution only: no centres.csv), then train on it with image-level supervision:

    .venv/bin/python benchmarks/finetune_series.py --out /tmp/series
    .venv/bin/python -m calib_seg.train model=density_map data=beads_folder data.source.root=/tmp/series \\
        init_from=RUN trainer.max_epochs=15 task.optimizer.lr=1e-3 torch_threads=1 callbacks.guard.r2_min=null \\
        callbacks.guard.final_r2_min=null

Dimmer beads (absorbance 0.8 instead of 1.2), a darker background (0.5 instead of 0.7) and twice the debris of
``data=beads_synth``, same FOV and sampling (128 px at 4 um/px), 20 images per level, seed 11.
"""

from __future__ import annotations

import argparse

from calib_seg.data.sources.bead_folder import write_bead_folder
from calib_seg.data.sources.beads_synth import SyntheticBeads

PHYSICS = {"image_size": 128, "pixel_size_um": 4.0, "bead_diameter_um": 4.0, "psf_sigma_um": 2.0,
           "defocus_sigma_um": 0.5, "bead_absorbance": 0.8, "background_level": 0.5, "debris_density_per_mm2": 40.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="new folder to write (refused if it exists)")
    args = ap.parse_args()
    out = write_bead_folder(SyntheticBeads(n_per_level=20, seed=11, physics=PHYSICS), args.out)
    (out / "centres.csv").unlink()  # labelled by dilution only
    print(out)


if __name__ == "__main__":
    main()
