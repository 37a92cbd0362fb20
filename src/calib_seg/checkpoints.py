"""Checkpoints and their run folders: which checkpoint a run folder means, its training config, the task it holds.

Shared by the entry points (evaluate, predict, export) so that none of them imports another.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from calib_seg.records import read_record

log = logging.getLogger(__name__)

# Buffers the density task fits on its training split and needs at inference (tasks/density.py).
DENSITY_NORMALISATION_KEYS = ("input_mean", "input_std", "data_fitted", "target_tf.mean", "target_tf.std",
                              "target_tf.fitted")


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file itself, or the best checkpoint of a run folder (``checkpoints/best-*.ckpt``, else ``last.ckpt``).

    With several ``best-*`` files (a resumed run) the newest epoch wins, as it is the one the run's test used.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a run folder")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"))
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"{path} holds no checkpoint: expected {folder}/best-*.ckpt or {folder}/last.ckpt")


def load_run_config(ckpt_path: str | Path) -> DictConfig:
    """The training config of the run that wrote ``ckpt_path``."""
    run_dir = run_dir_of(ckpt_path)
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.exists():
        return OmegaConf.load(hydra_cfg)
    record = read_record(run_dir)
    if record and record.get("config"):
        return OmegaConf.create(record["config"])
    raise FileNotFoundError(f"no training config for {ckpt_path}: expected {hydra_cfg} or {run_dir}/run.json "
                            "(a checkpoint written by calib_seg.train, still inside its run folder)")


def read_checkpoint(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict (``weights_only=False``: the segmentation task's hyperparameters hold its optimizer
    description; only load checkpoints you trust, i.e. your own runs)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    state = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{ckpt_path} is not a Lightning checkpoint written by calib_seg.train (no 'state_dict')")
    return state


def load_task(ckpt_path: str | Path, run_cfg: DictConfig | None = None,
              map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the task from its run config and load the checkpoint's weights and buffers.

    The buffers carry the density task's fitted target transform and input statistics, so the loaded task
    predicts in beads/mm² on [0, 1] images with no extra flags.
    """
    from hydra.utils import instantiate

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    run_cfg = run_cfg if run_cfg is not None else load_run_config(ckpt_path)
    state = read_checkpoint(ckpt_path, map_location)
    task = instantiate(run_cfg.task, model=instantiate(run_cfg.model))
    task.load_state_dict(state["state_dict"])
    if getattr(task, "auto", None):  # task.threshold=auto etc.: the choice training made on validation
        choice = (read_record(run_dir_of(ckpt_path)) or {}).get("inference_choice")
        if choice:
            task.apply_choice(choice)
        else:
            log.warning("%s: %s set to auto but its run.json holds no validation choice; using threshold %.2f, "
                        "no TTA, no post-processing", ckpt_path, sorted(task.auto), task.threshold)
    return task.eval()


def init_weights(task: torch.nn.Module, path: str | Path) -> Path:
    """Start ``task`` from another run's weights (``init_from``: fine-tuning), returning the checkpoint used.

    ``path`` is a checkpoint or a run folder (its best checkpoint, :func:`resolve_checkpoint`). The network's
    weights and the fitted buffers travel (input normalisation, target transform, a density map's scale), so the
    new run keeps the normalisation the weights were trained with; optimizer, schedule and epoch start afresh
    (``ckpt_path`` is the way to resume a run instead). A different architecture is one clear error.
    """
    ckpt = resolve_checkpoint(path)
    state = read_checkpoint(ckpt)["state_dict"]
    own = task.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
        raise ValueError(f"init_from={path}: {ckpt} does not fit this run's task and model ({'; '.join(parts)}); "
                         "use the model and task settings of the run it came from")
    task.load_state_dict(state)
    log.info("initialised from %s (weights and fitted normalisation; optimizer and epochs start afresh)", ckpt)
    return ckpt


def missing_density_normalisation(state_dict: dict[str, Any]) -> list[str]:
    """Names of the density task's stored-normalisation buffers absent from (or never fitted in) a state dict.

    Checkpoints of calib_seg versions that did not store the input statistics and target transform cannot be
    turned into a faithful prediction recipe: the numbers needed to undo the training normalisation are gone.
    """
    missing = [k for k in DENSITY_NORMALISATION_KEYS if k not in state_dict]
    for flag in ("data_fitted", "target_tf.fitted"):
        if flag in state_dict and not bool(state_dict[flag]):
            missing.append(f"{flag} (False: never fitted on training data)")
    return missing


def training_camera(run_cfg: DictConfig) -> tuple[int | None, float | None]:
    """(bit depth, pixel size µm) of the training data as its config states them (simulator defaults included)."""
    source = (run_cfg.get("data") or {}).get("source") or {}
    physics = source.get("physics") or {}
    if "SyntheticBeads" in str(source.get("_target_", "")):
        # the simulator's defaults when the config leaves them out (calib_seg.data.simulators.beads.BeadPhysics)
        from calib_seg.data.simulators.beads import BeadPhysics

        defaults = BeadPhysics()
        bit = physics.get("bit_depth") or defaults.bit_depth
        pixel = physics.get("pixel_size_um") or defaults.pixel_size_um
    else:
        bit, pixel = source.get("bit_depth"), source.get("pixel_size_um")
    return (int(bit) if bit else None), (float(pixel) if pixel else None)
