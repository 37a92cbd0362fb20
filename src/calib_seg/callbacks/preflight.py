"""Pre-flight check: probe a run's structure on one training batch before the first epoch (issue 16).

Both seed failures were structural, and structure shows in seconds: a ReLU-clamped head facing raw targets
15..7964, an unnormalised target at the seed's scale, a learning rate that diverges, a "Jaccard" computed on raw
probabilities. Waiting for epoch rules cannot catch them when an epoch is 2 optimizer steps (the seed's C01:
~270 images at batch 256). So, once, after the model and data are built and before ``fit``:

1. **fit probe**: on deep copies of the task and its optimizer (the real ones untouched, RNG states restored),
   ``steps`` optimizer steps on one fixed training batch. A healthy configuration cuts that batch's loss by a
   clear margin; ``probe_ratio`` = loss after the steps / loss before.
2. **output head**: the fraction of outputs tied exactly at the batch's extreme value (a clamp: ReLU at 0, a
   saturated activation), before and after the probe; for density, ``target_scale`` = RMS of the training targets
   after the target transform / max(RMS of the initial outputs, 1): an initialised head gives outputs of order
   one, so a target three orders of magnitude larger is out of reach of any reasonable number of steps.
3. **metric plumbing**: the task's own validation path on the probe batch must give the number an independent
   computation gives: density MAE on physical predictions (after the inverse transform) against physical
   targets; segmentation Jaccard of probabilities thresholded at the task's threshold.

The measurement is :func:`measure` and the decision the pure :func:`judge` (measurements in, message or ``None``
out), so both are tested without Lightning. :class:`~calib_seg.callbacks.guard.TrainingGuard` calls them from
``on_fit_start`` and aborts with ``aborted_epoch: 0``. Thresholds and the measurements they come from:
docs/guard.md.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["measure", "judge", "clamp_fraction", "preserved_rng"]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the python/numpy/torch (and CUDA) RNG states on exit: the probe must not shift the run's draws."""
    from calib_seg.callbacks.rng_state import RngState

    keeper = RngState()
    saved = keeper.state_dict()
    try:
        yield
    finally:
        keeper.load_state_dict(saved)


def clamp_fraction(out: torch.Tensor) -> float:
    """Fraction of outputs equal to the batch's minimum or maximum value, when at least two share it.

    A linear head gives distinct floats (the fraction is 0); a ReLU head whose units died gives all outputs
    exactly 0 (the fraction is 1).
    """
    x = out.detach().reshape(-1).double()
    if x.numel() < 2 or not torch.isfinite(x).all():
        return 0.0
    ties = [int((x == v).sum()) for v in (x.min(), x.max())]
    return max((n for n in ties if n >= 2), default=0) / x.numel()


def _kind(task: Any) -> str:
    if hasattr(task, "target_tf"):
        return "density"
    if hasattr(task, "loss_fn") and hasattr(task, "threshold"):
        return "segmentation"
    raise ValueError(f"pre-flight knows the density and segmentation tasks, not {type(task).__name__}")


def _outputs(task: Any, kind: str, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(model outputs in training units, targets in training units) for one batch, in the task's current mode."""
    if kind == "density":
        return task.target_tf(task(batch["image"])), task.target_tf(batch["density"])
    return task(batch["image"]), batch["mask"]


def _loss(step_out: Any) -> torch.Tensor:
    return step_out["loss"] if isinstance(step_out, Mapping) else step_out


def _rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def _local(metrics: Any) -> None:
    """No cross-process sync for the copy's metrics (every DDP rank probes on its own)."""
    for m in metrics.values():
        m.sync_on_compute = False
        m._to_sync = False


def _plumbing(task: Any, kind: str, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The task's own validation metric on ``batch`` vs an independent computation of the same number."""
    task.eval()
    task.val_metrics.reset()
    _local(task.val_metrics)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer warns once per call
        task.validation_step(batch, 0)
        values = {k: float(v) for k, v in task.val_metrics.compute().items()}
        if kind == "density":
            pred = task(batch["image"]).double().cpu().numpy().reshape(-1)
            y = batch["density"].double().cpu().numpy().reshape(-1)
            reference = float(np.mean(np.abs(pred - y)))  # beads/mm², the physical units every metric uses
            reported = values["val/mae"]
            roundtrip = task.target_tf.inverse(task.target_tf(batch["density"].double())).cpu().numpy().reshape(-1)
            out = {"plumbing_metric": "val/mae", "roundtrip_error": float(np.max(np.abs(roundtrip - y))
                                                                           / max(np.max(np.abs(y)), 1e-12))}
        else:
            # validation during training is plain (no TTA, no post-processing: those are test/predict options)
            probs = task.plain_proba(batch["image"]).double().cpu().numpy().reshape(-1)
            mask = batch["mask"].double().cpu().numpy().reshape(-1) > 0.5
            hard = probs > task.threshold
            union = np.count_nonzero(hard | mask)
            reference = np.count_nonzero(hard & mask) / union if union else 0.0
            soft = float(np.sum(probs * mask) / max(np.sum(probs + mask - probs * mask), 1e-12))
            reported = values["val/jaccard"]
            out = {"plumbing_metric": "val/jaccard", "soft_jaccard": soft}
    task.val_metrics.reset()
    scale = max(abs(reference), 1e-12) if kind == "density" else 1.0
    return {**out, "plumbing_reported": reported, "plumbing_reference": float(reference),
            "plumbing_error": abs(reported - reference) / scale}


def measure(task: Any, optimizer: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
            steps: int = 10) -> dict[str, Any]:
    """Probe ``task`` (a density or segmentation LightningModule) and ``optimizer`` on one training batch.

    Works on deep copies taken together (so the copied optimizer updates the copied parameters), with the global
    RNG states restored afterwards: the real task, its optimizer, BatchNorm statistics and random draws are
    exactly as before the call. Returns the numbers :func:`judge` decides on (see the module docstring).
    """
    if steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {steps}")
    kind = _kind(task)
    with preserved_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer warns once per call
        probe, opt = copy.deepcopy((task, optimizer))  # LightningModule.__getstate__ leaves the trainer out
        probe.train()
        with torch.no_grad():
            out0, target = _outputs(probe, kind, batch)
        spec = getattr(task, "spec", None)
        measures: dict[str, Any] = {"task": kind, "task_name": getattr(spec, "name", kind), "probe_steps": int(steps), "batch_size": int(len(batch["image"])),
                                    "clamp_fraction_initial": clamp_fraction(out0)}
        if kind == "density":
            measures["target_scale"] = _rms(target) / max(_rms(out0), 1.0)
        losses: list[float] = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = _loss(probe.training_step(batch, 0))
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = float(_loss(probe.training_step(batch, 0)))
            out1, _ = _outputs(probe, kind, batch)
        measures.update({"loss_initial": losses[0], "loss_final": final, "loss_max": max(losses + [final]),
                         "loss_curve": losses + [final],  # loss after 0, 1, ... steps: the ratio at any K
                         "probe_ratio": final / losses[0] if losses[0] > 0 else math.nan,
                         "clamp_fraction_final": clamp_fraction(out1)})
        if all(math.isfinite(v) for v in (losses[-1], final)):
            measures.update(_plumbing(probe, kind, batch))
    return measures


def judge(m: Mapping[str, Any], *, max_probe_ratio: float | Mapping[str, float] = 0.995, max_clamp_fraction: float = 0.5,
          max_target_scale: float = 100.0, plumbing_tolerance: float = 1e-3) -> str | None:
    """The first failed pre-flight check as ``"pre-flight <check>: <numbers>"``, or ``None`` when all pass.

    Args:
        m: the output of :func:`measure`.
        max_probe_ratio: the probe must bring the batch loss to at most this fraction of its first value
            (non-finite losses always fail); a mapping gives one value per task (``density``, ``segmentation``).
            The default only asks that the loss moves at all (by 0.5 %): a slow, low-learning-rate run is
            healthy; the seed's failures do not move it (dead head, raw targets) or blow it up (B5 table).
        max_clamp_fraction: at most this fraction of outputs may sit exactly at a clamp, before or after the probe.
        max_target_scale: density only; the transformed targets' RMS may be at most this multiple of the initial
            outputs' RMS (floored at 1).
        plumbing_tolerance: relative (density MAE) or absolute (Jaccard) difference allowed between the task's
            validation metric and the independent computation.
    """
    steps = m["probe_steps"]
    l0, l1, lmax = m["loss_initial"], m["loss_final"], m["loss_max"]
    if not all(math.isfinite(v) for v in (l0, l1, lmax)):
        return (f"pre-flight fit probe: loss on one training batch became non-finite within {steps} steps "
                f"(first {l0:.4g}, max {lmax:.4g}, final {l1:.4g}): the learning rate diverges")
    ratio = m["probe_ratio"]
    if isinstance(max_probe_ratio, Mapping):
        # a task's own limit (e.g. density_map) when the mapping names it, else its kind's (density/segmentation)
        max_probe_ratio = float(max_probe_ratio.get(m.get("task_name"), max_probe_ratio[m["task"]]))
    if not ratio <= max_probe_ratio:
        return (f"pre-flight fit probe: loss on one training batch went {l0:.4g} -> {l1:.4g} in {steps} steps "
                f"(ratio {ratio:.4g} > {max_probe_ratio:g}; max {lmax:.4g}): this configuration cannot fit even "
                f"one batch")
    for when in ("initial", "final"):
        frac = m[f"clamp_fraction_{when}"]
        if frac > max_clamp_fraction:
            return (f"pre-flight output head: {frac:.0%} of the {when} outputs sit exactly at one value (a clamped "
                    f"or dead head, > {max_clamp_fraction:.0%})")
    scale = m.get("target_scale")
    if scale is not None and scale > max_target_scale:
        return (f"pre-flight output head: training targets after the target transform have RMS {scale:.4g} x the "
                f"initial outputs' (> {max_target_scale:g}): the head cannot reach the target range; use "
                f"task.target_transform=standardize")
    if "plumbing_error" in m:
        err = m["plumbing_error"]
        if m.get("roundtrip_error", 0.0) > plumbing_tolerance:
            return (f"pre-flight metric plumbing: the target transform does not invert (relative error "
                    f"{m['roundtrip_error']:.3g} > {plumbing_tolerance:g})")
        if not err <= plumbing_tolerance:
            return (f"pre-flight metric plumbing: {m['plumbing_metric']} from the task's validation path "
                    f"{m['plumbing_reported']:.6g} != independent {m['plumbing_reference']:.6g} (error {err:.3g} > "
                    f"{plumbing_tolerance:g}; physical units / thresholded probabilities expected)")
    return None
