"""LightningModule for binary (mitochondria) segmentation: loss, honest metrics, whole-image evaluation.

The seed project reported "Jaccard" ~0.08 computed by multiplying probabilities, and nobody noticed that this is
about the foreground fraction of the data. Here:

* every metric is a torchmetrics object fed **probabilities** (``torch.sigmoid(logits)``), thresholded by the
  metric at ``threshold`` (we never pass logits: ``BinaryJaccardIndex`` would silently sigmoid them only when a
  value falls outside [0, 1], making the result depend on the batch);
* the trivial all-foreground baseline (IoU of predicting everything foreground = foreground fraction) is logged
  next to each Jaccard, so a number near it is visibly meaningless;
* test images are evaluated whole (tiled with overlap when ``tile_size`` is set), as the literature reports it;
* test also logs a Jaccard-vs-threshold curve and the best threshold, while the headline stays at ``threshold``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import nn

from calib_seg.metrics.collections import log_stage, stage_metrics
from calib_seg.models.tiling import predict_padded, predict_tiled, size_divisor
from calib_seg.tasks.optim import configure, describe
from calib_seg.tasks.seg_inference import make_postprocess, tta_proba
from calib_seg.tasks.seg_selection import AUTO, select_inference
from calib_seg.tasks.spec import Headline, TaskSpec

__all__ = ["SegmentationTask", "build_loss", "LOSSES"]

LOSSES = ("focal", "dice", "focal_dice", "bce", "bce_dice", "bce_lovasz")
DEFAULT_CURVE = tuple(round(0.1 * i, 2) for i in range(1, 10))


class _BCE(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on logits with the mask cast to the logits' dtype (masks may arrive as uint8)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target.to(logits.dtype))


class _SumLoss(nn.Module):
    """Sum of several losses on the same (logits, target) pair."""

    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def build_loss(name: str) -> nn.Module:
    """Loss on logits by name: ``focal`` (smp binary focal, gamma 2), ``dice`` (smp soft Dice), ``focal_dice``,
    ``bce`` (binary cross-entropy), ``bce_dice`` (BCE + soft Dice) or ``bce_lovasz`` (BCE + smp's Lovász hinge, a
    convex surrogate of the Jaccard loss at threshold 0.5 on the logits, over the whole batch)."""
    if name == "focal":
        return FocalLoss(mode="binary", gamma=2.0)
    if name == "dice":
        return DiceLoss(mode="binary", from_logits=True)
    if name == "focal_dice":
        return _SumLoss(FocalLoss(mode="binary", gamma=2.0), DiceLoss(mode="binary", from_logits=True))
    if name == "bce":
        return _BCE()
    if name == "bce_dice":
        return _SumLoss(_BCE(), DiceLoss(mode="binary", from_logits=True))
    if name == "bce_lovasz":
        return _SumLoss(_BCE(), LovaszLoss(mode="binary", from_logits=True, per_image=False))
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def _default_optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)


SPEC = TaskSpec(
    name="segmentation",
    target="calib_seg.tasks.segmentation.SegmentationTask",
    optimized_metric="val/jaccard",
    mode="max",
    headline=(Headline("test/jaccard", "test Jaccard (foreground)"),
              Headline("test/jaccard_all_foreground", "all-foreground Jaccard (trivial)"),
              Headline("test/dice", "test Dice")),
    progress_keys=("val/jaccard", "val/dice"),
    hp_metrics=("test/jaccard", "test/dice", "val/jaccard", "val/loss"),
    models=("calib_seg.models.unet.UNet", "calib_seg.models.unet.AttentionUNet",
            "calib_seg.models.unet.AttentionResUNet", "calib_seg.models.smp_factory.build_smp"),
    datamodules=("SegmentationDataModule",),
    losses=LOSSES,
    required_keys=("task.loss", "task.threshold", "task.optimizer"),
    test_figures="calib_seg.callbacks.figures.segmentation_figures",
    prediction_writer="calib_seg.predict.write_segmentation_predictions",
    report_kind="segmentation (HPO)",
    report_columns=(
        ("job", "job"), ("arch", "architecture"), ("lr", "lr"), ("batch", "batch"),
        ("best_val", "best val Jaccard"), ("jaccard", "test Jaccard"),
        ("jaccard_all_foreground", "all-fg Jaccard"), ("dice", "test Dice"), ("best_epoch", "epochs to best"),
        ("epochs", "epochs"), ("time_s", "time"), ("peak_rss_mb", "peak RSS [MiB]"), ("status", "status"),
    ),
    report_sections="calib_seg.report.segmentation_sections",
    report_figures="calib_seg.report.segmentation_figures",
)


class SegmentationTask(pl.LightningModule):
    """Binary segmentation with a model that outputs one logit channel.

    Args:
        model: ``nn.Module`` mapping ``(B, 1, H, W)`` images to ``(B, 1, H, W)`` logits.
        optimizer: ``functools.partial`` of a torch optimizer taking the parameters (Adam lr 1e-3 if None).
        scheduler: ``functools.partial`` of a LR scheduler taking the optimizer, or None. The config default is
            ``ReduceLROnPlateau(mode="max")`` driven by ``scheduler_monitor``.
        loss: ``"focal"`` (smp ``FocalLoss(mode="binary", gamma=2)``), ``"dice"`` or ``"focal_dice"``.
        threshold: probability threshold of every headline metric, or ``"auto"``: chosen on the validation
            images after training (:mod:`calib_seg.tasks.seg_selection`) and used for test; validation during
            training (checkpointing, early stopping) then stays at 0.5.
        tile_size: tile for validation/test/predict inference; None = whole image at once (reflect-padded to the
            model's size divisor when needed).
        tile_overlap: overlap between tiles (pixels) when tiling.
        tile_batch_size: tiles per forward pass when tiling.
        thresholds_curve: thresholds of the test Jaccard curve (``test/jaccard_t0.10`` ...).
        scheduler_monitor: metric the scheduler watches (``val/jaccard``; maximised).
        tta: test/predict probabilities are the mean over the 8 flips/90-degree rotations (validation during
            training stays plain); ``"auto"`` = on or off, whichever scores higher on validation.
        postprocess: ``{median: odd px, min_size: px}`` applied to test/predict probabilities (None = off); see
            :mod:`calib_seg.tasks.seg_inference`; ``"auto"`` = the best of ``seg_selection.POSTPROCESS_GRID`` on
            validation.

    Load a checkpoint with ``SegmentationTask.load_from_checkpoint(path, model=<same architecture>)``: the model
    is not stored in the hyperparameters, its weights are in the state dict.
    """

    spec = SPEC

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        loss: str = "focal",
        threshold: float | str = 0.5,
        tile_size: int | None = None,
        tile_overlap: int = 32,
        tile_batch_size: int = 4,
        thresholds_curve: Sequence[float] = DEFAULT_CURVE,
        scheduler_monitor: str = "val/jaccard",
        tta: bool | str = False,
        postprocess: dict[str, int] | str | None = None,
    ):
        super().__init__()
        #: the options to choose on validation after training (empty: nothing is chosen, the config rules)
        self.auto = {k: v for k, v in (("threshold", threshold), ("tta", tta), ("postprocess", postprocess))
                     if isinstance(v, str) and v == AUTO}
        threshold = 0.5 if "threshold" in self.auto else threshold
        if isinstance(tta, str) and tta != AUTO or isinstance(postprocess, str) and postprocess != AUTO:
            raise ValueError(f"tta/postprocess strings must be {AUTO!r}, got {tta!r}, {postprocess!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        curve = tuple(float(t) for t in thresholds_curve)
        if not curve or not all(0.0 < t < 1.0 for t in curve):
            raise ValueError(f"thresholds_curve must be non-empty values in (0, 1), got {thresholds_curve}")
        if tile_size is not None and not 0 <= int(tile_overlap) < int(tile_size):
            raise ValueError(
                f"tile_overlap must satisfy 0 <= overlap < tile_size, got {tile_overlap}, {tile_size}"
            )
        # The model is saved in the state dict; the optimizer/scheduler partials are kept out of hparams (and
        # recorded as plain strings) so checkpoints load with torch.load(weights_only=True), Lightning's default.
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.hparams["optimizer"] = describe(optimizer) if optimizer is not None else "Adam(lr=0.001)"
        self.hparams["scheduler"] = describe(scheduler)
        self.hparams["thresholds_curve"] = list(curve)  # a Hydra ListConfig would not load with weights_only
        self.model = model
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.loss_fn = build_loss(loss)
        self.thresholds_curve = curve
        #: the validation choice applied (None until :meth:`choose_on_validation` / :meth:`apply_choice`)
        self.inference_choice: dict[str, Any] | None = None
        self.val_metrics = stage_metrics("segmentation", "val", threshold=float(threshold))
        self.val_threshold = float(threshold)
        self._set_inference(float(threshold), bool(tta) and "tta" not in self.auto, None if "postprocess" in self.auto else postprocess)

    def _set_inference(self, threshold: float, tta: bool, postprocess: Any) -> None:
        """Threshold, TTA and post-processing of test/predict, and the test metrics at that threshold."""
        self.threshold = float(threshold)
        self.tta = bool(tta)
        self.postprocess = make_postprocess(postprocess, self.threshold)
        if "postprocess" not in self.auto:
            self.hparams["postprocess"] = {"median": self.postprocess.median, "min_size": self.postprocess.min_size}
        # headline metrics at `threshold`, the all-foreground baseline and the Jaccard-vs-threshold curve
        self.test_metrics = stage_metrics("segmentation", "test", threshold=self.threshold,
                                          thresholds_curve=self.thresholds_curve).to(self.device)

    def choose_on_validation(self, batches: Any) -> dict[str, Any]:
        """Choose the ``"auto"`` options on whole validation images (``batches``), apply and return the choice
        (see :func:`calib_seg.tasks.seg_selection.select_inference`)."""
        was_training = self.training
        self.eval()
        try:
            plain = lambda x: self.plain_proba(x.to(self.device))  # noqa: E731
            configured_pp = {"median": self.postprocess.median, "min_size": self.postprocess.min_size}
            choice = select_inference(plain, batches, self.auto.get("threshold", self.threshold),
                                      self.auto.get("tta", self.tta), self.auto.get("postprocess", configured_pp))
        finally:
            self.train(was_training)
        self.apply_choice(choice)
        return choice

    def apply_choice(self, choice: dict[str, Any]) -> None:
        """Use a recorded validation choice (``run.json``'s ``inference_choice``) for test and predict."""
        self._set_inference(choice["threshold"], choice["tta"], choice["postprocess"])
        self.inference_choice = {k: choice[k] for k in ("threshold", "tta", "postprocess", "val_jaccard",
                                                        "searched", "source") if k in choice}

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model for a batch whose size the model accepts."""
        return self.model(x)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for whole images of any size: tiled if ``tile_size`` is set, else one (padded) pass."""
        tile = self.hparams.tile_size
        divisor = size_divisor(self.model)
        if tile is None:
            return predict_padded(self.model, images, divisor)
        return predict_tiled(
            self.model,
            images,
            tile=int(tile),
            overlap=int(self.hparams.tile_overlap),
            batch_size=int(self.hparams.tile_batch_size),
            align=divisor,  # tiles on the model's pooling grid, so tiled == untiled away from tile edges
        )

    def plain_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities for whole images without TTA or post-processing: the validation map, and
        the one TTA averages and the validation choice starts from."""
        return torch.sigmoid(self.predict_logits(images))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities for whole images (see :meth:`predict_logits`), with ``tta`` and
        ``postprocess`` applied: the map the test metrics, ``evaluate`` and ``predict`` all use."""
        probs = tta_proba(self.plain_proba, images) if self.tta else self.plain_proba(images)
        return self.postprocess(probs)

    @property
    def inference_extras(self) -> str | None:
        """Description of TTA / post-processing on test and predict probabilities, None when both are off."""
        parts = (["mean over 8 flips/rotations"] if self.tta else []) + (
            [self.postprocess.describe()] if self.postprocess.active else []
        )
        return ", then ".join(parts) or None

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = self.loss_fn(logits, batch["mask"])
        # on_epoch accumulation keeps the tensor on device; no per-step host sync.
        # sync_dist: under DDP each rank sees a shard; the epoch loss must be the mean over all of them
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=logits.shape[0],
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        if stage == "test" and self.inference_extras:  # the same map predict writes; loss on its logits
            probs = self.predict_proba(images)
            logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
        else:
            logits = self.predict_logits(images)
            probs = torch.sigmoid(logits)  # metrics get probabilities, never logits
        loss = self.loss_fn(logits, masks)
        (self.val_metrics if stage == "val" else self.test_metrics).update(probs, masks)
        n = images.shape[0]
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True
        )
        return probs, masks

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        log_stage(self, self.val_metrics)

    def on_test_epoch_end(self) -> None:
        log_stage(self, self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        images = batch["image"] if isinstance(batch, dict) else batch
        return self.predict_proba(images)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """Optimizer and scheduler (:func:`calib_seg.tasks.optim.configure`: a ``total_steps`` schedule such as
        ``task/scheduler=one_cycle`` is stepped every batch over the whole budget, any other once per epoch)."""
        return configure(self, self.optimizer_factory, self.scheduler_factory, self.hparams.scheduler_monitor)

    # ------------------------------------------------------------------ records
    @property
    def num_parameters(self) -> int:
        """Parameter count of the wrapped model."""
        return sum(p.numel() for p in self.model.parameters())

    def metric_definitions(self) -> dict[str, str]:
        """Human-readable definition of every metric this task logs (for the run record and reports)."""
        tiling = (
            f"whole images, tiled {self.hparams.tile_size}px with {self.hparams.tile_overlap}px overlap"
            if self.hparams.tile_size
            else "whole images in one pass (reflect-padded to the model's size divisor)"
        )
        defs = {"train/loss": f"{self.hparams.loss} loss on training patches (logits), epoch mean"}
        for stage in ("val", "test"):
            t = self.val_threshold if stage == "val" else self.threshold
            defs.update(
                {
                    f"{stage}/loss": f"{self.hparams.loss} loss on {tiling}, epoch mean over batches",
                    f"{stage}/jaccard": f"BinaryJaccardIndex(threshold={t}) on sigmoid probabilities, foreground "
                    f"class, pixels pooled over the epoch ({tiling})",
                    f"{stage}/dice": f"BinaryF1Score(threshold={t}) on sigmoid probabilities = foreground Dice",
                    f"{stage}/precision": f"BinaryPrecision(threshold={t}) on sigmoid probabilities, foreground",
                    f"{stage}/recall": f"BinaryRecall(threshold={t}) on sigmoid probabilities, foreground",
                    f"{stage}/jaccard_all_foreground": "trivial baseline: Jaccard of predicting every pixel "
                    "foreground = foreground fraction of the masks; a model near it has learned nothing",
                }
            )
        for c in self.thresholds_curve:
            defs[f"test/jaccard_t{c:.2f}"] = (
                f"foreground Jaccard of sigmoid probabilities > {c}, test set (JaccardCurve: one count state for "
                "every threshold, BinaryJaccardIndex's arithmetic)"
            )
        if self.inference_extras:
            defs["test/jaccard"] += f"; test probabilities: {self.inference_extras}"
        if self.inference_choice:
            searched = ", ".join(self.inference_choice.get("searched") or [])
            defs["test/jaccard"] += (f"; {searched} chosen on the validation images (max pooled val Jaccard), "
                                     "never on test")
            defs["test/threshold"] = "threshold of the test metrics, chosen on validation (task.threshold=auto)"
        defs["test/best_threshold"] = (
            "threshold of the test Jaccard curve with the highest Jaccard (diagnostic only; chosen on test data, "
            f"so the headline test/jaccard stays at threshold={t})"
        )
        return defs
