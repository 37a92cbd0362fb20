"""Point-annotated image folders (the dot-annotated counting format), for density-map counting.

Layout::

    DIR/train/images/<stem>.png   grey or RGB, 8- or 16-bit (TIFF too), any size
    DIR/train/dots/<stem>.png     same size: one non-zero pixel (any channel) per object
    DIR/test/...                  the same; DIR/val/... optional (else whole training images are held out)

Instead of ``dots/``, a split may hold ``points.csv`` (``file,x,y`` in pixels, ``file`` = the image's name; a
file listed with empty x/y holds no objects). With ``pixel_size_um`` the unit of density is objects/mm², else
objects per image.

:func:`write_dots_folder` writes the format's flat form (``images/`` + ``dots/``, no split) from the synthetic
cell simulator: the stand-in of the dot-annotated counting protocol (``python -m calib_seg.synth dots``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib_seg.data.images import full_scale, list_images, read_raw, to_gray
from calib_seg.data.points import read_dots, read_points_csv
from calib_seg.fileio import atomic_write_text, content_hash, refuse_existing_output

if TYPE_CHECKING:
    from calib_seg.data.simulators.cells import CellParams


@dataclass
class PointSplit:
    """One split of point-annotated images: stored-dtype 2-D images, their scale to [0, 1], centres (y, x) px."""

    images: list[np.ndarray]
    scales: list[float]
    centres_px: list[np.ndarray]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: list[int] | np.ndarray) -> PointSplit:
        """The items at positions ``idx``, in that order."""
        return PointSplit([self.images[i] for i in idx], [self.scales[i] for i in idx],
                          [self.centres_px[i] for i in idx], [self.names[i] for i in idx])


class PointFolder:
    """Reads ``DIR/{train,val,test}`` (see the module docstring).

    Args:
        root: the folder.
        pixel_size_um: um per pixel (None: densities are objects per image).
        bit_depth: camera bit depth of 16-bit images (None: full 16-bit range).
    """

    def __init__(self, root: str | Path, pixel_size_um: float | None = None, bit_depth: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"point folder not found: {self.root}")
        if not (self.root / "train").is_dir():
            raise FileNotFoundError(f"{self.root}: needs train/ (and test/, optional val/), each with images/ "
                                    "and dots/ (or points.csv)")
        self.pixel_size_um = float(pixel_size_um) if pixel_size_um else None
        self.bit_depth = bit_depth

    def has(self, name: str) -> bool:
        """Whether the split folder exists."""
        return (self.root / name / "images").is_dir()

    def split(self, name: str) -> PointSplit:
        """Images and centres of ``train``, ``val`` or ``test``; a missing dots image is a clear error."""
        folder = self.root / name
        files = list_images(folder / "images")
        if not files:
            raise FileNotFoundError(f"{folder / 'images'}: no images")
        csv_path = folder / "points.csv"
        table = read_points_csv(csv_path) if csv_path.is_file() else None
        out = PointSplit([], [], [], [])
        for path in files:
            raw = read_raw(path)
            img = to_gray(raw, str(path))
            if table is not None:
                centres = table.get(path.name, table.get(path.stem, np.zeros((0, 2))))
            else:
                dots = next((p for p in sorted((folder / "dots").glob(f"{path.stem}.*"))), None)
                if dots is None:
                    raise FileNotFoundError(f"{path}: no dots image {folder / 'dots' / path.stem}.png "
                                            f"(nor {csv_path.name})")
                centres = read_dots(dots, img.shape[:2])
            out.images.append(img)
            out.scales.append(full_scale(img.dtype, self.bit_depth) if np.issubdtype(img.dtype, np.integer) else 1.0)
            out.centres_px.append(np.asarray(centres, float).reshape(-1, 2))
            out.names.append(f"{name}/{path.name}")
        return out

    def fingerprint(self) -> dict:
        """Source parameters and a hash of the file list (name, size)."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        manifest = [(str(p.relative_to(self.root)), p.stat().st_size) for p in files]
        return {"source": "point_folder", "root": str(self.root), "pixel_size_um": self.pixel_size_um,
                "n_files": len(files), "sha256": content_hash(manifest)}


# ---------------------------------------------------------------- writing the format (the synthetic stand-in)
def stem_of(index: int, n: int) -> str:
    """File stem of image ``index`` in a set of ``n`` (zero-padded, so name order is index order)."""
    return f"cell_{index:0{max(3, len(str(n - 1)))}d}"


README = """Synthetic stand-in for a dot-annotated cell counting set: NOT real microscopy.

Written by `python -m calib_seg.synth dots` (calib_seg.data.simulators.cells, generator {version}), seed {seed}:
{n} RGB {size}x{size} px images of simulated fluorescence cells (blurred elliptical cells with a brighter
nucleus, varied size and brightness, clusters and overlaps, cells cut by the border, smooth background, shot and
read noise), {lo}..{hi} counted cells per image (log-uniform; this set: {cmin}..{cmax}, mean {cmean:.1f}).

images/<stem>.png  the image (RGB, 8-bit)
dots/<stem>.png    black RGB image of the same size, one red (255,0,0) pixel per counted cell centre;
                   a cell counts when its centre is inside the image
counts.csv         stem,count (the number of red pixels of each dots image)

Protocol convention: sorted by name, the first half is the training pool, the second half the test set
(benchmarks/b8_counting_protocol.py --data THIS_FOLDER).
"""


def write_dots_folder(out_dir: str | Path, n: int = 200, size: int = 256, seed: int = 0,
                      params: CellParams | None = None, overwrite: bool = False) -> dict:
    """Write ``n`` synthetic images in the flat dot layout: ``images/``, ``dots/``, ``counts.csv``, ``README.txt``.

    Returns a summary (generator, seed, size, counts per stem).

    Raises:
        FileExistsError: ``out_dir`` is a file or a non-empty folder and ``overwrite`` is False.
        ValueError: ``n`` < 1 or parameters out of range.
    """
    from PIL import Image

    from calib_seg.data.simulators.cells import GENERATOR_VERSION, CellParams, generate_cell_image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = params or CellParams(size=int(size))
    if p.size != int(size):
        raise ValueError(f"size {size} differs from params.size {p.size}")
    out = Path(out_dir)
    refuse_existing_output(out, overwrite, hint="choose a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "dots").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for i in range(n):
        cell = generate_cell_image(i, seed, p)
        stem = stem_of(i, n)
        Image.fromarray(cell.image).save(out / "images" / f"{stem}.png")
        Image.fromarray(cell.dots()).save(out / "dots" / f"{stem}.png")
        counts[stem] = cell.count
    atomic_write_text(out / "counts.csv", "stem,count\n" + "".join(f"{k},{v}\n" for k, v in counts.items()))
    c = np.array(list(counts.values()))
    lo, hi = p.count_range
    atomic_write_text(out / "README.txt", README.format(version=GENERATOR_VERSION, seed=seed, n=n, size=p.size,
                                                        lo=lo, hi=hi, cmin=c.min(), cmax=c.max(), cmean=c.mean()))
    return {"generator": GENERATOR_VERSION, "seed": int(seed), "n": n, "size": p.size, "params": asdict(p),
            "counts": counts}
