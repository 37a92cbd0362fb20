"""EPFL/Lucchi mitochondria stacks: four TIFF volumes, memory-mapped, split into contiguous slice blocks.

``root`` holds ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``, ``testing_groundtruth.tif``.
Everything is validated before training starts (slice counts, shapes, mask values, dtype and range); images
stay in their stored dtype so the stacks can be memory-mapped, and a crop is converted with
:func:`calib_seg.data.images.to_unit_float` when it is sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib_seg.data.containers import SegSplit
from calib_seg.data.images import check_unit_range
from calib_seg.data.masks import check_binary_mask
from calib_seg.data.sources.files import file_manifest
from calib_seg.data.sources.protocol import check_split_name

EPFL_FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


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


def _check_stack_pair(img: np.ndarray, msk: np.ndarray, img_path: Path, msk_path: Path) -> None:
    """An image stack and its ground truth: both 3-D, same slice count and size, binary mask, known dtype."""
    for path, a in ((img_path, img), (msk_path, msk)):
        if a.ndim != 3:
            raise ValueError(f"{path}: expected a 3-D stack (slices, H, W), got shape {a.shape} "
                             "(a single image, or a truncated/corrupt file?)")
    if img.shape[0] != msk.shape[0]:
        raise ValueError(
            f"stacks have different slice counts: {img_path} has {img.shape[0]}, {msk_path} has {msk.shape[0]}"
        )
    if img.shape[1:] != msk.shape[1:]:
        raise ValueError(
            f"image/mask shape mismatch: {img_path} slices are {img.shape[1:]}, {msk_path} slices are {msk.shape[1:]}"
        )
    check_binary_mask(msk, str(msk_path))
    if not (img.dtype in (np.uint8, np.uint16) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"{img_path}: unsupported dtype {img.dtype}")
    if np.issubdtype(img.dtype, np.floating):
        check_unit_range(np.asarray(img), str(img_path))


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
            _check_stack_pair(self._stacks[img_f], self._stacks[msk_f], paths[img_f], paths[msk_f])
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
        check_split_name(name)
        stem = "testing" if name == "test" else "training"
        a, b = {"train": self.train_slices, "val": self.val_slices, "test": self.test_slices}[name]
        img, msk = self._stacks[f"{stem}.tif"], self._stacks[f"{stem}_groundtruth.tif"]
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
