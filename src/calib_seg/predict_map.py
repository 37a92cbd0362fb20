"""Predict with a density-map counter (``model=density_map``) on new images of any size.

``python -m calib_seg.predict ckpt_path=<run>/checkpoints/best-*.ckpt input=... output=...`` writes one CSV row
per image (per frame for TIFF stacks): the count (integral of the map), the density (objects/mm² when the pixel
size is known, else objects per image), the number of detected objects (the map's peaks, as the task's
localisation metrics find them) and, when the input carries labels, the errors. Optionally a float32 density-map
TIFF per image (objects per pixel: it integrates to the count) and an overlay PNG marking the detected objects.

Images larger than ``map_tile_size`` are predicted in overlapping tiles (:func:`calib_seg.models.tiling.
predict_tiled`, tiles aligned to the network's pooling grid). A density map is additive, so tiles are not summed:
each pixel takes the weighted *average* of the tiles that cover it (weights sum to one), with the
``map_tile_overlap // 2`` pixels at each inner tile side dropped. The map (and so the count) then equals the
whole-image map up to float rounding whenever the network's receptive-field radius is within that margin.

Labels: a point-annotated folder (``images/`` beside ``dots/`` or ``points.csv``, the ``data=point_folder``
layout) gives ``true_count``, ``count_error`` (predicted - true) and ``abs_count_error``; a labelled bead folder
(``manifest.csv`` or dilution names) gives the density task's label columns, count errors against its count and,
with a pixel size, the calibration verdict.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from calib_seg.data.points import read_dots, read_points_csv
from calib_seg.errors import input_errors
from calib_seg.fileio import atomic_write_text
from calib_seg.models.tiling import predict_tiled, size_divisor, tile_starts
from calib_seg.predict_io import (
    _progress,
    calibrate_rows,
    known_labels,
    pixel_note,
    to_model_scale,
    training_scale,
    unit_frames,
)

COLUMNS = ["file", "frame", "height", "width", "predicted_count", "density", "density_unit", "fov_area_mm2", "detected",
           "tiles"]
LABEL_COLUMNS = ["true_count", "count_error", "abs_count_error"]
BEAD_LABEL_COLUMNS = ["dilution", "nominal", "predicted", "count"]

log = logging.getLogger("calib_seg.predict")


def tiling(task: Any, tile: int, overlap: int) -> tuple[int, int]:
    """(tile, overlap) checked against the network: the tile a multiple of its size divisor, overlap < tile."""
    div = size_divisor(task.model)
    if tile < div or tile % div:
        raise ValueError(f"map_tile_size={tile} must be a positive multiple of {div} (the network's size divisor)")
    if not 0 <= overlap < tile or tile - overlap < div:
        raise ValueError(f"map_tile_overlap={overlap} must satisfy 0 <= overlap <= map_tile_size - {div} "
                         f"(map_tile_size={tile})")
    return tile, overlap


@torch.no_grad()
def predict_map(task: Any, image: np.ndarray, tile: int, overlap: int) -> tuple[torch.Tensor, int]:
    """The task's density map ``(1, 1, H, W)`` of one [0, 1] image (mass ``map_scale`` per object) and the number
    of tiles it took (1 = whole image at once)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(task.device)
    h, w = image.shape
    if h <= tile and w <= tile:
        return task.density_map(x).float(), 1
    div = size_divisor(task.model)
    dmap = predict_tiled(task.density_map, x, tile=tile, overlap=overlap, margin=overlap // 2, align=div)
    # the same padded extent predict_tiled covers: at least one tile, a multiple of the divisor
    n_tiles = [len(tile_starts(max(n, tile) + (-max(n, tile)) % div, tile, overlap, div)) for n in (h, w)]
    return dmap.float(), n_tiles[0] * n_tiles[1]


def overlay(image: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """RGB uint8 of a [0, 1] image (contrast-stretched) with a red plus sign on every detected object."""
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    h, w = image.shape
    for y, x in np.floor(np.asarray(peaks, float).reshape(-1, 2)).astype(int):
        for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-2, 0), (2, 0), (0, -2), (0, 2)):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                rgb[y + dy, x + dx] = (255, 0, 0)
    return rgb


def predict_counts(task: Any, files: list[Path], bit_depth: int | None, pixel_size_um: float | None,
                   cfg: DictConfig, out_dir: Path | None = None, scale: float = 1.0) -> list[dict[str, Any]]:
    """One row per image/frame (see :data:`COLUMNS`); maps / overlays into ``out_dir`` when asked in ``cfg``.

    ``scale``: the factor each image is resampled by before the model sees it (input pixel size / training pixel
    size, :func:`calib_seg.predict.pixel_note`); maps and overlays are at the model's scale, the FOV area is the
    input's own.
    """
    import tifffile
    from PIL import Image

    with input_errors():  # a tile the network cannot take is the user's setting: one clear message
        tile, overlap = tiling(task, int(cfg.get("map_tile_size", 512)), int(cfg.get("map_tile_overlap", 64)))
    save_maps, save_overlays = bool(cfg.get("save_density_maps", False)), bool(cfg.get("save_overlays", False))
    if (save_maps or save_overlays) and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for f in _progress(files, "counting"):
        images = unit_frames(f, bit_depth)
        for i, image in enumerate(images):
            dmap, n_tiles = predict_map(task, to_model_scale(image, scale), tile, overlap)
            count = float(dmap.double().sum()) / task.target.scale
            peaks = task.peaks(dmap)[0]
            area = image.shape[0] * image.shape[1] * (pixel_size_um * 1e-3) ** 2 if pixel_size_um else None
            rows.append({"file": str(f), "frame": i, "height": image.shape[0], "width": image.shape[1],
                         "predicted_count": count, "density": count / area if area else count,
                         "density_unit": "objects/mm2" if area else "objects/image", "fov_area_mm2": area,
                         "detected": len(peaks), "tiles": n_tiles})
            stem = f.stem if len(images) == 1 else f"{f.stem}_{i:04d}"
            if save_maps and out_dir is not None:
                tifffile.imwrite(out_dir / f"{stem}_map.tif", (dmap[0, 0] / task.target.scale).cpu().numpy())
            if save_overlays and out_dir is not None:
                Image.fromarray(overlay(to_model_scale(image, scale), peaks)).save(out_dir / f"{stem}_overlay.png")
    return rows


def point_labels(rows: list[dict[str, Any]]) -> bool:
    """Add ``true_count`` and the count errors when every row's image has point annotations: ``dots/<stem>.*``
    or ``points.csv`` beside its ``images/`` folder (the ``data=point_folder`` layout). Returns whether it did."""
    if not rows or any(r["frame"] > 0 for r in rows):
        return False
    found: dict[str, float] = {}
    tables: dict[Path, dict[str, np.ndarray]] = {}
    for r in rows:
        path = Path(r["file"])
        split = path.parent.parent if path.parent.name == "images" else path.parent
        csv_path = split / "points.csv"
        if csv_path.is_file():
            table = tables.setdefault(csv_path, read_points_csv(csv_path))
            found[r["file"]] = float(len(table.get(path.name, table.get(path.stem, np.zeros((0, 2))))))
            continue
        dots = next(iter(sorted((split / "dots").glob(f"{path.stem}.*"))), None) if (split / "dots").is_dir() else None
        if dots is None:
            return False
        found[r["file"]] = float(len(read_dots(dots, (r["height"], r["width"]))))
    for r in rows:
        _add_count_errors(r, found[r["file"]])
    return True


def _add_count_errors(row: dict[str, Any], true_count: float) -> None:
    err = row["predicted_count"] - true_count
    row.update({"true_count": true_count, "count_error": err, "abs_count_error": abs(err)})


def write_count_csv(rows: list[dict[str, Any]], out: Path, base: Path | None = None) -> Path:
    """Write the rows atomically (empty cells for unknown values); label columns when every row has them.

    ``base``: the input folder; files are written relative to it, as for the density CSV.
    """
    cols = list(COLUMNS)
    for extra in (BEAD_LABEL_COLUMNS, LABEL_COLUMNS):
        if rows and all(all(c in r for c in extra) for r in rows):
            cols += extra
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join("" if r[c] is None or (isinstance(r[c], float) and not np.isfinite(r[c]))
                              else _relative(r[c], base) if c == "file"
                              else (f"{r[c]:.8g}" if isinstance(r[c], float) else str(r[c])) for c in cols))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def _relative(file: str, base: Path | None) -> str:
    try:
        return Path(file).resolve().relative_to(base.resolve()).as_posix() if base is not None else file
    except ValueError:
        return file


def write_map_predictions(task: Any, cfg: DictConfig, run_cfg: DictConfig, files: list[Path],
                          bit: int | None, pixel: float | None, out: Path) -> Path:
    """The count CSV (``out`` or ``out/predictions.csv``; maps and overlays beside it); returns the CSV path.

    With a labelled bead folder and a known pixel size the calibration verdict is written beside the CSV
    (``<stem>_calibration.json``) and printed, as for the density task.
    """
    csv_path = out if out.suffix.lower() == ".csv" else out / "predictions.csv"
    scale, note = pixel_note(pixel, training_scale(run_cfg)[0])
    if scale != 1.0:  # (an unknown pixel size is normal here: densities are then objects per image)
        log.warning(note)
    rows = predict_counts(task, files, bit, pixel, cfg, csv_path.parent, scale)
    inp = Path(cfg.input)
    with input_errors():  # unreadable or mis-sized annotations name their file
        labelled = point_labels(rows)
    if not labelled and known_labels(inp, rows, "density"):
        for r in rows:  # the bead folder's realised count, when it has one
            if r["count"] is not None and np.isfinite(float(r["count"])):
                _add_count_errors(r, float(r["count"]))
        if pixel:
            from calib_seg.metrics.calibration import summary_text

            block = calibrate_rows(rows, cfg.get("calibration"))
            atomic_write_text(csv_path.with_name(f"{csv_path.stem}_calibration.json"),
                              json.dumps(block, indent=2) + "\n")
            print(summary_text(block), flush=True)
    return write_count_csv(rows, csv_path, inp if inp.is_dir() else inp.parent)
