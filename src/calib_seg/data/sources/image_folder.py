"""Image/mask folders (PNG/TIFF paired by file stem) in one of two layouts.

- **split layout** ``root/{train,val,test}/{images,masks}/``: the folders say which image belongs where.
  Without ``val/``, ``val_fraction`` of the *whole* training images (at least one, chosen with ``seed``) are
  held out, so tiles of a training image never reach validation; ``test/`` is optional.
- **flat layout** ``root/images/`` + ``root/masks/`` (no train/ folder): the slices of *one volume*, e.g.
  every 4th slice of the Lucchi training stack named ``train_001 .. train_165``. Sorted by name, validation
  and optionally test are **contiguous blocks** (:func:`calib_seg.data.splits.contiguous_blocks`), never random
  slices: a random slice sits between two nearly identical training neighbours and validation leaks.

Every pair is read and validated at construction (before training starts); images are converted with
:func:`calib_seg.data.images.to_unit_float` (rules in README "Data formats"), masks must hold {0,1} or {0,255}.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib_seg.data.containers import SegSplit
from calib_seg.data.images import SKIP_HINT, read_raw, to_unit_float
from calib_seg.data.masks import check_binary_mask
from calib_seg.data.sources.files import file_manifest
from calib_seg.data.sources.protocol import check_split_name
from calib_seg.data.splits import contiguous_blocks

# lossless formats only: masks and EM images must not pass through JPEG
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
log = logging.getLogger(__name__)
LAYOUTS = ("train/images, train/masks (val/ and test/ optional, same layout), or images/ + masks/ "
           "(flat layout: slices of one volume)")


def _natural_key(name: str) -> list:
    """``s2`` before ``s10``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG or TIFF file into a numpy array in its stored dtype; unreadable files raise naming the file."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix.lower()!r} (expected one of {IMAGE_SUFFIXES})")
    return read_raw(path)


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


def _paired_files(split_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``{stem: path}`` of ``split_dir/images`` and ``split_dir/masks``; every image needs its mask and back."""
    img_dir, msk_dir = split_dir / "images", split_dir / "masks"
    for d in (img_dir, msk_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist; expected {split_dir}/images and {split_dir}/masks")
    imgs, msks = _list_images(img_dir), _list_images(msk_dir)
    if not imgs:
        raise FileNotFoundError(f"{img_dir} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    for have, lack, have_dir, lack_dir, what, other in ((imgs, msks, img_dir, msk_dir, "image", "mask"),
                                                         (msks, imgs, msk_dir, img_dir, "mask", "image")):
        orphans = sorted(set(have) - set(lack))
        if orphans:
            raise FileNotFoundError(
                f"{len(orphans)} {what}(s) in {have_dir} have no {other} with the same stem in {lack_dir}: "
                f"{', '.join(have[s].name for s in orphans[:10])}"
            )
    return imgs, msks


def _single_channel_mask(m: np.ndarray, mp: Path) -> np.ndarray:
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        # masks saved as RGB by some tools: accept only when the channels agree
        if not (np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2])):
            raise ValueError(f"{mp}: colour mask with differing channels; save masks as single-channel")
        m = m[..., 0]
    return m


def load_pairs(
    split_dir: Path, skip_bad_files: bool = False, skipped: list[str] | None = None
) -> tuple[SegSplit, list[Path]]:
    """Load ``split_dir/images`` and ``split_dir/masks``, paired by file stem, validated and in memory.

    Returns the split (images float32 [0,1], masks uint8 {0,1}, sorted by stem) and the list of files read.
    With ``skip_bad_files``, a pair whose image or mask cannot be read is skipped with a warning and its image
    file appended to ``skipped``; wrong values or shapes are still errors (they are not read failures).
    """
    imgs, msks = _paired_files(split_dir)
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
        m = _single_channel_mask(m, mp)
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
    """Image/mask folders in the split or the flat layout (see the module docstring), paired by file stem.

    Args:
        root: dataset folder.
        val_fraction: share of images held out for validation when there is no ``val/`` folder: whole images
            chosen with ``seed`` (split layout) or one contiguous block of slices (flat layout).
        seed: which training images are held out (split layout only).
        skip_bad_files: skip image/mask pairs that cannot be read (warning; listed in the fingerprint as
            ``skipped_files``) instead of failing.
        test_fraction: flat layout: share of slices in a contiguous test block (0 = no test split).
        block: flat layout: where the held-out blocks sit in the name-sorted slices: ``last`` (default,
            train|val|test), ``first`` (test|val|train) or ``middle`` (train|val|test|train).
        val_block, test_block: flat layout: explicit ``[start, stop)`` indices into the name-sorted slices
            instead of fractions (``test_fraction`` and ``block`` must then stay unset).
        gap: flat layout: slices dropped from training at each boundary with a held-out block.
    """

    root: str | Path
    val_fraction: float = 0.25
    seed: int = 0
    skip_bad_files: bool = False
    test_fraction: float = 0.0
    block: str | None = None
    val_block: Sequence[int] | None = None
    test_block: Sequence[int] | None = None
    gap: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder dataset {self.root} does not exist; expected {LAYOUTS}")
        self._files: list[Path] = []
        self._splits: dict[str, SegSplit] = {}
        self.skipped_files: list[str] = []
        self.held_out: list[str] = []
        self.blocks: dict[str, list[int]] | None = None
        if (self.root / "train").is_dir():
            self._load_split_layout()
        elif (self.root / "images").is_dir() and (self.root / "masks").is_dir():
            self._load_flat_layout()
        else:
            raise FileNotFoundError(f"folder dataset {self.root} has no train/ folder and no images/ + masks/ "
                                    f"folders; expected {LAYOUTS}")

    @property
    def layout(self) -> str:
        """``split`` (root/train/...) or ``flat`` (root/images + root/masks)."""
        return "split" if self.blocks is None else "flat"

    def _load(self, split_dir: Path) -> SegSplit:
        split, files = load_pairs(split_dir, skip_bad_files=self.skip_bad_files, skipped=self.skipped_files)
        self._files += files
        return split

    def _load_split_layout(self) -> None:
        flat_only = {"test_fraction": self.test_fraction, "block": self.block, "val_block": self.val_block,
                     "test_block": self.test_block, "gap": self.gap}
        given = [k for k, v in flat_only.items() if v]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the flat layout "
                             f"(root/images + root/masks) only; {self.root} has train/ (use val/ and test/ folders)")
        train = self._load(self.root / "train")
        if (self.root / "val").is_dir():
            self._splits["val"] = self._load(self.root / "val")
            self._splits["train"] = train
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
            self._splits["train"] = train.subset(tr_idx)
            self._splits["val"] = train.subset(val_idx)
            self.held_out = [train.names[i] for i in val_idx]
        if (self.root / "test").is_dir():
            self._splits["test"] = self._load(self.root / "test")

    def _load_flat_layout(self) -> None:
        volume = self._load(self.root)  # sorted by stem: the slice order of the volume
        n = len(volume)
        by_number = sorted(volume.names, key=_natural_key)
        if by_number != volume.names:
            raise ValueError(f"{self.root} (flat layout): the slices sort differently by name and by number "
                             f"({', '.join(volume.names[:4])}, ... vs {', '.join(by_number[:4])}, ...); zero-pad the "
                             "numbers in the file names so that name order is slice order")
        try:
            split = contiguous_blocks(n, self.val_fraction, self.test_fraction, self.block, self.val_block,
                                      self.test_block, self.gap)
        except ValueError as exc:
            raise ValueError(f"{self.root} (flat layout, {n} slices sorted by name): {exc}") from None
        self._splits["train"] = volume.subset(split.train.tolist())
        self._splits["val"] = volume.subset(split.val.tolist())
        self.blocks = {"val": [int(split.val[0]), int(split.val[-1]) + 1]}
        if len(split.test):
            self._splits["test"] = volume.subset(split.test.tolist())
            self.blocks["test"] = [int(split.test[0]), int(split.test[-1]) + 1]
        self.held_out = list(self._splits["val"].names)

    def split(self, name: str) -> SegSplit:
        """``train`` / ``val`` / ``test``."""
        check_split_name(name)
        if name not in self._splits:
            if self.layout == "flat":
                raise FileNotFoundError(f"folder dataset {self.root} (flat layout) has no test split: set "
                                        "data.source.test_fraction or data.source.test_block")
            raise FileNotFoundError(f"folder dataset {self.root} has no {name}/images and {name}/masks")
        return self._splits[name]

    def fingerprint(self) -> dict:
        """File manifest (relative path, size, sha256) and the held-out images (flat layout: and their blocks)."""
        files = file_manifest(self._files, self.root)
        fp = {
            "source": "folder",
            "sha256": files["sha256"],
            "root": str(self.root),
            "files": files,
            "val_held_out_from_train": list(self.held_out),
            "splits": {k: v.names for k, v in self._splits.items()},
            "skipped_files": [str(Path(f).relative_to(self.root)) for f in self.skipped_files],
        }
        if self.blocks is not None:
            fp["layout"] = "flat"
            fp["held_out_blocks"] = {k: {"slices": v, "names": self._splits[k].names} for k, v in self.blocks.items()}
            fp["gap"] = self.gap
        return fp
