"""DensityMapTask: count by integrating a predicted density map, trained from point annotations.

The model (:class:`calib_seg.models.density_map.DensityMapNet`) predicts a non-negative map; the target is one
Gaussian of mass ``map_scale`` per annotated centre (:mod:`calib_seg.data.points`). Count = integral / scale;
density = count / field-of-view area (beads/mm²) when the pixel size is known, else objects per image. The
integrated density goes through exactly the metrics, per-level table, calibration verdict and per-image
predictions of the global density task (it inherits them); the count and localisation metrics are added on test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.aggregation import SumMetric

from calib_seg.data.points import MapTarget
from calib_seg.metrics.localisation import dots_to_points, f1_from_counts, find_peaks, match_points
from calib_seg.tasks.density import SPEC as DENSITY_SPEC
from calib_seg.tasks.density import DensityRegressionTask
from calib_seg.tasks.spec import Headline

MAP_LOSSES = ("mse", "l1")

SPEC = dataclasses.replace(
    DENSITY_SPEC,
    name="density_map",
    target="calib_seg.tasks.density_map.DensityMapTask",
    headline=(*DENSITY_SPEC.headline, Headline("test/count_mae", "count MAE", "objects/image"),
              Headline("test/count_rmse", "count RMSE", "objects/image"), Headline("test/loc_f1", "localisation F1")),
    models=("calib_seg.models.density_map.DensityMapNet",),
    datamodules=("DensityDataModule", "PointDataModule"),
    losses=MAP_LOSSES,
    required_keys=("task.loss", "task.optimizer", "task.map_scale"),
    report_kind="density-map counting",
    prediction_writer="calib_seg.predict_map.write_map_predictions",
)


class DensityMapTask(DensityRegressionTask):
    """Density-map counter; metrics in beads/mm² (objects per image without a pixel size).

    Args:
        model: ``(B, C, H, W)`` -> non-negative ``(B, 1, H, W)`` map.
        optimizer, scheduler, normalize_input, scheduler_monitor: as :class:`DensityRegressionTask`.
        sigma_px / sigma_um: Gaussian of the target (um wins when given; needs the pixel size).
        map_scale: mass of one object in the map (~100 keeps the map loss away from tiny numbers).
        loss: ``mse`` (default) or ``l1`` on the map.
        count_weight: weight of the count term ``(log1p(count) - log1p(true count))²`` (0 = map loss only).
        block_size / block_weight: local count term (0 = off): the map and its target summed over
            ``block_size`` x ``block_size`` blocks, ``block_weight`` x the per-image sum of
            ``(count - true)² / (true + 1)`` over blocks. Unlike the per-pixel map loss it charges faint, diffuse
            mass (debris, background) as much as the objects it adds up to, wherever it sits.
        image_count_weight: weight of the same term for images without centres (``annotated`` False in the
            batch), against their expected count ``density x FOV area``: image-level supervision. Every term is
            summed per image and divided by the batch size, so an unannotated image weighs as much as an
            annotated one whatever the mix.
        loc_radius_px: peaks within this distance of an annotated centre are matches (localisation F1).
        peak_fraction: a peak counts when it exceeds this fraction of an isolated object's peak height.
    """

    spec = SPEC

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        sigma_px: float | None = 1.0,
        sigma_um: float | None = None,
        map_scale: float = 100.0,
        loss: str = "mse",
        count_weight: float = 0.0,
        image_count_weight: float = 1.0,
        block_size: int = 0,
        block_weight: float = 1.0,
        loc_radius_px: float = 2.0,
        peak_fraction: float = 0.3,
        normalize_input: bool = True,
        scheduler_monitor: str = "val/loss",
    ) -> None:
        if loss not in MAP_LOSSES:
            raise ValueError(f"loss must be one of {MAP_LOSSES}, got {loss!r}")
        # the parent's target transform only serves the pre-flight probe's scale check; metrics use beads/mm²
        super().__init__(model, optimizer, scheduler, target_transform="standardize", loss="mse",
                         normalize_input=normalize_input, scheduler_monitor=scheduler_monitor)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.target = MapTarget(sigma_px=sigma_px, sigma_um=sigma_um, scale=float(map_scale))
        # um per pixel of the training data (0 = unknown: densities are objects per image); in the checkpoint
        self.register_buffer("pixel_size_um", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("sigma_fitted_px", torch.tensor(float(sigma_px or 1.0)))
        self.count_metrics = MetricCollection({"count_mae": MeanAbsoluteError(),
                                               "count_rmse": MeanSquaredError(squared=False)}, prefix="test/")
        self.loc_counts = nn.ModuleDict({k: SumMetric() for k in ("tp", "fp", "fn")})

    def setup(self, stage: str) -> None:
        """Fit input normalisation, learn the pixel size and ask the DataModule for map targets."""
        fitted = bool(self.data_fitted)
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "serve_maps"):
            return
        px = dm.pixel_size_um()
        # the training data's scale; a model initialised from another run (init_from) adopts its new data's
        if not fitted or stage == "fit":
            self.pixel_size_um.fill_(px or 0.0)
            self.sigma_fitted_px.fill_(self.target.sigma_for(px))
        dm.serve_maps(self.target)

    # --- counting -------------------------------------------------------------------------------------------
    def density_map(self, image: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the predicted map (mass ``map_scale`` per object).

        The network's output is in units of an isolated object's peak height (``map_scale / (2 pi sigma²)``),
        so an O(1) output already means objects: Adam does not spend hundreds of steps growing the scale.
        """
        return self.model((image - self.input_mean) / self.input_std) * self._peak_height()

    def _peak_height(self) -> float:
        return self.target.scale / (2 * math.pi * float(self.sigma_fitted_px) ** 2)

    def to_density(self, count: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Objects per image -> beads/mm² over an image of ``shape`` (unchanged without a pixel size)."""
        px = float(self.pixel_size_um)
        return count if px <= 0 else count / (shape[0] * shape[1] * (px * 1e-3) ** 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> density (beads/mm², or objects per image without a pixel size)."""
        dmap = self.density_map(image)
        return self.to_density(dmap.sum(dim=(1, 2, 3)) / self.target.scale, tuple(image.shape[-2:]))

    def _raw(self, image: torch.Tensor) -> torch.Tensor:
        # the parent's preflight/predict paths read _raw through the target transform: give them the density
        return self.target_tf(self(image))

    def _map_loss(self, dmap: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map loss of the annotated images (+ their log-count term), plus the log-count term of the images
        labelled only by density, against ``batch["expected"]`` (density x FOV area)."""
        target = batch["map"].to(dmap)
        ann = batch.get("annotated")
        ann = torch.ones(len(dmap), dtype=torch.bool, device=dmap.device) if ann is None else ann.to(dmap.device).bool()
        c_pred = dmap.sum(dim=(1, 2, 3)) / self.target.scale
        map_fn = F.mse_loss if self.hparams.loss == "mse" else F.l1_loss
        if bool(ann.all()):  # the point-annotated case, exactly as before image-level labels existed
            loss = map_fn(dmap, target)
            if self.hparams.count_weight > 0:
                c_true = target.sum(dim=(1, 2, 3)) / self.target.scale
                loss = loss + self.hparams.count_weight * F.mse_loss(torch.log1p(c_pred), torch.log1p(c_true))
            if self.hparams.block_size:
                loss = loss + self.hparams.block_weight * self._block_errors(dmap, target).mean()
            return loss
        n = len(dmap)
        loss = dmap.new_zeros(())
        if bool(ann.any()):
            loss = loss + map_fn(dmap[ann], target[ann]) * (int(ann.sum()) / n)
            if self.hparams.count_weight > 0:
                c_true = target[ann].sum(dim=(1, 2, 3)) / self.target.scale
                loss = loss + self.hparams.count_weight * (torch.log1p(c_pred[ann]) - torch.log1p(c_true)).pow(2).sum() / n
            if self.hparams.block_size:
                loss = loss + self.hparams.block_weight * self._block_errors(dmap[ann], target[ann]).sum() / n
        expected = batch["expected"].to(dmap)[~ann]
        return loss + self.hparams.image_count_weight * (torch.log1p(c_pred[~ann]) - torch.log1p(expected)).pow(2).sum() / n

    def _block_errors(self, dmap: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) sum over ``block_size`` blocks of ``(count - true count)² / (true count + 1)`` (objects, zero-padded
        edges): a Pearson chi-square, so a dense block's Poisson-sized error weighs no more than a phantom object
        in an empty block."""
        b = int(self.hparams.block_size)
        h, w = dmap.shape[-2:]
        pad = (0, (-w) % b, 0, (-h) % b)
        k = b * b / self.target.scale
        pred, true = (F.avg_pool2d(F.pad(m, pad), b) * k for m in (dmap, target))
        return ((pred - true).pow(2) / (true + 1.0)).sum(dim=(1, 2, 3))

    # --- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._map_loss(self.density_map(batch["image"]).float(), batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]),
                 sync_dist=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        image = batch["image"]
        dmap = self.density_map(image).float()
        count = dmap.sum(dim=(1, 2, 3)) / self.target.scale
        pred = self.to_density(count, tuple(image.shape[-2:]))
        if "map" in batch:
            loss = self._map_loss(dmap, batch)
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                     batch_size=len(pred), sync_dist=True)
        self._record(pred, batch, stage)
        if stage == "test" and "dots" in batch:  # against annotated centres only (not images labelled by density)
            ann = batch["annotated"].bool().to(count.device) if "annotated" in batch else torch.ones_like(count).bool()
            if bool(ann.any()):
                self.count_metrics.update(count[ann], batch["dots"][ann].sum(dim=(1, 2, 3)).to(count))
                self._update_localisation(dmap[ann], batch["dots"][ann])
        return pred

    def peaks(self, dmap: torch.Tensor) -> list[np.ndarray]:
        """Detected objects ``(y, x)`` px of each map in a ``(B, 1, H, W)`` batch of :meth:`density_map` outputs:
        local maxima above ``peak_fraction`` x an isolated object's peak height."""
        window = max(3, 2 * int(round(float(self.sigma_fitted_px))) + 1)
        threshold = self.hparams.peak_fraction * min(self._peak_height(), self.target.scale)
        return find_peaks(dmap.detach(), threshold, window)

    def _update_localisation(self, dmap: torch.Tensor, dots: torch.Tensor) -> None:
        for b, found in enumerate(self.peaks(dmap)):
            tp, fp, fn = match_points(found, dots_to_points(dots[b, 0]), self.hparams.loc_radius_px)
            for key, value in zip(("tp", "fp", "fn"), (tp, fp, fn)):
                self.loc_counts[key].update(torch.tensor(float(value), device=dmap.device))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.count_metrics["count_mae"].update_count:
            for key, value in self.count_metrics.compute().items():
                self.log(key, value.float())
            counts = {k: float(m.compute()) for k, m in self.loc_counts.items()}
            for key, value in f1_from_counts(counts["tp"], counts["fp"], counts["fn"]).items():
                self.log(f"test/{key}", torch.tensor(value, dtype=torch.float32))
        self.count_metrics.reset()
        for m in self.loc_counts.values():
            m.reset()

    def metric_definitions(self) -> dict[str, str]:
        """How each headline number is computed (stored in run.json)."""
        return {
            **super().metric_definitions(),
            "r2": "torchmetrics R2Score of the integrated map (count / FOV area) vs nominal density, beads/mm²",
            "count_mae/count_rmse": "per image, integrated map / map_scale vs the annotated count, objects",
            "loc_precision/recall/f1": f"local maxima of the map above {self.hparams.peak_fraction} x an isolated "
                                       f"object's peak, matched one-to-one to centres within "
                                       f"{self.hparams.loc_radius_px} px",
            "loss": f"{self.hparams.loss} on the map (mass {self.target.scale:g} per object)"
                    + (f" + {self.hparams.count_weight:g} x MSE of log1p(count)" if self.hparams.count_weight else "")
                    + (f" + {self.hparams.block_weight:g} x sum over {self.hparams.block_size}-px blocks of "
                       "(count - true)² / (true + 1)" if self.hparams.block_size else "")
                    + f"; images without centres: {self.hparams.image_count_weight:g} x (log1p(count) - "
                      "log1p(density x FOV area))², every term per image / batch size",
        }
