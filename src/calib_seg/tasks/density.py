"""DensityRegressionTask: image -> beads/mm², trained on a fitted target transform, measured in physical units."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import CatMetric

from calib_seg.metrics.collections import log_stage, stage_metrics
from calib_seg.tasks.optim import configure
from calib_seg.tasks.spec import Headline, TaskSpec
from calib_seg.tasks.transforms import TargetTransform

LOSSES = ("mse", "huber", "poisson_weighted")
#: what the task keeps per evaluated image: prediction, nominal density, dilution, realised count, image index
_STORED = ("pred", "target", "dilution", "count", "index")


_UNIT = "beads/mm²"
SPEC = TaskSpec(
    name="density",
    target="calib_seg.tasks.density.DensityRegressionTask",
    optimized_metric="val/r2",
    mode="max",
    headline=(
        Headline("test/r2", "test R²", may_be_undefined=True),
        Headline("test/r2_oracle", "oracle-counter R² (same test set)", may_be_undefined=True),
        Headline("test/mae", "test MAE", _UNIT), Headline("test/mae_oracle", "oracle-counter MAE", _UNIT),
        Headline("test/rmse", "test RMSE", _UNIT), Headline("test/mape", "test MAPE", "%"),
        Headline("test/max_error", "test max error", _UNIT),
    ),
    progress_keys=("val/r2", "val/mae"),
    hp_metrics=("test/r2", "test/mae", "test/rmse", "test/mape", "val/r2", "val/loss"),
    models=("calib_seg.models.density.DensityCNN", "calib_seg.models.density.DensityResNet"),
    datamodules=("DensityDataModule",),
    losses=LOSSES,
    required_keys=("task.target_transform", "task.loss", "task.optimizer"),
    test_figures="calib_seg.callbacks.figures.density_figures",
    prediction_writer="calib_seg.predict.write_density_predictions",
    report_kind="density regression",
    report_columns=(
        ("job", "job"), ("experiment", "experiment"), ("batch", "batch"), ("filters", "filters"),
        ("params", "params"), ("r2", "R²"), ("mse", "MSE"), ("mae", "MAE"), ("rmse", "RMSE"),
        ("mape", "MAPE [%]"), ("max_error", "max error"), ("r2_oracle", "oracle R²"),
        ("calibration", "calibration"), ("worst_level", "worst level"), ("worst_excess", "worst excess"),
        ("quantification_range", "quantification range"),
        ("epochs", "epochs"), ("time_s", "time"), ("peak_rss_mb", "peak RSS [MiB]"),
        ("peak_cuda_mb", "peak CUDA [MiB]"), ("status", "status"),
    ),
    report_sections="calib_seg.report.density_sections",
    report_figures="calib_seg.report.density_figures",
)


class DensityRegressionTask(pl.LightningModule):
    """Regress bead density (beads/mm²) from an image.

    Args:
        model: an ``nn.Module`` mapping (B, 1, H, W) images to (B,) outputs in transformed units.
        optimizer: partial optimizer, called with ``params=``.
        scheduler: partial LR scheduler called with ``optimizer=``, or None.
        target_transform: ``standardize`` (default), ``log_standardize``, or ``none`` (raw targets, seed failure).
        loss: ``mse`` (default) or ``huber``, on the transformed target; or ``poisson_weighted``: the squared error
            on the transformed target weighted, per image, by the inverse Poisson variance of its count,
            ``1 / (density x FOV area + 1)``, the weights scaled to mean 1 over the training split. Plain MSE lets the
            dense images dominate (a 15 beads/mm² image weighs nothing beside a 7964 one); inverse-variance
            weighting is the least-squares form of the Poisson likelihood, so every dilution is fitted to its own
            counting noise. Needs the FOV area (a known pixel size).
        normalize_input: standardise pixels with the training split's mean/std (stored in the checkpoint).
        scheduler_monitor: metric a plateau scheduler watches.
    """

    spec = SPEC

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        target_transform: str = "standardize",
        loss: str = "mse",
        huber_delta: float = 1.0,
        normalize_input: bool = True,
        scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        # partial optimizers are kept out of hparams: checkpoints must load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.target_tf = TargetTransform(target_transform)
        self.register_buffer("input_mean", torch.tensor(0.0))
        self.register_buffer("input_std", torch.tensor(1.0))
        self.register_buffer("data_fitted", torch.tensor(False))
        # poisson_weighted: FOV area (mm²) and the mean training weight; refitted from the data in every setup
        # (not saved: checkpoints of every loss keep one layout), 0 = not fitted
        self.register_buffer("fov_area", torch.tensor(0.0), persistent=False)
        self.register_buffer("weight_norm", torch.tensor(1.0), persistent=False)
        self.val_metrics = stage_metrics("density", "val")
        self.test_metrics = stage_metrics("density", "test")
        # per-image predictions of each split (gathered over DDP ranks) for the guard (collapse rule), figures and
        # the calibration table; "disable": NaN dilutions/counts of real data must stay aligned, not be dropped
        self.val_store = nn.ModuleDict({k: CatMetric(nan_strategy="disable") for k in _STORED})
        self.test_store = nn.ModuleDict({k: CatMetric(nan_strategy="disable") for k in _STORED})
        self.last_val: dict[str, np.ndarray] = {}
        self.last_test: dict[str, np.ndarray] = {}
        #: validation outputs per 0-based epoch, so the calibration of the best checkpoint's epoch can be recorded
        self.val_by_epoch: dict[int, dict[str, np.ndarray]] = {}

    # --- data-dependent state -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Fit the target transform and input normalisation on the training split, once per model."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "train_targets"):
            return
        if self.hparams.loss == "poisson_weighted":
            self._fit_weights(dm)
        if bool(self.data_fitted):
            return
        self.target_tf.fit(dm.train_targets())
        if self.hparams.normalize_input:
            mean, std = dm.train_pixel_stats()
            self.input_mean.fill_(mean)
            self.input_std.fill_(std)
        self.data_fitted.fill_(True)

    def _fit_weights(self, dm: Any) -> None:
        area = dm.fov_area_mm2() if hasattr(dm, "fov_area_mm2") else None
        if not area:
            raise ValueError("task.loss=poisson_weighted needs the FOV area of the images (a known pixel size); "
                             "this data has none: use task.loss=mse")
        self.fov_area.fill_(float(area))
        self.weight_norm.fill_(float(self._weights(torch.as_tensor(dm.train_targets(), dtype=torch.float64)).mean()))

    def _weights(self, density: torch.Tensor) -> torch.Tensor:
        """Inverse Poisson variance of each image's count (+1 bead, so an empty field stays finite)."""
        return 1.0 / (density.clamp_min(0) * self.fov_area.to(density.dtype) + 1.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> predicted density in beads/mm²."""
        return self.target_tf.inverse(self._raw(image))

    def _raw(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.input_mean) / self.input_std)

    def _loss(self, z_pred: torch.Tensor, z_true: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "huber":
            return F.huber_loss(z_pred, z_true, delta=self.hparams.huber_delta)
        if self.hparams.loss == "poisson_weighted":
            if float(self.fov_area) <= 0:
                raise RuntimeError("poisson_weighted loss used before setup() fitted its weights")
            w = self._weights(density.float()) / self.weight_norm.float()
            return (w * (z_pred - z_true) ** 2).mean()
        return F.mse_loss(z_pred, z_true)

    # --- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z = self._raw(batch["image"])
        loss = self._loss(z.float(), self.target_tf(batch["density"]).float(), batch["density"])
        # sync_dist: under DDP each rank sees a shard; the epoch loss must be the mean over all of them
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(z), sync_dist=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        z = self._raw(batch["image"]).float()
        target = batch["density"]
        loss = self._loss(z, self.target_tf(target).float(), target)
        pred = self.target_tf.inverse(z).float()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(z),
                 sync_dist=True)
        self._record(pred, batch, stage)
        return pred

    def _record(self, pred: torch.Tensor, batch: dict[str, torch.Tensor], stage: str) -> None:
        """Update the stage's metrics and per-image store with predictions in beads/mm²."""
        target = batch["density"]
        nan = torch.full_like(target, float("nan"))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(pred, target, level=batch.get("dilution", nan))
        store = self.val_store if stage == "val" else self.test_store
        store["pred"].update(pred)
        store["target"].update(target)
        store["dilution"].update(batch.get("dilution", nan))
        store["count"].update(batch.get("count", nan))
        # stored as float32 (exact below 2**24 images); -1 when the loader gives no index
        store["index"].update(batch["index"].float() if "index" in batch else torch.full_like(target, -1.0))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        image = batch["image"] if isinstance(batch, dict) else batch
        return self(image)

    def _finish(self, stage: str) -> dict[str, np.ndarray]:
        store = self.val_store if stage == "val" else self.test_store
        out = {k: m.compute().detach().cpu().double().numpy().reshape(-1) for k, m in store.items()}
        for m in store.values():
            m.reset()
        log_stage(self, self.val_metrics if stage == "val" else self.test_metrics, prog_bar={"val/r2"})
        return out

    def on_validation_epoch_end(self) -> None:
        self.last_val = self._finish("val")
        if self._trainer is not None and not self.trainer.sanity_checking:
            self.val_by_epoch[self.current_epoch] = self.last_val

    def on_test_epoch_end(self) -> None:
        self.last_test = self._finish("test")

    # --- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """Optimizer and scheduler (:func:`calib_seg.tasks.optim.configure`: cosine per epoch by default,
        ``task/scheduler=one_cycle`` per step over the whole budget)."""
        return configure(self, self.optimizer_factory, self.scheduler_factory, self.hparams.scheduler_monitor)

    def metric_definitions(self) -> dict[str, str]:
        """How each headline number is computed (stored in run.json)."""
        tf = self.target_tf.kind
        return {
            "r2": f"torchmetrics R2Score on predictions inverted from the '{tf}' target transform, beads/mm²",
            "mae/mse/rmse": "torchmetrics MeanAbsoluteError / MeanSquaredError(squared=True/False), beads/mm²",
            "mape": "torchmetrics MeanAbsolutePercentageError x 100, percent",
            "max_error": "max |pred - target| over the split, beads/mm²",
            "mae_dilution_<d>x": "test MAE of the images of dilution <d> (float64 mean of |pred - target|), beads/mm²",
            "loss": f"{self.hparams.loss} on the '{tf}'-transformed target (unitless)",
        }
