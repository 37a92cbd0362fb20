"""Readers for electron-microscopy segmentation data: EPFL/Lucchi TIFF stacks and image/mask folders.

Every reader validates its input *before* training starts (the seed project found its data bugs after an
hour of training) and hands the data module a :class:`SegSplit` per split: a sequence of 2-D images plus the
matching binary masks. Images may stay in their stored dtype (so the EPFL stacks can be memory-mapped);
:func:`calib_seg.data.images.to_unit_float` (the project's one conversion, re-exported here) converts a
crop when it is sampled. Masks are validated once at load time to hold {0,1} or {0,255} only, so ``mask > 0``
is the correct binarisation afterwards.

Conversion rules: see :mod:`calib_seg.data.images` (uint8 / 255, uint16 / 65535, RGB(A) -> ITU-R 601
luminance, float images must already lie in [0, 1]).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib_seg.data.images import SKIP_HINT, read_raw, to_unit_float
from calib_seg.data.images import check_unit_range as _check_unit_range

__all__ = ["EPFLSource", "FolderSource", "SegSplit", "StackView", "to_unit_float", "check_binary_mask",
           "binarize_mask", "read_image_file", "load_pairs", "file_manifest"]

# lossless formats only: masks and EM images must not pass through JPEG
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
log = logging.getLogger(__name__)
EPFL_FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


# ----------------------------------------------------------------------------------------------- masks
def mask_values(mask: np.ndarray) -> np.ndarray:
    """Distinct values of a mask; uses a histogram for 8-bit data (fast on memory-mapped stacks)."""
    m = np.asarray(mask)
    if m.dtype == np.uint8:
        counts = np.zeros(256, dtype=np.int64)
        # chunked so a memory-mapped stack is streamed, not loaded at once
        flat = m.reshape(m.shape[0], -1) if m.ndim > 1 else m[None]
        for start in range(0, flat.shape[0], 16):
            counts += np.bincount(flat[start : start + 16].ravel(), minlength=256)
        return np.nonzero(counts)[0].astype(np.uint8)
    return np.unique(m)


def check_binary_mask(mask: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the offending values unless the mask holds {0,1} or {0,255}."""
    vals = mask_values(mask)
    ok = set(vals.tolist()) <= {0, 1} or set(vals.tolist()) <= {0, 255}
    if mask.dtype == np.bool_:
        ok = True
    if not ok:
        shown = vals.tolist()
        if len(shown) > 12:
            shown = shown[:6] + ["..."] + shown[-6:]
        raise ValueError(
            f"{name}: mask values must be {{0,1}} or {{0,255}}, found {len(vals)} distinct values {shown}"
        )


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Mask (already validated) -> float32 {0, 1}."""
    return (np.asarray(mask) > 0).astype(np.float32)


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG or TIFF file into a numpy array in its stored dtype; unreadable files raise naming the file."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix.lower()!r} (expected one of {IMAGE_SUFFIXES})")
    return read_raw(path)


# ---------------------------------------------------------------------------------------------- containers
@dataclass
class SegSplit:
    """One split: images (2-D, stored dtype or float32) and masks (2-D, validated {0,1}/{0,255}), same shapes.

    ``images``/``masks`` may be lists or lazy views over memory-mapped stacks; index them to get one 2-D
    array. ``names`` label each item in error messages and predictions.
    """

    images: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def shapes(self) -> list[tuple[int, int]]:
        """(H, W) of every item."""
        return [tuple(self.images[i].shape[:2]) for i in range(len(self))]

    def foreground_fraction(self) -> float:
        """Fraction of foreground pixels over the whole split (pixel-weighted)."""
        fg = total = 0
        for i in range(len(self)):
            m = np.asarray(self.masks[i])
            fg += int(np.count_nonzero(m))
            total += m.size
        return fg / total if total else float("nan")


class StackView(Sequence):
    """Read-only view of slices ``[start, stop)`` of a 3-D stack (memory-mapped or in memory)."""

    def __init__(self, stack: np.ndarray, start: int, stop: int, path: Path | None = None):
        self.stack, self.start, self.stop, self.path = stack, int(start), int(stop), path

    def __getstate__(self) -> dict:
        # a pickled np.memmap carries its whole content: with spawn-started DataLoader workers, re-map the
        # file in each worker instead of copying ~130 MB per stack
        state = dict(self.__dict__)
        if isinstance(self.stack, np.memmap) and self.path is not None:
            state["stack"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.stack is None:
            self.stack = _open_stack(Path(self.path), mmap=True)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("StackView supports integer indexing only")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.stack[self.start + i]


# --------------------------------------------------------------------------------------------------- EPFL
def _open_stack(path: Path, mmap: bool) -> np.ndarray:
    import tifffile

    if mmap:
        try:
            return tifffile.memmap(path, mode="r")
        except (ValueError, OSError):
            pass  # compressed or tiled TIFFs cannot be memory-mapped; read them into memory instead
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as exc:  # truncated or corrupt stacks raise many different types
        raise ValueError(f"cannot read TIFF stack {path}: {type(exc).__name__}: {exc}") from exc
    if arr.size == 0:
        raise ValueError(f"cannot read TIFF stack {path}: no pixel data (truncated or corrupt file?)")
    return arr


@dataclass
class EPFLSource:
    """EPFL/Lucchi mitochondria stacks: ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``,
    ``testing_groundtruth.tif`` in ``root``.

    Validation is a contiguous block of ``val_fraction`` of the training slices taken from the *end* of the
    stack (at least one slice), optionally separated from the training block by ``val_gap`` slices, because
    neighbouring FIB-SEM slices are ~5 nm apart and nearly identical; random tiles of the same slices would
    leak. Test is the official test stack.

    Args:
        root: folder holding the four TIFF stacks.
        val_fraction: fraction of training slices held out for validation (0 < f < 1).
        val_gap: slices dropped between the training and validation blocks.
        mmap: memory-map the stacks when the files allow it (falls back to reading them).
    """

    root: str | Path
    val_fraction: float = 0.2
    val_gap: int = 0
    mmap: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_gap < 0:
            raise ValueError(f"val_gap must be >= 0, got {self.val_gap}")
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"EPFL data folder {self.root} does not exist; expected it to hold {', '.join(EPFL_FILES)} "
                "(download the stacks from EPFL CVLab's 'Electron Microscopy Dataset' page)"
            )
        missing = [f for f in EPFL_FILES if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"EPFL data folder {self.root} is missing {', '.join(missing)}; expected {', '.join(EPFL_FILES)}"
            )
        paths = {f: self.root / f for f in EPFL_FILES}
        self._stacks = {f: _open_stack(p, self.mmap) for f, p in paths.items()}
        for img_f, msk_f in (EPFL_FILES[:2], EPFL_FILES[2:]):
            img, msk = self._stacks[img_f], self._stacks[msk_f]
            for f, a in ((img_f, img), (msk_f, msk)):
                if a.ndim != 3:
                    raise ValueError(f"{paths[f]}: expected a 3-D stack (slices, H, W), got shape {a.shape} "
                                     "(a single image, or a truncated/corrupt file?)")
            if img.shape[0] != msk.shape[0]:
                raise ValueError(
                    f"stacks have different slice counts: {paths[img_f]} has {img.shape[0]}, "
                    f"{paths[msk_f]} has {msk.shape[0]}"
                )
            if img.shape[1:] != msk.shape[1:]:
                raise ValueError(
                    f"image/mask shape mismatch: {paths[img_f]} slices are {img.shape[1:]}, "
                    f"{paths[msk_f]} slices are {msk.shape[1:]}"
                )
            check_binary_mask(msk, str(paths[msk_f]))
            if not (img.dtype in (np.uint8, np.uint16) or np.issubdtype(img.dtype, np.floating)):
                raise ValueError(f"{paths[img_f]}: unsupported dtype {img.dtype}")
            if np.issubdtype(img.dtype, np.floating):
                _check_unit_range(np.asarray(img), str(paths[img_f]))
        n = self._stacks["training.tif"].shape[0]
        n_val = max(1, int(round(n * self.val_fraction)))
        n_train = n - n_val - self.val_gap
        if n_train < 1:
            raise ValueError(
                f"{paths['training.tif']} has {n} slices: too few for val_fraction={self.val_fraction} and "
                f"val_gap={self.val_gap} (need at least one training slice)"
            )
        self.train_slices = (0, n_train)
        self.val_slices = (n - n_val, n)
        self.test_slices = (0, self._stacks["testing.tif"].shape[0])
        self._paths = paths

    def split(self, name: str) -> SegSplit:
        """``train`` / ``val`` / ``test`` as lazy slice views (no copy of the memory-mapped data)."""
        if name in ("train", "val"):
            img, msk = self._stacks["training.tif"], self._stacks["training_groundtruth.tif"]
            a, b = self.train_slices if name == "train" else self.val_slices
            stem = "training"
        elif name == "test":
            img, msk = self._stacks["testing.tif"], self._stacks["testing_groundtruth.tif"]
            a, b = self.test_slices
            stem = "testing"
        else:
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        ip, mp = self._paths[f"{stem}.tif"], self._paths[f"{stem}_groundtruth.tif"]
        names = [f"{stem}[{z}]" for z in range(a, b)]
        return SegSplit(StackView(img, a, b, ip), StackView(msk, a, b, mp), names)

    def fingerprint(self) -> dict:
        """Manifest of the four stacks (size and sha256) plus the split definition."""
        files = file_manifest(list(self._paths.values()), self.root)
        return {
            "source": "epfl",
            "sha256": files["sha256"],
            "root": str(self.root),
            "files": files,
            "train_slices": list(self.train_slices),
            "val_slices": list(self.val_slices),
            "test_slices": list(self.test_slices),
        }


# ------------------------------------------------------------------------------------------------- folder
def _list_images(folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in by_stem:
                raise ValueError(
                    f"{folder}: two files share the stem {p.stem!r}: {by_stem[p.stem].name}, {p.name}"
                )
            by_stem[p.stem] = p
    return by_stem


def load_pairs(
    split_dir: Path, skip_bad_files: bool = False, skipped: list[str] | None = None
) -> tuple[SegSplit, list[Path]]:
    """Load ``split_dir/images`` and ``split_dir/masks``, paired by file stem, validated and in memory.

    Returns the split (images float32 [0,1], masks uint8 {0,1}) and the list of files read. With
    ``skip_bad_files``, a pair whose image or mask cannot be read is skipped with a warning and its image
    file appended to ``skipped``; wrong values or shapes are still errors (they are not read failures).
    """
    img_dir, msk_dir = split_dir / "images", split_dir / "masks"
    for d in (img_dir, msk_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist; expected {split_dir}/images and {split_dir}/masks")
    imgs, msks = _list_images(img_dir), _list_images(msk_dir)
    if not imgs:
        raise FileNotFoundError(f"{img_dir} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    no_mask = sorted(set(imgs) - set(msks))
    if no_mask:
        raise FileNotFoundError(
            f"{len(no_mask)} image(s) in {img_dir} have no mask with the same stem in {msk_dir}: "
            f"{', '.join(imgs[s].name for s in no_mask[:10])}"
        )
    no_image = sorted(set(msks) - set(imgs))
    if no_image:
        raise FileNotFoundError(
            f"{len(no_image)} mask(s) in {msk_dir} have no image with the same stem in {img_dir}: "
            f"{', '.join(msks[s].name for s in no_image[:10])}"
        )
    images, masks, names, files = [], [], [], []
    for stem in sorted(imgs):
        ip, mp = imgs[stem], msks[stem]
        try:
            raw_img, m = read_image_file(ip), read_image_file(mp)
        except ValueError as exc:
            if not skip_bad_files:
                raise ValueError(f"{exc}\n  {SKIP_HINT}") from exc
            log.warning("skipping unreadable pair (data.source.skip_bad_files=true): %s", exc)
            if skipped is not None:
                skipped.append(str(ip))
            continue
        img = to_unit_float(raw_img, str(ip))
        if m.ndim == 3 and m.shape[-1] in (3, 4):
            # masks saved as RGB by some tools: accept only when the channels agree
            if not (np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2])):
                raise ValueError(f"{mp}: colour mask with differing channels; save masks as single-channel")
            m = m[..., 0]
        if m.ndim != 2:
            raise ValueError(f"{mp}: expected a 2-D mask, got shape {m.shape}")
        check_binary_mask(m, str(mp))
        if img.shape != m.shape:
            raise ValueError(f"image/mask shape mismatch: {ip} is {img.shape}, {mp} is {m.shape}")
        images.append(img)
        masks.append((m > 0).astype(np.uint8))
        names.append(stem)
        files += [ip, mp]
    if not images:
        raise ValueError(f"{split_dir}: none of the {len(imgs)} image/mask pairs could be read (all skipped)")
    return SegSplit(images, masks, names), files


@dataclass
class FolderSource:
    """Image/mask folders ``root/{train,val,test}/{images,masks}/`` paired by file stem (PNG or TIFF).

    When ``val/`` is absent, ``val_fraction`` of the *whole* training images (at least one, chosen with
    ``seed``) become the validation set: tiles of an image used for training never reach validation.
    ``test/`` is optional; asking for it when absent raises.

    Args:
        root: dataset folder.
        val_fraction: fraction of training images held out when there is no ``val/`` folder.
        seed: which training images are held out.
        skip_bad_files: skip image/mask pairs that cannot be read (warning; listed in the fingerprint as
            ``skipped_files``) instead of failing.
    """

    root: str | Path
    val_fraction: float = 0.25
    seed: int = 0
    skip_bad_files: bool = False

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        expected = "train/images, train/masks (val/ and test/ optional, same layout)"
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder dataset {self.root} does not exist; expected {expected}")
        if not (self.root / "train").is_dir():
            raise FileNotFoundError(f"folder dataset {self.root} has no train/ folder; expected {expected}")
        self._files: list[Path] = []
        self._splits: dict[str, SegSplit] = {}
        self.skipped_files: list[str] = []
        bad = {"skip_bad_files": self.skip_bad_files, "skipped": self.skipped_files}
        train, files = load_pairs(self.root / "train", **bad)
        self._files += files
        if (self.root / "val").is_dir():
            self._splits["val"], files = load_pairs(self.root / "val", **bad)
            self._files += files
            self._splits["train"] = train
            self.held_out: list[str] = []
        else:
            if not 0.0 < self.val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
            n = len(train)
            if n < 2:
                raise ValueError(
                    f"{self.root}/train has {n} image(s) and there is no val/ folder: need at least 2 training "
                    "images to hold out a whole image for validation (or add val/images and val/masks)"
                )
            n_val = min(n - 1, max(1, int(round(n * self.val_fraction))))
            order = np.random.default_rng(self.seed).permutation(n)
            val_idx, tr_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
            self._splits["train"] = _subset(train, tr_idx)
            self._splits["val"] = _subset(train, val_idx)
            self.held_out = [train.names[i] for i in val_idx]
        if (self.root / "test").is_dir():
            self._splits["test"], files = load_pairs(self.root / "test", **bad)
            self._files += files

    def split(self, name: str) -> SegSplit:
        """``train`` / ``val`` / ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        if name not in self._splits:
            raise FileNotFoundError(f"folder dataset {self.root} has no {name}/images and {name}/masks")
        return self._splits[name]

    def fingerprint(self) -> dict:
        """File manifest (relative path, size, sha256) and the held-out training images."""
        files = file_manifest(self._files, self.root)
        return {
            "source": "folder",
            "sha256": files["sha256"],
            "root": str(self.root),
            "files": files,
            "val_held_out_from_train": list(self.held_out),
            "splits": {k: v.names for k, v in self._splits.items()},
            "skipped_files": [str(Path(f).relative_to(self.root)) for f in self.skipped_files],
        }


def _subset(split: SegSplit, idx: list[int]) -> SegSplit:
    return SegSplit(
        [split.images[i] for i in idx], [split.masks[i] for i in idx], [split.names[i] for i in idx]
    )


def file_manifest(paths: Sequence[Path], root: Path) -> dict:
    """{"sha256": digest over all entries, "entries": [[relative path, bytes, sha256], ...]}."""
    entries = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        rel = str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p)
        entries.append([rel, Path(p).stat().st_size, h.hexdigest()])
    total = hashlib.sha256(repr(entries).encode()).hexdigest()
    return {"sha256": total, "entries": entries}
