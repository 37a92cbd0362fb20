"""Segmentation data module: random training patches, leak-free validation, whole-image test.

Segmentation sources (:mod:`calib_seg.data.sources`: ``epfl``, ``image_folder``, ``mito_synth``) decide *which*
images belong to which split; this module decides how they are cut into batches (datasets in
:mod:`calib_seg.data.patches`):

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

from typing import Any

from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from calib_seg.data.augment import PairAugment
from calib_seg.data.containers import SegSplit
from calib_seg.data.patches import (
    EpochSampler,
    RandomPatchDataset,
    TileDataset,
    WholeImageDataset,
    collate_whole,
)
from calib_seg.data.sources.protocol import SegmentationSource


class SegmentationDataModule(LightningDataModule):
    """Binary segmentation data (mitochondria in EM) from a synthetic, EPFL-stack or folder source.

    Args:
        source: a :class:`~calib_seg.data.sources.protocol.SegmentationSource` (``split(name) -> SegSplit``,
            ``fingerprint() -> dict``).
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

    def whole_val_dataloader(self) -> DataLoader:
        """The validation images whole (whatever ``val_mode``): what inference choices on validation score."""
        return self._whole_loader(self.get_split("val"), 1)

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
