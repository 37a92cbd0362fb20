"""TrainingGuard: stop a doomed run within a few epochs and say why (issue 4).

The calibration study trained 4 runs x 50 epochs with a flat validation loss and R² < 0 before anyone looked.
The guard checks, once per validated epoch, a handful of cheap rules on numbers the tasks already compute
(logged metrics, and the density task's ``last_val`` predictions); it never runs a forward pass of its own.

The rules live in the pure function :func:`check` (scripted metric histories in, message or ``None`` out) so
they are tested without Lightning; :class:`TrainingGuard` only collects one history entry per epoch, calls it,
and turns a message into a stop: ``trainer.should_stop``, ``abort_reason``/``aborted_epoch`` (read by
``calib_seg.train`` into ``run.json``), a log warning, a console line and a TensorBoard text entry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from calib_seg.callbacks.preflight import judge, measure, preserved_rng
from calib_seg.cli import FILE_ONLY
from calib_seg.metrics.functional import spread_stats  # the collapse rule's inputs, from the metrics room

log = logging.getLogger("calib_seg.guard")

__all__ = ["GuardRules", "TrainingGuard", "check", "final_check"]


def _fmt(x: float) -> str:
    """Short numbers for messages: 4 significant digits, scientific only when needed."""
    return f"{x:.4g}"


def _metric_gain(history: Sequence[Mapping[str, float]], key: str) -> float:
    """Best value of ``key`` so far minus its first value (0 when the task does not log it)."""
    values = [float(h[key]) for h in history if key in h and math.isfinite(float(h[key]))]
    return max(values) - values[0] if values else 0.0


def _bad_streak(flags: Sequence[bool]) -> int:
    """Number of consecutive ``True`` at the end of ``flags`` (the current run of bad epochs)."""
    n = 0
    for f in reversed(flags):
        if not f:
            break
        n += 1
    return n


@dataclasses.dataclass(frozen=True)
class GuardRules:
    """The epoch rules' thresholds, with their defaults: the one definition :func:`check`, :func:`final_check`
    and :class:`TrainingGuard` share (conf/callbacks' guard block repeats the values for the reader; a test keeps
    them equal). Field meanings: :func:`check`'s arguments. Invalid combinations raise ``ValueError``."""

    non_finite: bool = True
    flat_patience: int | None = 5
    min_rel_delta: float = 0.01
    min_metric_delta: float = 0.02
    grace_epochs: int = 5
    r2_min: float | None = 0.0
    collapse_fraction: float | None = 0.1
    jaccard_margin: float | None = 0.02
    min_steps: int = 50
    patience: int = 3
    relapse_patience: int = 10
    r2_clear: float = 0.3
    collapse_clear: float = 0.3
    jaccard_clear: float = 0.1
    learning_loss_drop: float | None = 0.2
    final_r2_min: float | None = 0.05

    def __post_init__(self) -> None:
        if self.flat_patience is not None and self.flat_patience < 1:
            raise ValueError(f"flat_patience must be >= 1 or null, got {self.flat_patience}")
        if self.grace_epochs < 1:
            raise ValueError(f"grace_epochs must be >= 1, got {self.grace_epochs}")
        if not 1 <= int(self.patience) <= int(self.relapse_patience):
            raise ValueError(f"need 1 <= patience <= relapse_patience, got {self.patience}, {self.relapse_patience}")
        if self.collapse_fraction is not None and not 0 < self.collapse_fraction < 1:
            raise ValueError(f"collapse_fraction must be in (0, 1) or null, got {self.collapse_fraction}")


def check(history: Sequence[Mapping[str, float]], rules: GuardRules | None = None, **overrides: Any) -> str | None:
    """The first rule the run breaks, as the abort message; ``None`` while the run looks healthy.

    The metric rules (R², collapse, trivial Jaccard) never judge one epoch alone: one noisy epoch (a single
    validation slice, a high learning rate, BatchNorm statistics) is not a doomed run. Each rule marks every
    epoch bad or not and fires only on a *streak* of bad epochs ending at the latest one: ``patience`` epochs
    for a run that was never clearly good, ``relapse_patience`` for one that was (its best value so far passed
    the rule's "clear" level, e.g. a Jaccard 0.1 above the all-foreground baseline).

    The thresholds are ``rules`` (:class:`GuardRules`, its defaults when None) with ``overrides`` (its field
    names) applied on top; each is described below.

    Args:
        history: one mapping per validated epoch, oldest first. Each holds ``epoch`` (1-based) and the metrics
            of that epoch (``val/loss``, ``val/r2``, ``val/jaccard``, ``val/jaccard_all_foreground``,
            ``train/loss``, ...) and, for density, ``pred_std``/``target_std``/``pred_range``/``target_range``.
            Keys a rule needs but the entry lacks switch that rule off (e.g. R² for segmentation). An optional
            ``step`` (optimizer steps so far) is compared with ``min_steps``.
        non_finite: abort at once when any number of the latest entry is NaN or infinite.
        flat_patience: from this epoch on, abort when the best ``val/loss`` so far improved on the first one by
            less than ``min_rel_delta`` (relative). ``None`` = off.
        min_rel_delta: relative improvement of ``val/loss`` a run must show by ``flat_patience``.
        min_metric_delta: ... unless its headline metric (``val/jaccard`` or ``val/r2``) improved on its first
            value by more than this (absolute): a loss that is not the metric may stall while the metric learns.
        grace_epochs: the R², collapse and trivial-Jaccard rules start at this epoch.
        r2_min: an epoch is bad when ``val/r2 < r2_min``. ``None`` = off.
        collapse_fraction: an epoch is bad when the std or the max-min range of the validation predictions is
            below this fraction of the targets'. ``None`` = off.
        jaccard_margin: an epoch is bad when ``val/jaccard <= val/jaccard_all_foreground + jaccard_margin``.
            ``None`` = off.
        min_steps: rules 2-5 also wait until ``step >= min_steps`` (BatchNorm running statistics lag the
            weights for tens of steps, so val/loss is flat and R² ~ 0 in a healthy run that early).
        patience: bad epochs in a row that fire a metric rule in a run that was never clearly good.
        relapse_patience: bad epochs in a row that fire it in a run that once was (its best checkpoint is
            good, and early stopping handles the rest, so only a lasting relapse is worth a stop).
        r2_clear: a run whose best ``val/r2`` reached this was clearly good.
        collapse_clear: ... whose best spread ratio (the smaller of std and range ratio) reached this.
        jaccard_clear: ... whose best ``val/jaccard`` reached the all-foreground baseline + this.
        learning_loss_drop: rules 3-5 wait while the run is still learning: its best ``val/loss`` of the last
            ``patience`` epochs is more than this fraction below its best before them. A focal-loss U-Net first
            learns the background: its Jaccard at 0.5 can fall to ~0 for epochs while val/loss halves (measured:
            0.111 -> 0.058, Jaccard 0.09 -> 0.01, then it learns the foreground). ``None`` = off.

    Returns:
        ``"aborted at epoch <n>: <rule and numbers>"`` or ``None``.
    """
    r = dataclasses.replace(rules or GuardRules(), **overrides)
    if not history:
        return None
    epoch = int(history[-1]["epoch"])
    text = _non_finite_rule(history[-1]) if r.non_finite else None
    if text is None and int(history[-1].get("step", r.min_steps)) >= r.min_steps:
        text = _flat_rule(history, r, epoch)
        if text is None and epoch >= r.grace_epochs and not _still_learning(history, r):
            text = _r2_rule(history, r) or _collapse_rule(history, r) or _jaccard_rule(history, r)
    return f"aborted at epoch {epoch}: {text}" if text else None


def _still_learning(history: Sequence[Mapping[str, float]], r: GuardRules) -> bool:
    """True while val/loss falls fast: best of the last ``patience`` epochs more than ``learning_loss_drop``
    (relative) below the best before them. A doomed run's loss is flat or rising (the seed's: -0.16 % in 50
    epochs), so the metric rules only wait, never miss it."""
    if r.learning_loss_drop is None:
        return False
    losses = [float(h["val/loss"]) for h in history if "val/loss" in h and math.isfinite(float(h["val/loss"]))]
    if len(losses) <= r.patience:
        return False
    before, recent = min(losses[:-r.patience]), min(losses[-r.patience:])
    return before != 0 and (before - recent) / abs(before) > r.learning_loss_drop


def _non_finite_rule(last: Mapping[str, float]) -> str | None:
    """Rule 1: any NaN/inf number of the latest epoch."""
    bad = sorted(k for k, v in last.items() if k not in ("epoch", "step") and not math.isfinite(float(v)))
    return ", ".join(f"{k} = {float(last[k])}" for k in bad) + " is not finite" if bad else None


def _flat_rule(history: Sequence[Mapping[str, float]], r: GuardRules, epoch: int) -> str | None:
    """Rule 2: best val/loss barely better than the first, and the headline metric did not learn either."""
    if r.flat_patience is None or epoch < r.flat_patience:
        return None
    losses = [float(h["val/loss"]) for h in history if "val/loss" in h]
    if not losses or abs(losses[0]) == 0:
        return None
    first, best = losses[0], min(losses)
    rel = (first - best) / abs(first)
    # a loss that is not the headline metric can stall while the metric improves (focal loss on a BatchNorm
    # U-Net rose 0.19 -> 1.6 in 5 epochs while val/jaccard went 0.08 -> 0.13): no stop then
    gain = max(_metric_gain(history, key) for key in ("val/jaccard", "val/r2"))
    if rel < r.min_rel_delta and gain <= r.min_metric_delta:
        return (f"val/loss flat: best {_fmt(best)} vs first {_fmt(first)} = {rel:+.2%} improvement "
                f"< {r.min_rel_delta:.2%} after {epoch} epochs (flat_patience {r.flat_patience})")
    return None


def _streak_rule(values: list[float], bad: list[bool], clear: bool, text: str, r: GuardRules,
                 epoch: int) -> str | None:
    """The message when the bad streak is long enough for this run (clearly good once or never)."""
    need = r.relapse_patience if clear else r.patience
    n = _bad_streak(bad)
    if n < need:
        return None
    best = max(values)
    note = (f"best {_fmt(best)} was clearly good, but {n} bad epochs in a row >= relapse_patience "
            f"{r.relapse_patience}" if clear else
            f"never clearly good (best {_fmt(best)}), {n} bad epochs in a row >= patience {r.patience}")
    return f"{text}; {note} (after {epoch} epochs, grace {r.grace_epochs})"


def _r2_rule(history: Sequence[Mapping[str, float]], r: GuardRules) -> str | None:
    """Rule 3: a streak of epochs with val/r2 below r2_min."""
    if r.r2_min is None or "val/r2" not in history[-1]:
        return None
    r2 = [float(h["val/r2"]) for h in history if "val/r2" in h]
    return _streak_rule(r2, [v < r.r2_min for v in r2], max(r2) >= r.r2_clear,
                        f"val/r2 = {r2[-1]:.2f} < {r.r2_min:g}", r, int(history[-1]["epoch"]))


def _spread_ratio(h: Mapping[str, float], kind: str) -> float:
    t = float(h[f"target_{kind}"])
    return float(h[f"pred_{kind}"]) / t if t > 0 else math.inf


def _collapse_rule(history: Sequence[Mapping[str, float]], r: GuardRules) -> str | None:
    """Rule 4: a streak of epochs whose val predictions' std or range is a small fraction of the targets'."""
    last = history[-1]
    if r.collapse_fraction is None or "pred_std" not in last or "target_std" not in last:
        return None
    spread = [h for h in history if "pred_std" in h and "target_std" in h]
    worst = [min(_spread_ratio(h, "std"), _spread_ratio(h, "range")) for h in spread]
    kind = "std" if _spread_ratio(last, "std") <= _spread_ratio(last, "range") else "range"
    p, t = float(last[f"pred_{kind}"]), float(last[f"target_{kind}"])
    return _streak_rule(worst, [w < r.collapse_fraction for w in worst], max(worst) >= r.collapse_clear,
                        f"predictions collapsed: {kind} of val predictions {_fmt(p)} < {r.collapse_fraction:g} x "
                        f"targets' {_fmt(t)} (ratio {p / t if t else math.inf:.3f})", r, int(last["epoch"]))


def _jaccard_rule(history: Sequence[Mapping[str, float]], r: GuardRules) -> str | None:
    """Rule 5: a streak of epochs with val/jaccard at the all-foreground level (+ margin)."""
    last = history[-1]
    if r.jaccard_margin is None or "val/jaccard" not in last or "val/jaccard_all_foreground" not in last:
        return None
    seg = [h for h in history if "val/jaccard" in h and "val/jaccard_all_foreground" in h]
    jac = [float(h["val/jaccard"]) for h in seg]
    base = [float(h["val/jaccard_all_foreground"]) for h in seg]
    above = [j - b for j, b in zip(jac, base)]
    return _streak_rule(jac, [a <= r.jaccard_margin for a in above], max(above) >= r.jaccard_clear,
                        f"val/jaccard = {jac[-1]:.3f} <= all-foreground baseline {base[-1]:.3f} + margin "
                        f"{r.jaccard_margin:g} (trivial segmentation)", r, int(last["epoch"]))


def final_check(metrics: Mapping[str, float], *, final_r2_min: float | None = GuardRules.final_r2_min,
                jaccard_margin: float | None = GuardRules.jaccard_margin) -> str | None:
    """Why a run that trained to its end is still no result: test R² below ``final_r2_min`` (no better than
    predicting the mean density) or a test Jaccard at the all-foreground level (within ``jaccard_margin``);
    ``None`` when the test numbers are a result.

    The seed study recorded R² < 0 as four finished runs; a run at the seed's batch (1 step per epoch) that early
    stopping ends at R² 0.0002 learned as little, so the bar is a little above 0 (0.05, the level at which the
    sweep report also flags a best job). A threshold of ``None`` switches its half off; a metric the task does
    not log is skipped.
    """
    if final_r2_min is not None and "test/r2" in metrics and float(metrics["test/r2"]) < final_r2_min:
        return (f"final check: test/r2 = {float(metrics['test/r2']):.4f} < {final_r2_min:g} (no better than "
                f"predicting the mean density): not a result")
    if jaccard_margin is not None and "test/jaccard" in metrics and "test/jaccard_all_foreground" in metrics:
        jac, base = float(metrics["test/jaccard"]), float(metrics["test/jaccard_all_foreground"])
        if jac <= base + jaccard_margin:
            return (f"final check: test/jaccard = {jac:.3f} <= all-foreground baseline {base:.3f} + margin "
                    f"{jaccard_margin:g} (trivial segmentation): not a result")
    return None


class TrainingGuard(pl.Callback):
    """Stop a run whose validation numbers show it cannot succeed; rules and thresholds as in :func:`check`.

    After the first abort, ``abort_reason`` (the message) and ``aborted_epoch`` (1-based) are set; the entry
    point reads them into ``run.json`` (``status: aborted``). The metric history survives checkpoint/resume.
    """

    def __init__(
        self,
        preflight: bool = True,
        probe_steps: int = 10,
        probe_batch_size: int | None = 4,
        max_probe_ratio: float | Mapping[str, float] = 0.995,
        max_clamp_fraction: float = 0.5,
        max_target_scale: float = 100.0,
        plumbing_tolerance: float = 1e-3,
        **rules: Any,
    ) -> None:
        """``rules``: the epoch rules' thresholds, by :class:`GuardRules` field name (its defaults otherwise)."""
        try:
            self.rule_set = GuardRules(**rules)
        except TypeError as exc:  # an unknown rule name
            raise TypeError(f"TrainingGuard: {exc}; rules are {[f.name for f in dataclasses.fields(GuardRules)]}") from None
        self.rules = dataclasses.asdict(self.rule_set)
        if probe_steps < 1 or (probe_batch_size is not None and probe_batch_size < 2):
            raise ValueError(f"need probe_steps >= 1 and probe_batch_size >= 2 or null, got {probe_steps}, "
                             f"{probe_batch_size}")
        self.preflight = bool(preflight)
        self.probe = dict(steps=int(probe_steps), batch_size=probe_batch_size)
        self.preflight_limits = dict(max_probe_ratio=max_probe_ratio if isinstance(max_probe_ratio, Mapping)
                                     else float(max_probe_ratio),
                                     max_clamp_fraction=float(max_clamp_fraction),
                                     max_target_scale=float(max_target_scale),
                                     plumbing_tolerance=float(plumbing_tolerance))
        #: pre-flight measurements (and ``failed``: the message or None) once on_fit_start ran; run.json keeps them
        self.preflight_result: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.abort_reason: str | None = None
        self.aborted_epoch: int | None = None
        self._validated = False

    # on_fit_start runs after the task's setup (target transform and input normalisation fitted) and after
    # configure_optimizers, before the sanity check and the first epoch: the built run, not yet trained.
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.preflight or trainer.ckpt_path or not trainer.optimizers:
            return  # a resumed run passed its pre-flight when it started
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            log.info("pre-flight skipped: fit() was given dataloaders, not a datamodule")
            return
        t0 = time.perf_counter()
        with preserved_rng():  # drawing the batch must not shift the real run's shuffling
            batch = next(iter(datamodule.train_dataloader()))
        n = self.probe["batch_size"] or len(batch["image"])
        batch = {k: v[:n].to(pl_module.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        t_batch = time.perf_counter() - t0
        result = {**measure(pl_module, trainer.optimizers[0], batch, self.probe["steps"]), "batch_seconds": t_batch}
        reason = judge(result, **self.preflight_limits)
        # every rank probed the same batch from the same seed; rank zero's decision is the one all ranks take
        reason = trainer.strategy.broadcast(reason, src=0)
        self.preflight_result = {**result, "failed": reason, "seconds": time.perf_counter() - t0}
        if reason:
            trainer.num_sanity_val_steps = 0
            self._abort(trainer, f"aborted at epoch 0: {reason}", 0)
        elif trainer.is_global_zero:
            log.info("pre-flight passed: probe loss ratio %.3f in %d steps", result["probe_ratio"], result["probe_steps"])

    # Validation runs inside the training epoch (Lightning 2), and the epoch's train/loss is only aggregated at
    # the training epoch end: checking there sees this epoch's train and val numbers together, and the density
    # task's last_val (set in the module's on_validation_epoch_end, which runs *after* callbacks' hook).
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._validated or self.abort_reason:
            return  # no fresh validation numbers this epoch (check_val_every_n_epoch > 1)
        self._validated = False
        entry: dict[str, float] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("val/", "train/")):
                entry[key] = float(value)
        last_val = getattr(pl_module, "last_val", None) or {}
        if "pred" in last_val and "target" in last_val:
            entry.update(spread_stats(last_val["pred"], last_val["target"]))
        self.history.append(entry)
        reason = check(self.history, self.rule_set)
        # every rank must take the same decision, or DDP hangs; rank zero's numbers decide
        reason = trainer.strategy.broadcast(reason, src=0)
        if reason:
            self._abort(trainer, reason, entry["epoch"])

    def _abort(self, trainer: pl.Trainer, reason: str, epoch: int) -> None:
        self.abort_reason, self.aborted_epoch = reason, int(epoch)
        trainer.should_stop = True
        # min_epochs/min_steps would otherwise keep a doomed run going ("Training will continue...")
        trainer.fit_loop.min_epochs = 0
        trainer.fit_loop.epoch_loop.min_steps = 0
        if not trainer.is_global_zero:
            return
        # file only: train.train_app prints the abort once on the console (the last line of a single run)
        log.warning("training guard: %s", reason, extra=FILE_ONLY)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("guard/abort", reason, global_step=trainer.global_step)
                logger.experiment.flush()

    # Only the history travels in checkpoints: a resumed run re-judges itself on its next epoch (an old abort
    # must not silently mark a deliberately resumed run as aborted).
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
