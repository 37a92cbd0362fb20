"""What the segmentation DataModule serves: random training patches, validation tiles, whole images.

- :class:`RandomPatchDataset` + :class:`EpochSampler`: ``length`` random patches per epoch, optionally from a
  minimum-foreground rejection sampler; draw ``i`` of epoch ``e`` is a pure function of (seed, e, i), so runs
  are reproducible whatever ``num_workers`` is.
- :class:`TileDataset`: a deterministic grid of tiles covering every image (validation on held-out images).
- :class:`WholeImageDataset` + :func:`collate_whole`: whole images/slices (test, or ``val_mode="whole"``).

Items are ``{"image": float32 (1,H,W) in [0,1], "mask": float32 (1,H,W) in {0,1}}``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from calib_seg.data.augment import PairAugment
from calib_seg.data.containers import SegSplit
from calib_seg.data.images import to_unit_float
from calib_seg.data.masks import binarize_mask


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
