"""Segmentation data module: random training patches, leak-free validation, whole-image test.

Sources (``EPFLSource``, ``FolderSource`` in :mod:`calib_seg.data.em`, ``MitoSynthSource`` in
:mod:`calib_seg.data.mito_synth`) decide *which* images belong to which split; this module decides how they
are cut into batches:

- train: ``patches_per_epoch`` random ``patch_size`` patches from the training images, optionally with a
  minimum-foreground rejection sampler; sample ``i`` of epoch ``e`` is a pure function of (seed, e, i), so
  runs are reproducible whatever ``num_workers`` is.
- val: a deterministic grid of tiles covering every validation image (``val_mode="tiles"``) or whole images
  (``val_mode="whole"``). Validation images are whole held-out images/slices, never tiles of training images.
- test: whole images/slices, stacked into ``(B,1,H,W)`` when all shapes match (else batch size 1); the task
  runs tiled inference over them.

Batches are ``{"image": float32 (B,1,H,W) in [0,1], "mask": float32 (B,1,H,W) in {0,1}}``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from calib_seg.data.augment import PairAugment
from calib_seg.data.em import SegSplit, binarize_mask, to_unit_float


class SegmentationSource(Protocol):
    """What the data module needs from a source."""

    def split(self, name: str) -> SegSplit: ...

    def fingerprint(self) -> dict: ...


# ------------------------------------------------------------------------------------------------ datasets
class RandomPatchDataset(Dataset):
    """Random square patches from a split; item ``idx`` is deterministic given ``(seed, idx)``.

    The index is a global draw number (see :class:`EpochSampler`), so epochs see fresh patches.

    Args:
        split: training images and masks.
        patch_size: side of the square patch.
        length: patches per epoch.
        seed: base seed.
        min_foreground: foreground fraction a patch must reach when the rejection sampler is active.
        min_foreground_prob: probability that a given sample uses the rejection sampler (the rest are
            uniform, so the model still sees background-only patches).
        augment: paired augmentation or ``None``.
        max_tries: rejection attempts before the patch with the most foreground seen is used.
    """

    def __init__(
        self,
        split: SegSplit,
        patch_size: int,
        length: int,
        seed: int = 0,
        min_foreground: float = 0.0,
        min_foreground_prob: float = 1.0,
        augment: PairAugment | None = None,
        max_tries: int = 50,
    ):
        self.split, self.patch_size, self.length, self.seed = split, int(patch_size), int(length), int(seed)
        self.min_foreground, self.min_foreground_prob = float(min_foreground), float(min_foreground_prob)
        self.augment, self.max_tries = augment, int(max_tries)
        shapes = np.array(split.shapes(), dtype=np.int64)
        # sample images in proportion to the number of valid patch positions, i.e. uniformly over positions
        positions = (shapes[:, 0] - self.patch_size + 1) * (shapes[:, 1] - self.patch_size + 1)
        self._shapes = shapes
        self._p = positions / positions.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(idx)])
        p = self.patch_size
        require = self.min_foreground > 0 and rng.random() < self.min_foreground_prob
        best: tuple[float, int, int, int] | None = None
        for _ in range(self.max_tries if require else 1):
            k = int(rng.choice(len(self._p), p=self._p))
            h, w = self._shapes[k]
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            fg = float(np.count_nonzero(self.split.masks[k][y : y + p, x : x + p])) / (p * p)
            if best is None or fg > best[0]:
                best = (fg, k, y, x)
            if fg >= self.min_foreground:
                break
        _, k, y, x = best
        image = to_unit_float(self.split.images[k][y : y + p, x : x + p], self.split.names[k])
        mask = binarize_mask(self.split.masks[k][y : y + p, x : x + p])
        img_t, msk_t = torch.from_numpy(np.ascontiguousarray(image))[None], torch.from_numpy(mask)[None]
        if self.augment is not None:
            g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            img_t, msk_t = self.augment(img_t, msk_t, g)
        return {"image": img_t, "mask": msk_t}


class EpochSampler(Sampler[int]):
    """Yields draw numbers ``epoch * length + i``; Lightning calls ``set_epoch`` at every epoch start."""

    def __init__(self, length: int):
        self.length, self.epoch = int(length), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))

    def __len__(self) -> int:
        return self.length


def tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of non-overlapping tiles covering ``size``; the last one is shifted to end at the edge."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


class TileDataset(Dataset):
    """Deterministic grid of tiles covering every image of a split (validation on held-out images)."""

    def __init__(self, split: SegSplit, tile: int):
        self.split, self.tile = split, int(tile)
        self.index = [
            (k, y, x)
            for k, (h, w) in enumerate(split.shapes())
            for y in tile_starts(h, self.tile)
            for x in tile_starts(w, self.tile)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, y, x = self.index[i]
        t = self.tile
        image = to_unit_float(self.split.images[k][y : y + t, x : x + t], self.split.names[k])
        mask = binarize_mask(self.split.masks[k][y : y + t, x : x + t])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "mask": torch.from_numpy(mask)[None],
        }


class WholeImageDataset(Dataset):
    """Whole images/slices of a split, as ``(1,H,W)`` tensors."""

    def __init__(self, split: SegSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = to_unit_float(self.split.images[i], self.split.names[i])
        mask = binarize_mask(self.split.masks[i])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "mask": torch.from_numpy(mask)[None],
        }


def collate_whole(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack whole images into ``(B,1,H,W)``; refuses mixed sizes (the data module then uses batch size 1)."""
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch whole images of different sizes {sorted(shapes)}; use batch_size=1")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# ------------------------------------------------------------------------------------------- data module
class SegmentationDataModule(LightningDataModule):
    """Binary segmentation data (mitochondria in EM) from a synthetic, EPFL-stack or folder source.

    Args:
        source: object with ``split(name) -> SegSplit`` and ``fingerprint() -> dict`` (see module doc).
        patch_size: training (and validation tile) patch side in pixels.
        patches_per_epoch: random training patches per epoch.
        min_foreground: rejection sampler threshold (foreground fraction); 0 disables it.
        min_foreground_prob: fraction of training samples that must pass ``min_foreground``.
        batch_size: training and validation batch size.
        num_workers: DataLoader worker processes.
        augment: ``True`` for the default :class:`PairAugment`, ``False``/``None`` for none, or an instance.
        seed: patch sampling and augmentation seed.
        val_mode: ``"tiles"`` (grid tiles of the held-out images) or ``"whole"`` (whole held-out images).
        test_batch_size: whole test images per batch when they all share a shape (else 1).
        pin_memory: passed to the DataLoaders.
    """

    def __init__(
        self,
        source: SegmentationSource,
        patch_size: int = 256,
        patches_per_epoch: int = 1000,
        min_foreground: float = 0.0,
        min_foreground_prob: float = 0.5,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool | PairAugment | None = True,
        seed: int = 0,
        val_mode: str = "tiles",
        test_batch_size: int = 1,
        pin_memory: bool = False,
    ):
        super().__init__()
        if patch_size < 1 or patches_per_epoch < 1 or batch_size < 1 or test_batch_size < 1:
            raise ValueError("patch_size, patches_per_epoch, batch_size and test_batch_size must be >= 1")
        if not 0.0 <= min_foreground <= 1.0 or not 0.0 <= min_foreground_prob <= 1.0:
            raise ValueError("min_foreground and min_foreground_prob must lie in [0, 1]")
        if val_mode not in ("tiles", "whole"):
            raise ValueError(f"val_mode must be 'tiles' or 'whole', got {val_mode!r}")
        self.source = source
        self.patch_size, self.patches_per_epoch = int(patch_size), int(patches_per_epoch)
        self.min_foreground, self.min_foreground_prob = float(min_foreground), float(min_foreground_prob)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.val_mode, self.test_batch_size, self.pin_memory = (
            val_mode,
            int(test_batch_size),
            bool(pin_memory),
        )
        if augment is True:
            augment = PairAugment()
        self.augment = augment or None
        self._splits: dict[str, SegSplit] = {}

    # -- splits
    def get_split(self, name: str) -> SegSplit:
        """The validated split ``train``/``val``/``test`` (loaded once)."""
        if name not in self._splits:
            split = self.source.split(name)
            if len(split) == 0:
                raise ValueError(f"the {name} split of {type(self.source).__name__} is empty")
            if name == "train":
                small = [(n, s) for n, s in zip(split.names, split.shapes()) if min(s) < self.patch_size]
                if small:
                    raise ValueError(
                        f"patch_size={self.patch_size} is larger than training image(s) "
                        f"{', '.join(f'{n} {s}' for n, s in small[:5])}; lower data.patch_size"
                    )
            if name == "val" and self.val_mode == "tiles":
                small = [(n, s) for n, s in zip(split.names, split.shapes()) if min(s) < self.patch_size]
                if small:
                    raise ValueError(
                        f"validation image(s) {', '.join(f'{n} {s}' for n, s in small[:5])} are smaller than "
                        f"patch_size={self.patch_size}; use data.val_mode=whole or a smaller patch_size"
                    )
            self._splits[name] = split
        return self._splits[name]

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the splits the stage needs (errors surface before training)."""
        if stage in (None, "fit"):
            self.get_split("train")
            self.get_split("val")
        if stage in (None, "validate"):
            self.get_split("val")
        if stage in (None, "test"):
            self.get_split("test")

    # -- loaders
    def _loader(self, ds: Dataset, batch_size: int, **kw: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        ds = RandomPatchDataset(
            self.get_split("train"),
            self.patch_size,
            self.patches_per_epoch,
            seed=self.seed,
            min_foreground=self.min_foreground,
            min_foreground_prob=self.min_foreground_prob,
            augment=self.augment,
        )
        return self._loader(ds, self.batch_size, sampler=EpochSampler(len(ds)), drop_last=False)

    def val_dataloader(self) -> DataLoader:
        split = self.get_split("val")
        if self.val_mode == "tiles":
            return self._loader(TileDataset(split, self.patch_size), self.batch_size, shuffle=False)
        return self._whole_loader(split, self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._whole_loader(self.get_split("test"), self.test_batch_size)

    def _whole_loader(self, split: SegSplit, batch_size: int) -> DataLoader:
        same = len(set(split.shapes())) == 1
        return self._loader(
            WholeImageDataset(split), batch_size if same else 1, shuffle=False, collate_fn=collate_whole
        )

    # -- run record
    def foreground_fraction(self, split: str) -> float:
        """Pixel-weighted foreground fraction of ``split`` (= Jaccard of an all-foreground prediction)."""
        return self.get_split(split).foreground_fraction()

    def fingerprint(self) -> dict:
        """What data this run saw: the source's fingerprint (``sha256`` identifies the images) plus sampling."""
        return {
            **self.source.fingerprint(),
            "sampling": {
                "patch_size": self.patch_size,
                "patches_per_epoch": self.patches_per_epoch,
                "min_foreground": self.min_foreground,
                "min_foreground_prob": self.min_foreground_prob,
                "batch_size": self.batch_size,
                "augment": repr(self.augment),
                "seed": self.seed,
                "val_mode": self.val_mode,
            },
        }
