"""Thin torchmetrics classes for the density metrics we own; the numbers come from :mod:`.functional`.

Each class keeps the smallest state that syncs correctly over DDP ranks (``dist_reduce_fx`` per state) and
sets ``full_state_update = False``: ``update`` never reads the global state, so ``forward`` needs no second
update pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import MeanAbsolutePercentageError, Metric, R2Score
from torchmetrics.utilities import dim_zero_cat

from calib_seg.metrics import functional as F

__all__ = ["MaxAbsoluteError", "PerLevelMAE", "SpreadStats", "PercentMAPE", "LevelAwareR2Score"]


def _as_1d(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1)


class MaxAbsoluteError(Metric):
    """Largest absolute error seen (max over samples, synced across processes with ``max``), float64."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("max_err", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.max_err = torch.maximum(self.max_err, F.max_abs_error(preds, target))

    def compute(self) -> torch.Tensor:
        return self.max_err


class PerLevelMAE(Metric):
    """MAE per level (e.g. per dilution), as ``{name.format(level): value}`` (float64 tensors).

    Levels are not known in advance, so the per-sample errors and levels are kept (``cat`` over ranks) and
    :func:`~calib_seg.metrics.functional.per_level_mae` runs on all of them: the same float64 mean as on the
    gathered predictions. ``update(preds, target, level=...)``; without ``level`` every sample is level NaN.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, name: str = "mae_dilution_{:g}x", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.add_state("level_pred", default=[], dist_reduce_fx="cat")
        self.add_state("level_target", default=[], dist_reduce_fx="cat")
        self.add_state("level", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, level: torch.Tensor | None = None) -> None:
        self.level_pred.append(_as_1d(preds))
        self.level_target.append(_as_1d(target))
        self.level.append(_as_1d(level) if level is not None else torch.full_like(_as_1d(target), float("nan")))

    def compute(self) -> dict[str, torch.Tensor]:
        arrays = [dim_zero_cat(s).cpu().double().numpy() if len(s) else np.zeros(0)
                  for s in (self.level_pred, self.level_target, self.level)]
        return {self.name.format(d): torch.tensor(v, dtype=torch.float64)
                for d, v in F.per_level_mae(*arrays).items()}


class SpreadStats(Metric):
    """Std (ddof=0) and max-min range of predictions and targets, from float64 moments and extremes.

    States: count and sums (``sum``), minima (``min``) and maxima (``max``), so memory is constant and the DDP
    result equals the single-process one up to float64 rounding of the sums. ``compute`` gives the keys of
    :func:`~calib_seg.metrics.functional.spread_stats` (empty below 2 samples).
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        f64 = torch.float64
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sums", default=torch.zeros(2, 2, dtype=f64), dist_reduce_fx="sum")  # [pred, target] x [Σx, Σx²]
        self.add_state("lo", default=torch.full((2,), float("inf"), dtype=f64), dist_reduce_fx="min")
        self.add_state("hi", default=torch.full((2,), float("-inf"), dtype=f64), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        x = torch.stack([_as_1d(preds).double(), _as_1d(target).double()])  # (2, N)
        if not x.shape[1]:
            return
        self.n += x.shape[1]
        self.sums += torch.stack([x.sum(1), (x * x).sum(1)], dim=1)
        self.lo = torch.minimum(self.lo, x.min(1).values)
        self.hi = torch.maximum(self.hi, x.max(1).values)

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.n) < 2:
            return {}
        mean = self.sums[:, 0] / self.n
        std = (self.sums[:, 1] / self.n - mean * mean).clamp_min(0.0).sqrt()
        rng = self.hi - self.lo
        return {"pred_std": std[0], "target_std": std[1], "pred_range": rng[0], "target_range": rng[1]}


class PercentMAPE(MeanAbsolutePercentageError):
    """torchmetrics' MAPE times 100: percent, as the seed report and every table print it."""

    def compute(self) -> torch.Tensor:
        return super().compute() * 100.0


class LevelAwareR2Score(R2Score):
    """torchmetrics' R² that is NaN when the targets hold a single value (SS_tot = 0: R² is undefined).

    One density level (e.g. ``data.holdout_dilutions=[50]``) is not a number to print; the calibration table
    answers the extrapolation question at that level. Target extremes are synced with ``min``/``max``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("target_lo", default=torch.tensor(float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("target_hi", default=torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, target)
        t = _as_1d(target).double()
        if t.numel():
            self.target_lo = torch.minimum(self.target_lo, t.min())
            self.target_hi = torch.maximum(self.target_hi, t.max())

    def compute(self) -> torch.Tensor:
        if not bool(self.target_hi > self.target_lo):
            return torch.tensor(float("nan"))
        return super().compute()
