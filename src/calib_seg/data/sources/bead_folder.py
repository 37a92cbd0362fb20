"""Real bead images: a folder of TIFF/PNG files with a CSV manifest, and the writer that produces that layout.

Layout (exactly what ``python -m calib_seg.synth beads --out DIR`` writes)::

    DIR/manifest.csv     file,density[,dilution][,count]   or   file,dilution  (density from the dilution table)
    DIR/images/*.tif     one image per row (paths in ``file`` are relative to DIR)
    DIR/centres.csv      optional: file,y_um,x_um  one row per counted bead (density-map targets); a file with
                         empty y_um,x_um is annotated with no bead; a file not listed is labelled by density only
    DIR/dataset.json     optional: {"bit_depth": 12, "pixel_size_um": 4.0, ...} camera facts for reading

Without a manifest, dilutions are parsed from file names such as ``50x_001.tif``. Every problem is reported
before training starts, naming the file, line and column.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calib_seg.data.containers import BeadSet
from calib_seg.data.images import SKIP_HINT, full_scale, list_images, read_raw, to_gray
from calib_seg.data.simulators.beads import dilution_series
from calib_seg.data.sources.beads_synth import SyntheticBeads
from calib_seg.fileio import atomic_write_text, content_hash, refuse_existing_output

log = logging.getLogger(__name__)
_DILUTION_IN_NAME = re.compile(r"^(\d+(?:\.\d+)?)x(?:[_\-.]|$)", re.IGNORECASE)


def parse_dilution(name: str) -> float | None:
    """Dilution factor from a file name like ``50x_001.tif`` or ``51200x-3.png`` (None if absent)."""
    m = _DILUTION_IN_NAME.match(Path(name).name)
    return float(m.group(1)) if m else None


class BeadFolder:
    """Reads a bead folder into a :class:`~calib_seg.data.containers.BeadSet` (see the module docstring).

    Args:
        root: the folder.
        manifest: CSV file name inside ``root`` (if it does not exist, dilutions come from file names).
        dilution_table: ``{dilution: beads/mm²}`` for rows without a density; default the seed series.
        bit_depth: camera bit depth of uint16 images (default: dataset.json, else 16).
        pixel_size_um: um per pixel (default: dataset.json); gives the FOV area for implied counts.
        resize: None (mixed sizes are an error) or a square size every image is resized to.
        skip_bad_files: skip unreadable images with a warning (counted in the fingerprint) instead of failing.
    """

    def __init__(
        self,
        root: str | Path,
        manifest: str = "manifest.csv",
        dilution_table: Mapping[float, float] | None = None,
        bit_depth: int | None = None,
        pixel_size_um: float | None = None,
        resize: int | None = None,
        skip_bad_files: bool = False,
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.table = {float(k): float(v) for k, v in (dilution_table or dilution_series()).items()}
        self.bit_depth, self.pixel_size_um, self.resize = bit_depth, pixel_size_um, resize
        self.skip_bad_files = skip_bad_files

    # --- manifest -------------------------------------------------------------------------------------------
    def labels(self) -> list[dict[str, Any]]:
        """Validated labels without reading any image: ``{file, path, density, dilution, count, line}`` per row."""
        return self._rows()

    def _rows(self) -> list[dict[str, Any]]:
        """Validated rows ``{file, path, density, dilution, count, line}`` from the manifest or file names."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"bead data root {self.root} does not exist: expected a folder with "
                                    f"{self.manifest} and TIFF/PNG images (see README 'Data formats')")
        mpath = self.root / self.manifest
        if not mpath.exists():
            return self._rows_from_names()
        with mpath.open(newline="") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "file" not in cols:
                raise ValueError(f"{mpath}: missing column 'file' (columns found: {cols})")
            if "density" not in cols and "dilution" not in cols:
                raise ValueError(f"{mpath}: needs a 'density' or a 'dilution' column (columns found: {cols})")
            raw = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
        if not raw:
            raise ValueError(f"{mpath}: the manifest has no rows")
        rows, seen = [], {}
        for line, r in enumerate(raw, start=2):  # line 1 is the header
            where = f"{mpath} line {line}"
            name = r.get("file", "")
            if not name:
                raise ValueError(f"{where}, column 'file': empty file name")
            if name in seen:
                raise ValueError(f"{where}, column 'file': duplicate file '{name}' (first at line {seen[name]})")
            seen[name] = line
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"{where}, column 'file': file not found: {path}")
            dil = _number(r.get("dilution"), where, "dilution", allow_empty=True)
            dens = _number(r.get("density"), where, "density", allow_empty=True)
            if dens is None:
                if dil is None:
                    raise ValueError(f"{where}: neither 'density' nor 'dilution' is given")
                if dil not in self.table:
                    raise ValueError(f"{where}, column 'dilution': dilution {dil:g}x is not in the dilution table "
                                     f"(known: {', '.join(f'{d:g}x' for d in self.table)}); add it to data.source.dilution_table")
                dens = self.table[dil]
            cnt = _number(r.get("count"), where, "count", allow_empty=True)
            rows.append({"file": name, "path": path, "density": dens, "line": line,
                         "dilution": math.nan if dil is None else dil, "count": math.nan if cnt is None else cnt})
        return rows

    def _rows_from_names(self) -> list[dict[str, Any]]:
        files = [p for p in list_images(self.root)] + (list_images(self.root / "images") if (self.root / "images").is_dir() else [])
        if not files:
            raise FileNotFoundError(f"bead data root {self.root} has no {self.manifest} and no TIFF/PNG images")
        rows, bad = [], []
        for p in files:
            dil = parse_dilution(p.name)
            if dil is None:
                bad.append(f"{p.relative_to(self.root)}: no dilution in the file name")
            elif dil not in self.table:
                bad.append(f"{p.relative_to(self.root)}: dilution {dil:g}x is not in the dilution table")
            if bad:  # keep looking: every bad name is listed at once, not one per attempt
                continue
            rows.append({"file": str(p.relative_to(self.root)), "path": p, "density": self.table[dil],
                         "dilution": dil, "count": math.nan, "line": None})
        if bad:
            raise ValueError(
                f"{self.root}: no {self.manifest}, and {len(bad)} of {len(files)} file name(s) give no known dilution "
                f"(expected names like 50x_001.tif; known dilutions: {', '.join(f'{d:g}x' for d in self.table)}):\n"
                + "\n".join(f"  {b}" for b in bad))
        return rows

    def _facts(self) -> dict[str, Any]:
        path = self.root / "dataset.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc

    # --- images ---------------------------------------------------------------------------------------------
    def load(self, progress: bool = False) -> BeadSet:
        """Read and validate every image; raise on the first problem (or skip bad files when configured)."""
        rows = self._rows()
        facts = self._facts()
        bit_depth = self.bit_depth or facts.get("bit_depth")
        pixel = self.pixel_size_um or facts.get("pixel_size_um")
        images, kept, skipped = [], [], []
        iterator = rows
        if progress and len(rows) > 100:
            from rich.progress import track

            iterator = track(rows, description=f"reading {self.root}")
        for r in iterator:
            try:
                arr = to_gray(read_raw(r["path"]), str(r["path"]))
            except ValueError as exc:
                if not self.skip_bad_files:
                    raise ValueError(f"{exc}\n  {SKIP_HINT}") from exc
                log.warning("skipping unreadable image (data.source.skip_bad_files=true): %s", exc)
                skipped.append(r["file"])
                continue
            images.append(arr)
            kept.append(r)
        if len(kept) < 2:
            raise ValueError(f"{self.root}: only {len(kept)} usable image(s); need at least 2")
        images = self._same_size(images, kept)
        dtypes = {a.dtype for a in images}
        if len(dtypes) > 1:
            raise ValueError(f"{self.root}: images mix pixel types {sorted(map(str, dtypes))}; convert them to one type")
        stack = np.stack(images)
        if np.issubdtype(stack.dtype, np.floating):
            lo, hi = float(stack.min()), float(stack.max())
            if lo < 0 or hi > 1:
                raise ValueError(f"{self.root}: float images must lie in [0, 1], found [{lo}, {hi}]")
            scale = 1.0
        else:
            scale = full_scale(stack.dtype, bit_depth)
        manifest_hash = content_hash([(r["file"], r["density"], r["dilution"]) for r in kept])
        area = (stack.shape[-1] * pixel * 1e-3) ** 2 if pixel else None
        return BeadSet(
            images=stack, scale=scale,
            density=np.array([r["density"] for r in kept], float),
            dilution=np.array([r["dilution"] for r in kept], float),
            count=np.array([r["count"] for r in kept], float),
            names=[r["file"] for r in kept], fov_area_mm2=area,
            fingerprint={"source": "bead_folder", "root": str(self.root.resolve()), "n_images": len(kept),
                         "manifest_sha256": manifest_hash, "skipped_files": skipped, "bit_depth": bit_depth,
                         "pixel_size_um": pixel},
            centres_um=self._centres([r["file"] for r in kept]),
        )

    def _centres(self, files: list[str]) -> list[np.ndarray | None] | None:
        """Bead centres (y, x) in um per image from ``centres.csv`` (None without it, or when images are resized).

        An image is point-annotated when ``centres.csv`` lists it: one row per bead, or one row with empty
        ``y_um``/``x_um`` for an annotated image without beads. An image it does not list gets None: it is
        labelled only by its density (the density-map task trains its integral against density x FOV area).
        """
        path = self.root / "centres.csv"
        if not path.is_file() or self.resize:
            return None
        by_file: dict[str, list[tuple[float, float]] | None] = dict.fromkeys(files)
        with path.open(newline="") as f:
            for line, r in enumerate(csv.DictReader(f), start=2):
                name = r.get("file")
                if name not in by_file:
                    continue
                pts = by_file[name] if by_file[name] is not None else []
                by_file[name] = pts
                where = f"{path}, line {line}"
                if (r.get("y_um") or "").strip() == "" and (r.get("x_um") or "").strip() == "":
                    continue  # the file is annotated and holds no bead
                pts.append((_number(r.get("y_um"), where, "y_um", False), _number(r.get("x_um"), where, "x_um", False)))
        return [None if by_file[f] is None else np.asarray(by_file[f], float).reshape(-1, 2) for f in files]

    def _same_size(self, images: list[np.ndarray], rows: list[dict[str, Any]]) -> list[np.ndarray]:
        if self.resize:
            from PIL import Image

            n = int(self.resize)
            return [np.asarray(Image.fromarray(a).resize((n, n), Image.BILINEAR)) for a in images]
        first = images[0].shape
        for a, r in zip(images, rows):
            if a.shape != first:
                raise ValueError(f"images have different sizes: {rows[0]['file']} is {first[0]}x{first[1]}, "
                                 f"{r['file']} is {a.shape[0]}x{a.shape[1]}; set data.source.resize=N to resize all")
        return images


def _number(text: str | None, where: str, column: str, allow_empty: bool) -> float | None:
    if text is None or text == "":
        if allow_empty:
            return None
        raise ValueError(f"{where}, column '{column}': empty value")
    try:
        value = float(text.lower().rstrip("x")) if column == "dilution" else float(text)
    except ValueError:
        raise ValueError(f"{where}, column '{column}': '{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}, column '{column}': {text} is not a finite number >= 0")
    return value


def write_bead_folder(source: SyntheticBeads, out_dir: str | Path) -> Path:
    """Simulate ``source`` and write it in the layout :class:`BeadFolder` reads (16-bit TIFF + manifest)."""
    import tifffile

    out = Path(out_dir)
    refuse_existing_output(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    beads = source.load(progress=True)
    lines, centre_lines = ["file,dilution,density,count"], ["file,y_um,x_um"]
    for name, img, dil, dens, cnt, cen in zip(beads.names, beads.images, beads.dilution, beads.density,
                                               beads.count, beads.centres_um):
        rel = f"images/{name}.tif"
        tifffile.imwrite(out / rel, img)
        lines.append(f"{rel},{dil:g},{dens:.6g},{int(cnt)}")
        # an empty row keeps a bead-free image annotated (an unlisted image is labelled by its density only)
        centre_lines += [f"{rel},{y:.3f},{x:.3f}" for y, x in cen] if len(cen) else [f"{rel},,"]
    atomic_write_text(out / "manifest.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "centres.csv", "\n".join(centre_lines) + "\n")
    facts = {"bit_depth": source.physics.bit_depth, "pixel_size_um": source.physics.pixel_size_um,
             "generator": source.params()}
    atomic_write_text(out / "dataset.json", json.dumps(facts, indent=2) + "\n")
    return out
