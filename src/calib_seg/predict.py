"""Apply a checkpoint to new images: ``python -m calib_seg.predict ckpt_path=... input=... output=...``.

- density: a CSV with one row per image (per frame for TIFF stacks): predicted beads/mm² and, when the pixel
  size is known, the implied bead count in the field of view (density x FOV area). A model sees beads at the
  pixel size it was trained at: an input at another pixel size is resampled (area-averaged, intensities kept)
  to the training pixel size first, and the console says so; the FOV area is always the input's own
  (its pixels x its pixel size). Images of another size than the training images are predicted (the CNN pools
  globally) with a warning, since that is outside what the model was validated on;
- density map (``model=density_map``): counts, densities, detected objects, optional map TIFFs and overlays
  (:mod:`calib_seg.predict_map`; large images tiled, overlapping map values averaged);
- segmentation: one mask per input (same shape; stacks stay stacks), optionally probability maps; images larger
  than the training patch are predicted in overlapping tiles (:func:`calib_seg.models.tiling.predict_tiled`).

Inputs follow the README's conversion rules (:mod:`calib_seg.data.images`). Normalisation travels in the
checkpoint (target transform, input statistics), so the only facts needed are the camera's: bit depth and pixel
size come from the input's ``dataset.json`` or, failing that, from the training data config.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from calib_seg import resolvers  # noqa: F401
from calib_seg.checkpoints import load_run_config, load_task
from calib_seg.cli import launch, quiet_known_noise
from calib_seg.errors import input_errors
from calib_seg.fileio import atomic_write_text, refuse_existing_output
from calib_seg.predict_io import (  # noqa: F401 - re-exported for callers of calib_seg.predict
    _progress,
    calibrate_rows,
    camera_facts,
    frames,
    input_files,
    known_labels,
    natural_key,
    pixel_note,
    predict_density,
    size_note,
    to_model_scale,
    training_scale,
    unit_frames,
)

log = logging.getLogger("calib_seg.predict")


def _cell(value: Any, column: str, base: Path | None) -> str:
    """One CSV cell: empty when unknown, the file relative to ``base``, counts as integers, 6 significant digits
    (8 in the label columns, which a calibration is recomputed from)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if column == "file" and base is not None:
        with contextlib.suppress(ValueError):
            return Path(value).resolve().relative_to(base.resolve()).as_posix()
    if column in ("implied_count_in_fov", "count") and isinstance(value, float):
        return str(round(value))  # an (expected) number of beads
    digits = 8 if column in ("nominal", "predicted") else 6  # the label columns are re-read for the calibration
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def write_density_csv(rows: list[dict[str, Any]], out: Path, base: Path | None = None) -> Path:
    """Write the density rows (empty cells for unknown values) atomically; labelled rows get the label columns.

    ``base``: the input folder; files are written relative to it (as the user named them, not absolute paths).
    """
    cols = ["file", "frame", "height", "width", "predicted_beads_per_mm2", "fov_area_mm2", "implied_count_in_fov"]
    if rows and all("nominal" in r for r in rows):  # the columns of test_predictions.csv
        cols += ["dilution", "nominal", "predicted", "count"]
    lines = [",".join(cols)] + [",".join(_cell(r[c], c, base) for c in cols) for r in rows]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ segmentation
def predict_probabilities(task: Any, image: np.ndarray, patch: int | None) -> np.ndarray:
    """Foreground probabilities of one [0, 1] image with its shape; tiled when larger than the training patch."""
    x = torch.from_numpy(image)[None, None].to(task.device)
    tile = task.hparams.get("tile_size") or patch
    old = task.hparams.get("tile_size")
    if tile and (image.shape[0] > tile or image.shape[1] > tile):
        task.hparams.tile_size = int(tile)  # the task's own tiled path (overlap, blending, pooling-grid alignment)
    try:
        with torch.no_grad():
            prob = task.predict_proba(x)
    finally:
        task.hparams.tile_size = old
    return prob[0, 0].float().cpu().numpy()


def predict_segmentation(task: Any, files: list[Path], out_dir: Path, patch: int | None, mask_format: str = "tif",
                         save_probabilities: bool = False, bit_depth: int | None = None) -> list[Path]:
    """Write ``<stem>_mask.<fmt>`` (uint8, 255 = foreground at the task's threshold) per input file."""
    import tifffile
    from PIL import Image

    if mask_format not in ("tif", "png"):
        raise ValueError(f"mask_format must be tif or png, got {mask_format!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = float(getattr(task, "threshold", 0.5))
    written = []
    for f in _progress(files, "segmenting"):
        probs = [predict_probabilities(task, image, patch) for image in unit_frames(f, bit_depth)]
        stack = np.stack(probs)
        masks = ((stack >= threshold) * 255).astype(np.uint8)
        if mask_format == "png" and len(masks) == 1:
            path = out_dir / f"{f.stem}_mask.png"
            Image.fromarray(masks[0]).save(path)
        else:
            path = out_dir / f"{f.stem}_mask.tif"
            tifffile.imwrite(path, masks if len(masks) > 1 else masks[0])
        written.append(path)
        if save_probabilities:
            tifffile.imwrite(out_dir / f"{f.stem}_prob.tif", stack if len(stack) > 1 else stack[0])
    return written


# ------------------------------------------------------------------------------------------------ entry
def predict(cfg: DictConfig) -> Path:
    """Run the prediction described by ``cfg``; return the CSV path (density) or the mask folder.

    Problems with what the user named (checkpoint, input, output) raise :class:`~calib_seg.errors.InputError`.
    """
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda") else "cpu"
    with input_errors():
        run_cfg = load_run_config(cfg.ckpt_path)
        task = load_task(cfg.ckpt_path, run_cfg).to(device)
        files = input_files(cfg.input)
        bit, pixel = camera_facts(cfg, run_cfg)
        out = Path(cfg.output)
        refuse_existing_output(out, bool(cfg.get("overwrite", False)), hint="choose a new output or pass overwrite=true")
    write = task.spec.resolve("prediction_writer")  # the task's descriptor names how its outputs are written
    return write(task, cfg, run_cfg, files, bit, pixel, out)


def write_segmentation_predictions(task: Any, cfg: DictConfig, run_cfg: DictConfig, files: list[Path],
                                   bit: int | None, pixel: float | None, out: Path) -> Path:
    """Masks (and optionally probabilities) of every input into the folder ``out``; returns ``out``."""
    patch = (run_cfg.get("data") or {}).get("patch_size")
    predict_segmentation(task, files, out, patch, cfg.get("mask_format", "tif"),
                         bool(cfg.get("save_probabilities", False)), bit)
    return out


def write_density_predictions(task: Any, cfg: DictConfig, run_cfg: DictConfig, files: list[Path],
                              bit: int | None, pixel: float | None, out: Path) -> Path:
    """The density CSV (``out`` or ``out/predictions.csv``), with the calibration verdict when labels are known."""
    csv_path = out if out.suffix.lower() == ".csv" else out / "predictions.csv"
    trained_pixel, trained_size = training_scale(run_cfg)
    scale, note = pixel_note(pixel, trained_pixel)
    rows = predict_density(task, files, bit, pixel, int(cfg.get("batch_size", 16)), scale)
    for text in (note, size_note(trained_size, scale, {(r["height"], r["width"]) for r in rows})):
        if text:
            log.warning(text)
    if known_labels(Path(cfg.input), rows):  # labels known: the calibration verdict, as for a test set
        from calib_seg.metrics.calibration import summary_text

        block = calibrate_rows(rows, cfg.get("calibration"))
        atomic_write_text(csv_path.with_name(f"{csv_path.stem}_calibration.json"),
                          json.dumps(block, indent=2) + "\n")
        print(summary_text(block), flush=True)
    inp = Path(cfg.input)
    return write_density_csv(rows, csv_path, inp if inp.is_dir() else inp.parent)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from calib_seg.lifecycle import clean_exit
    from calib_seg.validation import require

    quiet_known_noise()
    with clean_exit():  # bad config or input: one message + exit 2
        require(cfg, {"ckpt_path": "a checkpoint written by calib_seg.train (<run>/checkpoints/best-epochNNN.ckpt)",
                      "input": "an image, a folder of images or a TIFF stack",
                      "output": "a .csv file or a folder (density), a folder for the masks (segmentation)"})
        print(f"wrote {predict(cfg)}")


if __name__ == "__main__":
    launch(main, "predict")
