"""Prediction inputs and scales shared by ``calib_seg.predict`` and the density-map writer: input files and
frames, the training pixel scale, resampling, progress, and the label/calibration helpers."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from calib_seg import resolvers  # noqa: F401
from calib_seg.checkpoints import training_camera
from calib_seg.data.images import IMAGE_SUFFIXES, list_images, read_raw, to_unit_float
from calib_seg.errors import input_errors

log = logging.getLogger("calib_seg.predict")


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
