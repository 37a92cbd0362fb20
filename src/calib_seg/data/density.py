"""Bead density DataModule: splits a :class:`~calib_seg.data.containers.BeadSet` and serves its batches.

A density source (:mod:`calib_seg.data.sources`: ``beads_synth``, ``bead_folder``) turns configuration into a
BeadSet (all images and labels in memory, as stored: uint8/uint16 plus the scale that maps them to [0, 1]).
:class:`DensityDataModule` splits it the same way whatever its origin (stratified by dilution, seeded, see
:mod:`calib_seg.data.splits`), and serves batches ``{"image", "density", "dilution", "count", "index"}``
(see docs/CONVENTIONS.md).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from calib_seg.data.containers import BeadSet
from calib_seg.data.points import MapTarget, density_map, dots_map
from calib_seg.data.sources.protocol import DensitySource
from calib_seg.data.splits import Split, split_note, stratified_split

log = logging.getLogger(__name__)


class _BeadDataset(Dataset):
    """Serves one split of a BeadSet as float tensors, with optional flips / 90-degree rotations.

    Flips and right-angle rotations preserve the bead count, so they are label-safe augmentation.
    """

    def __init__(self, beads: BeadSet, indices: np.ndarray, augment: bool,
                 maps: tuple[MapTarget, float] | None = None) -> None:
        self.beads, self.indices, self.augment = beads, np.asarray(indices), augment
        #: (target, pixel size in um) when the task trains on density maps: each item then carries "map", "dots"
        self.maps = maps
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _targets(self, j: int, shape: tuple[int, int]) -> torch.Tensor:
        """(2, H, W): density map and dots of image ``j``, computed once (augmentation moves them afterwards);
        zeros for an image without centres (labelled by its density only)."""
        if j not in self._cache:
            target, px_um = self.maps
            if self._annotated(j):
                centres = np.asarray(self.beads.centres_um[j], float).reshape(-1, 2) / px_um
                dmap = density_map(centres, shape, target.sigma_for(px_um), target.scale)
                self._cache[j] = torch.from_numpy(np.stack([dmap, dots_map(centres, shape)]))
            else:
                self._cache[j] = torch.zeros((2, *shape))
        return self._cache[j]

    def _annotated(self, j: int) -> bool:
        return self.beads.centres_um is not None and self.beads.centres_um[j] is not None

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        img = torch.from_numpy(self.beads.images[j].astype(np.float32) / self.beads.scale)[None]
        extra = {}
        if self.maps is not None:  # stacked with the image so flips and rotations move both alike
            img = torch.cat([img, self._targets(j, img.shape[1:])])
        if self.augment:
            k = int(torch.randint(0, 4, ()).item())
            img = torch.rot90(img, k, dims=(1, 2))
            if torch.rand(()) < 0.5:
                img = torch.flip(img, dims=(2,))
        if self.maps is not None:
            img, extra["map"], extra["dots"] = img[:1], img[1:2].contiguous(), img[2:].contiguous()
            # image-level supervision: unannotated images train the map's integral against density x FOV area
            extra["annotated"] = torch.tensor(self._annotated(j))
            extra["expected"] = torch.tensor(self.beads.density[j] * self.beads.fov_area_mm2, dtype=torch.float32)
        return {
            **extra,
            "image": img.contiguous(),
            "density": torch.tensor(self.beads.density[j], dtype=torch.float32),
            "dilution": torch.tensor(self.beads.dilution[j], dtype=torch.float32),
            "count": torch.tensor(self.beads.count[j], dtype=torch.float32),
            # which image this is (BeadSet.names[index]): per-image predictions on disk, DDP padding removed
            "index": torch.tensor(j, dtype=torch.int64),
        }


class SplitLoaders(pl.LightningDataModule):
    """Lightning's three loader hooks from one ``_loader(split, train)``: shuffled training batches, whole
    validation/test items (the bead and point-folder DataModules share it)."""

    def _loader(self, which: str, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class DensityDataModule(SplitLoaders):
    """Splits a bead source (stratified by dilution, seeded) and serves train/val/test loaders.

    Args:
        source: a :class:`~calib_seg.data.sources.protocol.DensitySource` (``load() -> BeadSet``), e.g.
            :class:`~calib_seg.data.sources.beads_synth.SyntheticBeads`, :class:`~calib_seg.data.sources.bead_folder.BeadFolder`.
        batch_size: images per training batch.
        val_fraction, test_fraction: share of each dilution level in val and test.
        split_seed: seed of the split (independent of the simulation seed).
        holdout_dilutions: levels kept out of train/val and used as the whole test set (extrapolation).
        augment: random flips / 90-degree rotations on the training split.
        num_workers: DataLoader workers (0 = in the main process).
        eval_batch_size: batch size for val/test (defaults to ``batch_size``).
    """

    def __init__(
        self,
        source: DensitySource,
        batch_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        holdout_dilutions: list[float] | None = None,
        augment: bool = True,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)
        self.holdout_dilutions = [float(d) for d in (holdout_dilutions or [])]
        self.augment, self.num_workers, self.pin_memory = bool(augment), int(num_workers), bool(pin_memory)
        self.beads: BeadSet | None = None
        self.split: Split | None = None
        self.split_note: str | None = None
        self.map_target: MapTarget | None = None

    def serve_maps(self, target: MapTarget) -> None:
        """Add ``"map"`` (B, 1, H, W) density-map targets, ``"dots"`` (B, 1, H, W) centres per pixel,
        ``"annotated"`` (B,) bool and ``"expected"`` (B,) density x FOV area to every batch (the density-map task
        asks for them).

        Images with centres (synthetic data, or those a bead folder's ``centres.csv`` lists) get their Gaussian
        map; the others get an empty map and ``annotated`` False: the task trains their map's integral against
        ``expected`` (image-level supervision). Needs the pixel size (FOV area).
        """
        beads = self.prepare()
        if self.pixel_size_um() is None:
            raise ValueError("density maps need the pixel size (data.source.pixel_size_um, or dataset.json): "
                             "centres are in um and image-level labels need the FOV area (density x area = count)")
        n_ann = 0 if beads.centres_um is None else sum(c is not None for c in beads.centres_um)
        if n_ann < len(beads):
            log.info("density maps: %d of %d images have bead centres; the other %d are trained on their expected "
                     "count (density x FOV area %.4g mm²)", n_ann, len(beads), len(beads) - n_ann, beads.fov_area_mm2)
        self.map_target = target

    def pixel_size_um(self) -> float | None:
        """um per pixel of the (square) images, from the FOV area; None when unknown."""
        beads = self.prepare()
        if beads.fov_area_mm2 is None:
            return None
        return float(np.sqrt(beads.fov_area_mm2) * 1e3 / beads.images.shape[-1])

    def prepare(self) -> BeadSet:
        """Load (or simulate) the data and split it, once; later calls return the cached set."""
        if self.beads is None:
            self.beads = self.source.load(progress=True)
            self.split = stratified_split(self.beads.dilution, self.val_fraction, self.test_fraction,
                                          self.split_seed, self.holdout_dilutions)
            self.split_note = split_note(self.split, self.val_fraction, self.test_fraction, self.holdout_dilutions)
            if self.split_note:  # never silently: the log and run.json (data_fingerprint.split_note) say so
                log.warning("%s", self.split_note)
        return self.beads

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, which: str, train: bool) -> DataLoader:
        beads = self.prepare()
        idx = getattr(self.split, which)
        return DataLoader(
            _BeadDataset(beads, idx, augment=train and self.augment,
                         maps=None if self.map_target is None else (self.map_target, self.pixel_size_um())),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # R2Score needs >= 2 samples per update in DDP shards; a trailing batch of 1 would also make
            # BatchNorm fail, so drop it in training only (evaluation sees every image).
            drop_last=train and len(idx) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    # --- what the task and the run record need to know about the data -----------------------------------
    def train_targets(self) -> np.ndarray:
        """Nominal densities of the training split (to fit the target transform on train only)."""
        beads = self.prepare()
        return beads.density[self.split.train]

    def fov_area_mm2(self) -> float | None:
        """Field-of-view area of one image in mm² (None when the pixel size is unknown)."""
        return self.prepare().fov_area_mm2

    def train_pixel_stats(self, max_images: int = 64) -> tuple[float, float]:
        """Mean and std of training pixels in [0, 1] units (to standardise the network input)."""
        beads = self.prepare()
        idx = self.split.train[:: max(1, len(self.split.train) // max_images)]
        x = beads.images[idx].astype(np.float64) / beads.scale
        return float(x.mean()), float(x.std() + 1e-8)

    def oracle_density(self, which: str = "test") -> np.ndarray | None:
        """Realised count / FOV area for a split: the Poisson floor no counter can beat (None if unknown)."""
        beads = self.prepare()
        idx = getattr(self.split, which)
        if beads.fov_area_mm2 is None or np.isnan(beads.count[idx]).any():
            return None
        return beads.count[idx] / beads.fov_area_mm2

    def split_targets(self, which: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(density, dilution) of a split, in loader order."""
        beads = self.prepare()
        idx = getattr(self.split, which)
        return beads.density[idx], beads.dilution[idx]

    def reference_metrics(self, which: str = "test") -> dict[str, float]:
        """R² and MAE of the oracle counter on a split (empty when counts are unknown, e.g. real data)."""
        from calib_seg.metrics.functional import oracle_metrics

        return oracle_metrics(self.oracle_density(which), self.split_targets(which)[0], which)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data of this run: source parameters or file-manifest hash, and split sizes."""
        beads = self.prepare()
        out = {**beads.fingerprint, "split_seed": self.split_seed, "holdout_dilutions": self.holdout_dilutions,
               "split_sizes": self.split.sizes(), "split_note": self.split_note}
        if self.map_target is not None:  # density maps: how many images of each split are point-annotated
            has = [beads.centres_um is not None and c is not None for c in (beads.centres_um or [None] * len(beads))]
            out["annotated_images"] = {k: int(sum(has[j] for j in getattr(self.split, k)))
                                       for k in ("train", "val", "test")}
        return out
