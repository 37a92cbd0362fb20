"""Counting DataModule: point-annotated images of any size (:mod:`calib_seg.data.sources.point_folder`).

Training draws random crops of ``crop_size`` (flips and right-angle rotations on top); validation and test
see whole images, one per batch (sizes may differ). The density-map task asks for its targets with
:meth:`PointDataModule.serve_maps`; batches are ``{"image", "map", "dots", "density", "dilution", "count",
"annotated", "expected", "index"}`` with ``density`` = annotated count / image area (objects/mm²) or the count
itself without a pixel size, ``dilution`` NaN, ``count`` the annotated count of the (cropped) image, ``annotated``
True and ``expected`` = ``count`` (every image here has its points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from calib_seg.data.density import SplitLoaders
from calib_seg.data.points import MapTarget, density_map, dots_map, inside
from calib_seg.data.sources.point_folder import PointFolder, PointSplit


@dataclass
class _Facts:
    """What the per-image prediction table needs: image names (by index) and the FOV area (None: per image)."""

    names: list[str]
    fov_area_mm2: float | None = None


class _PointDataset(Dataset):
    def __init__(self, data: PointSplit, offset: int, target: MapTarget, px_um: float | None,
                 crop: int | None, augment: bool) -> None:
        self.data, self.offset, self.target, self.px_um = data, offset, target, px_um
        self.crop, self.augment = crop, augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self.data.images[i].astype(np.float32) / self.data.scales[i]
        centres = self.data.centres_px[i]
        if self.crop:
            h, w = img.shape
            ch, cw = min(self.crop, h), min(self.crop, w)
            y0, x0 = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
            img = img[y0:y0 + ch, x0:x0 + cw]
            centres = centres - np.array([y0, x0], float)
        centres = centres[inside(centres, img.shape)]  # objects by centre: a crop keeps the ones it contains
        sigma = self.target.sigma_for(self.px_um)
        stack = torch.from_numpy(np.stack([img, density_map(centres, img.shape, sigma, self.target.scale),
                                           dots_map(centres, img.shape)]))
        if self.augment:
            stack = torch.rot90(stack, int(torch.randint(0, 4, ())), dims=(1, 2))
            if torch.rand(()) < 0.5:
                stack = torch.flip(stack, dims=(2,))
        n = float(len(centres))
        area = None if self.px_um is None else stack.shape[1] * stack.shape[2] * (self.px_um * 1e-3) ** 2
        return {"image": stack[:1].contiguous(), "map": stack[1:2].contiguous(), "dots": stack[2:].contiguous(),
                "density": torch.tensor(n if area is None else n / area, dtype=torch.float32),
                "dilution": torch.tensor(float("nan")), "count": torch.tensor(n, dtype=torch.float32),
                "annotated": torch.tensor(True), "expected": torch.tensor(n, dtype=torch.float32),
                "index": torch.tensor(self.offset + i, dtype=torch.int64)}


class PointDataModule(SplitLoaders):
    """Train/val/test loaders over a point-annotated folder.

    Args:
        source: a :class:`~calib_seg.data.sources.point_folder.PointFolder`.
        crop_size: side of the random training crops (whole images when larger than the image).
        batch_size: crops per training batch (val/test: one whole image per batch).
        val_fraction: share of whole training images held out for validation when there is no ``val/``.
        split_seed: seed of that hold-out.
        augment: flips / 90-degree rotations of training crops.
    """

    def __init__(self, source: PointFolder, crop_size: int = 128, batch_size: int = 8, val_fraction: float = 0.2,
                 split_seed: int = 0, augment: bool = True, num_workers: int = 0) -> None:
        super().__init__()
        self.source, self.crop_size, self.batch_size = source, int(crop_size), int(batch_size)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.augment, self.num_workers = bool(augment), int(num_workers)
        self.splits: dict[str, PointSplit] | None = None
        self.map_target = MapTarget()
        self.beads: _Facts | None = None

    def prepare(self) -> dict[str, PointSplit]:
        """Read the three splits once (holding out whole training images when there is no val/)."""
        if self.splits is None:
            train = self.source.split("train")
            if self.source.has("val"):
                val = self.source.split("val")
            else:
                if len(train) < 2:
                    raise ValueError(f"{self.source.root}: no val/ and only {len(train)} training image(s) to hold out")
                order = np.random.default_rng(self.split_seed).permutation(len(train))
                n_val = min(len(train) - 1, max(1, int(round(self.val_fraction * len(train)))))
                val, train = train.subset(sorted(order[:n_val])), train.subset(sorted(order[n_val:]))
            self.splits = {"train": train, "val": val, "test": self.source.split("test")}
            names = [n for s in ("train", "val", "test") for n in self.splits[s].names]
            self.beads = _Facts(names)
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def serve_maps(self, target: MapTarget) -> None:
        """Use ``target`` (sigma, scale) for the ``map`` of every batch."""
        target.sigma_for(self.pixel_size_um())  # fail now, not in a worker, if sigma_um lacks a pixel size
        self.map_target = target

    def pixel_size_um(self) -> float | None:
        """um per pixel (None: objects per image)."""
        return self.source.pixel_size_um

    def _offset(self, which: str) -> int:
        order = ("train", "val", "test")
        return sum(len(self.prepare()[s]) for s in order[: order.index(which)])

    def _loader(self, which: str, train: bool) -> DataLoader:
        ds = _PointDataset(self.prepare()[which], self._offset(which), self.map_target, self.pixel_size_um(),
                           self.crop_size if train else None, train and self.augment)
        return DataLoader(ds, batch_size=self.batch_size if train else 1, shuffle=train,
                          drop_last=train and len(ds) > self.batch_size, num_workers=self.num_workers)

    def train_targets(self) -> np.ndarray:
        """Annotated densities (or counts) of the training images."""
        train, px = self.prepare()["train"], self.pixel_size_um()
        n = np.array([len(c) for c in train.centres_px], float)
        if px is None:
            return n
        return n / np.array([im.size * (px * 1e-3) ** 2 for im in train.images])

    def train_pixel_stats(self) -> tuple[float, float]:
        """Mean and std of training pixels in [0, 1] units."""
        train = self.prepare()["train"]
        x = np.concatenate([(im.astype(np.float64) / s).ravel() for im, s in zip(train.images, train.scales)])
        return float(x.mean()), float(x.std() + 1e-8)

    def reference_metrics(self, which: str = "test") -> dict[str, float]:
        """No physical reference: the annotated count is the target itself."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """The source's fingerprint plus split sizes."""
        return {**self.source.fingerprint(), "split_sizes": {k: len(v) for k, v in self.prepare().items()},
                "crop_size": self.crop_size}
