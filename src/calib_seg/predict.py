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
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from calib_seg import resolvers  # noqa: F401
from calib_seg.checkpoints import load_run_config, load_task, training_camera
from calib_seg.cli import launch, quiet_known_noise
from calib_seg.data.images import IMAGE_SUFFIXES, list_images, read_raw, to_unit_float
from calib_seg.errors import input_errors
from calib_seg.fileio import atomic_write_text, refuse_existing_output

log = logging.getLogger("calib_seg.predict")


# ------------------------------------------------------------------------------------------------ inputs
def natural_key(path: Path) -> list[Any]:
    """Sort key that orders numbers by value: ``50x_2.tif`` before ``50x_10.tif`` before ``100x_1.tif``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", path.name) if t]


def input_files(path: str | Path) -> list[Path]:
    """The image files of ``input``: the file itself, or a folder's images (also its ``images/`` sub-folder), in
    natural order (numbers by value)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_images(path)
        if not files and (path / "images").is_dir():
            files = list_images(path / "images")
        if not files:
            raise FileNotFoundError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return sorted(files, key=natural_key)
    raise FileNotFoundError(f"input {path} does not exist")


def frames(path: Path) -> list[np.ndarray]:
    """Raw 2-D frames of one file: one for an image, one per page of a grey TIFF stack."""
    arr = read_raw(path)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        return [arr[i] for i in range(arr.shape[0])]
    return [arr]


def unit_frames(path: Path, bit_depth: int | None) -> list[np.ndarray]:
    """The [0, 1] float frames of one input file; an unreadable or unconvertible file is an InputError."""
    with input_errors():
        return [to_unit_float(raw, f"{path} frame {i}", bit_depth) for i, raw in enumerate(frames(path))]


def camera_facts(cfg: DictConfig, run_cfg: DictConfig) -> tuple[int | None, float | None]:
    """(bit depth, pixel size µm): explicit config, else the input's dataset.json, else the training data's."""
    bit, pixel = cfg.get("bit_depth"), cfg.get("pixel_size_um")
    inp = Path(cfg.input)
    for folder in ([inp] if inp.is_dir() else []) + [inp.parent, inp.parent.parent]:
        facts_path = folder / "dataset.json"
        if facts_path.exists():
            facts = json.loads(facts_path.read_text())
            bit = bit or facts.get("bit_depth")
            pixel = pixel or facts.get("pixel_size_um")
            break
    trained_bit, trained_pixel = training_camera(run_cfg)
    bit, pixel = bit or trained_bit, pixel or trained_pixel
    return (int(bit) if bit else None), (float(pixel) if pixel else None)


def _progress(items: list[Any], what: str) -> Iterator[Any]:
    if len(items) < 20:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=what)


# ------------------------------------------------------------------------------------------------ density
def training_scale(run_cfg: DictConfig) -> tuple[float | None, int | None]:
    """(pixel size µm, image side px) of the training images as the run config states them (None if unknown)."""
    _, pixel = training_camera(run_cfg)
    size = (((run_cfg.get("data") or {}).get("source") or {}).get("physics") or {}).get("image_size")
    if size is None and "SyntheticBeads" in str(((run_cfg.get("data") or {}).get("source") or {}).get("_target_")):
        from calib_seg.data.simulators.beads import BeadPhysics

        size = BeadPhysics().image_size
    return pixel, (int(size) if size else None)


def to_model_scale(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resampled by ``factor`` (input pixel size / training pixel size), area-averaged when shrinking."""
    if abs(factor - 1.0) < 1e-6:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    size = [max(1, round(n * factor)) for n in image.shape]
    if factor < 1:  # each model pixel is the mean of the input pixels it covers
        y = torch.nn.functional.interpolate(x, size=size, mode="area")
    else:
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y[0, 0].numpy()


def pixel_note(pixel_size_um: float | None, trained_pixel: float | None) -> tuple[float, str | None]:
    """(resampling factor, what the user must be told) for inputs at ``pixel_size_um`` and the training pixel size."""
    if pixel_size_um and trained_pixel and abs(pixel_size_um / trained_pixel - 1) > 1e-3:
        factor = pixel_size_um / trained_pixel
        return factor, (f"inputs at {pixel_size_um:g} um/px are resampled by {factor:g} to the model's "
                        f"{trained_pixel:g} um/px before predicting (FOV areas use the inputs' own pixel size)")
    if not pixel_size_um:
        return 1.0, ("pixel size unknown (no pixel_size_um, dataset.json or training pixel size): inputs are used "
                     "as they are and no FOV area or implied count is given")
    return 1.0, None


def size_note(trained_size: int | None, factor: float, shapes: set[tuple[int, int]]) -> str | None:
    """A warning when images (at the model's scale) differ from the training images' size, else None."""
    odd = sorted({tuple(round(n * factor) for n in s) for s in shapes} - {(trained_size, trained_size)})
    if not trained_size or not odd:
        return None
    sizes = ", ".join("x".join(map(str, s)) for s in odd)
    return (f"the model was trained on {trained_size}x{trained_size} px images; these are {sizes} px at the "
            "model's scale: predicted, but outside the image size it was validated on")


def predict_density(task: Any, files: list[Path], bit_depth: int | None, pixel_size_um: float | None,
                    batch_size: int = 16, scale: float = 1.0) -> list[dict[str, Any]]:
    """One row per image/frame: file, frame, predicted beads/mm², FOV area and implied count (None if unknown).

    ``scale``: the factor each image is resampled by before the model sees it (:func:`pixel_note`).
    """
    rows: list[dict[str, Any]] = []
    pending: list[tuple[Path, int, np.ndarray]] = []

    def flush() -> None:
        shapes = {a.shape for _, _, a in pending}
        groups = [[p for p in pending if p[2].shape == s] for s in shapes] if len(shapes) > 1 else [pending]
        for group in groups:
            x = torch.from_numpy(np.stack([to_model_scale(a, scale) for _, _, a in group]))[:, None].to(task.device)
            with torch.no_grad():
                pred = task(x).double().cpu().numpy().reshape(-1)
            for (f, i, a), d in zip(group, pred):
                area = a.shape[0] * a.shape[1] * (pixel_size_um * 1e-3) ** 2 if pixel_size_um else None
                rows.append({"file": str(f), "frame": i, "height": a.shape[0], "width": a.shape[1],
                             "predicted_beads_per_mm2": float(d), "fov_area_mm2": area,
                             "implied_count_in_fov": float(d) * area if area else None})
        pending.clear()

    for f in _progress(files, "predicting densities"):
        for i, image in enumerate(unit_frames(f, bit_depth)):
            pending.append((f, i, image))
            if len(pending) >= batch_size:
                flush()
    if pending:
        flush()
    return rows


def known_labels(inp: Path, rows: list[dict[str, Any]], predicted_key: str = "predicted_beads_per_mm2") -> bool:
    """Add ``dilution``, ``nominal``, ``predicted``, ``count`` to ``rows`` when ``inp`` is a labelled bead folder
    (``manifest.csv`` or names like ``50x_001.tif``, see :class:`~calib_seg.data.sources.bead_folder.BeadFolder`).

    ``predicted`` is copied from ``predicted_key``. Returns whether every row got a label (single-frame images
    only: a stack has no per-frame label).
    """
    from calib_seg.data.sources.bead_folder import BeadFolder

    if not inp.is_dir():
        return False
    try:
        labels = {Path(r["path"]).resolve(): r for r in BeadFolder(inp).labels()}
    except (ValueError, FileNotFoundError) as exc:  # unlabelled images: nothing to compare with
        log.info("no labels for %s (%s): predictions only", inp, exc)
        return False
    frames_per_file: dict[str, int] = {}
    for r in rows:
        frames_per_file[r["file"]] = frames_per_file.get(r["file"], 0) + 1
    if any(Path(r["file"]).resolve() not in labels or frames_per_file[r["file"]] > 1 for r in rows):
        return False
    for r in rows:
        lab = labels[Path(r["file"]).resolve()]
        r.update({"dilution": lab["dilution"], "nominal": lab["density"], "predicted": r[predicted_key],
                  "count": lab["count"]})
    return True


def calibrate_rows(rows: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """The calibration block of labelled prediction rows (the same table as a training run's test set)."""
    from calib_seg.metrics.predictions import calibration_of

    cols = {k: np.array([np.nan if r[k] is None else r[k] for r in rows], float)
            for k in ("dilution", "nominal", "predicted", "count")}
    areas = [r["fov_area_mm2"] for r in rows]
    area = None if any(a is None for a in areas) else np.array(areas, float)
    return calibration_of(cols, area, settings, split="predict")


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
