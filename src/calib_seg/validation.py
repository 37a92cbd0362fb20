"""Check a composed training config before anything is built: a typo must cost seconds, not a cluster hour.

:func:`validate` applies one rule per user-facing key (type, range, allowed names) and raises a single
:class:`ConfigError` that lists *every* problem, each naming the key, the value found and what is allowed.
``train.run`` calls it first, before seeding or instantiating anything; the entry point turns the error into a
short message and exit code 2 (see docs/reliability.md).

Why rules on the composed config rather than structured-config dataclasses in the ConfigStore: the configs
hold ``_target_`` nodes whose keys depend on the chosen class (CNN filters vs U-Net base_filters, smp
``**kw``), and Hydra's struct mode already refuses unknown keys at composition ("Could not override
'model.filtres' ... Key 'filtres' is not in struct"). What struct mode does not catch -- wrong types, ranges,
names of architectures/losses, and keys added with ``+`` -- is checked here, against the target's signature
where one is importable.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from calib_seg.models import NORMS
from calib_seg.models.density import HEAD_ACTIVATIONS
from calib_seg.tasks.spec import TaskSpec, all_specs
from calib_seg.tasks.transforms import KINDS as TARGET_TRANSFORMS

_ABSENT = object()

# allowed values are read from the modules that own them (the models, the target transform, each task's spec)


def models() -> dict[str, str]:
    """Model targets shipped with the project -> the task each belongs to (from the task descriptors)."""
    return {m: spec.name for spec in all_specs().values() for m in spec.models}


def tasks() -> dict[str, TaskSpec]:
    """Task targets shipped with the project -> their descriptors."""
    return {spec.target: spec for spec in all_specs().values()}

#: conf/local/default.yaml is composed into the package of its group (``local.*``) unless its first line says
#: ``# @package _global_``; its keys would then change nothing, silently (README "Per-machine settings")
LOCAL_WITHOUT_HEADER = ("local: conf/local/default.yaml (or the local=... file) has no '# @package _global_' on its "
                        "first line, so its keys landed under local.* and change nothing; add that line to apply them "
                        "to the run")


class ConfigError(ValueError):
    """An invalid training configuration; ``problems`` holds one line per offending key."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"invalid configuration ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


# ---------------------------------------------------------------------------------------------- checkers
# Each checker returns None when the value is fine, else the text after "<key>: ".
def _show(v: Any) -> str:
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    return f"{v!r} ({type(v).__name__})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else f"expected an integer > 0, got {_show(v)}"


def non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else f"expected an integer >= 0, got {_show(v)}"


def optional_positive_int(v: Any) -> str | None:
    return None if v is None else positive_int(v)


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else f"expected a number > 0, got {_show(v)}"


def non_negative_number(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else f"expected a number >= 0, got {_show(v)}"


def open_unit(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v < 1 else f"expected a number strictly between 0 and 1, got {_show(v)}"


def open_unit_or_auto(v: Any) -> str | None:
    return None if v == "auto" else (open_unit(v) and f"expected 'auto' or a number strictly between 0 and 1, "
                                                      f"got {_show(v)}")


def boolean_or_auto(v: Any) -> str | None:
    return None if v == "auto" or isinstance(v, bool) else f"expected true, false or 'auto', got {_show(v)}"


def augment_value(v: Any) -> str | None:
    ok = isinstance(v, bool) or (isinstance(v, DictConfig) and "_target_" in v)
    return None if ok else f"expected true, false or a _target_ node (e.g. PairAugment), got {_show(v)}"


def closed_unit(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v <= 1 else f"expected a number in [0, 1], got {_show(v)}"


def fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else f"expected a fraction in [0, 1), got {_show(v)}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {_show(v)}"


def filter_list(v: Any) -> str | None:
    ok = isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v)
    return None if ok else f"expected a non-empty list of integers > 0 (e.g. [16,32,64]), got {_show(v)}"


def unit_list(v: Any) -> str | None:
    ok = isinstance(v, (list, ListConfig)) and all(_is_number(x) and 0 < x < 1 for x in v)
    return None if ok else f"expected a list of numbers strictly between 0 and 1, got {_show(v)}"


def one_of(allowed: Sequence[Any], case_insensitive: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if case_insensitive and isinstance(v, str):
            ok = v.lower() in {str(a).lower() for a in allowed}
        else:
            ok = v in allowed
        if ok:
            return None
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        hint = _did_you_mean(v, allowed)
        return f"unknown value {v!r}{hint}; allowed: {shown}"

    return check


def _did_you_mean(value: Any, allowed: Sequence[Any]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(a) for a in allowed if a is not None], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------- rules
#: key -> checker, applied when the key is present in the composed config
RULES: dict[str, Callable[[Any], str | None]] = {
    "seed": non_negative_int,
    "train": boolean,
    "test": boolean,
    "resume": boolean,
    "model.filters": filter_list,
    "model.base_filters": positive_int,
    "model.depth": positive_int,
    "model.convs_per_stage": positive_int,
    "model.blocks_per_stage": positive_int,
    "model.head_hidden": positive_int,
    "model.in_channels": positive_int,
    "model.classes": positive_int,
    "model.norm": one_of(NORMS),
    "model.head_activation": one_of(tuple(HEAD_ACTIVATIONS)),
    "model.dropout": fraction,
    "task.target_transform": one_of(TARGET_TRANSFORMS),
    "task.huber_delta": positive_number,
    "task.optimizer.lr": positive_number,
    "task.optimizer.weight_decay": non_negative_number,
    "task.threshold": open_unit_or_auto,
    "task.tta": boolean_or_auto,
    "task.thresholds_curve": unit_list,
    "task.tile_size": optional_positive_int,
    "task.tile_overlap": non_negative_int,
    "task.tile_batch_size": positive_int,
    "data.batch_size": positive_int,
    "data.eval_batch_size": optional_positive_int,
    "data.test_batch_size": positive_int,
    "data.val_fraction": fraction,
    "data.test_fraction": fraction,
    "data.num_workers": non_negative_int,
    "data.augment": augment_value,
    "data.patch_size": positive_int,
    "data.patches_per_epoch": positive_int,
    "data.min_foreground": closed_unit,
    "data.min_foreground_prob": closed_unit,
    "data.source.n_per_level": positive_int,
    "data.source.skip_bad_files": boolean,
    "data.source.resize": optional_positive_int,
    "calibration.max_excess": positive_number,
    "calibration.bias_z": positive_number,
    "calibration.max_slope_deviation": positive_number,
    "trainer.max_epochs": positive_int,
    "trainer.devices": lambda v: None if (_is_int(v) and v > 0) or isinstance(v, (str, list, ListConfig))
    else f"expected an integer > 0, 'auto' or a list of device ids, got {_show(v)}",
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _import(target: str) -> Any | None:
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _check_keys(node: Any, where: str, problems: list[str]) -> None:
    """Keys of a ``_target_`` node that the target does not accept (e.g. ``+model.filtres=...``)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    target = _import(node._target_)
    if target is None:
        return
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n != "self"]
    for key in node:
        if str(key).startswith("_") or key in params:
            continue
        hint = _did_you_mean(str(key), names)
        problems.append(f"{where}.{key}: unknown key for {node._target_.rsplit('.', 1)[-1]}{hint}; "
                        f"allowed keys: {', '.join(names)}")


def _task_problems(cfg: DictConfig, spec: TaskSpec, known: dict[str, TaskSpec]) -> list[str]:
    """What does not fit the chosen task: its loss, its required keys, the data it is given, the metric it
    is asked to optimise (another task's metric would only fail at the end of the first epoch)."""
    problems = []
    loss = _get(cfg, "task.loss")
    if loss is not _ABSENT:
        msg = one_of(spec.losses)(loss)
        if msg:
            problems.append(f"task.loss: {msg}")
    if loss == "poisson_weighted" and _get(cfg, "task.target_transform") == "log_standardize":
        # the weights are the inverse variance of a linear error (beads); a log target's error already scales
        # with 1/count, so the weights would count the sparse images twice (measured: aborted, R² < 0 at epoch 5)
        problems.append("task.loss: 'poisson_weighted' weighs errors on a linear target; with "
                        "task.target_transform=log_standardize use task.loss=mse")
    problems += [f"{key}: required by the {spec.name} task, not set" for key in spec.required_keys
                 if _get(cfg, key) in (_ABSENT, None)]
    data_t = _get(cfg, "data._target_")
    owners = [s for s in known.values() if str(data_t).rsplit(".", 1)[-1] in s.datamodules]
    owner = owners[0] if owners else None
    if owner is not None and spec not in owners:
        problems.append(f"data._target_: {data_t} holds {owner.name} data, which the {spec.name} task cannot "
                        f"train on; choose a data config for the {spec.name} task (or task={owner.name})")
    problems += _plateau_problems(cfg, spec)
    metric = _get(cfg, "optimized_metric")
    others = {m for s in known.values() if s is not spec for m in (s.optimized_metric, *s.progress_keys)}
    if metric in others - {spec.optimized_metric, *spec.progress_keys}:
        problems.append(f"optimized_metric: {metric!r} is not logged by the {spec.name} task; use "
                        f"{spec.optimized_metric!r} (the default of task={spec.name})")
    return problems


def _plateau_problems(cfg: DictConfig, spec: TaskSpec) -> list[str]:
    """A plateau scheduler must minimise a loss and maximise the task's metric: the other way round it never sees
    an improvement and halves the learning rate every ``patience`` epochs."""
    target = _get(cfg, "task.scheduler._target_")
    monitor = _get(cfg, "task.scheduler_monitor")
    if not str(target).endswith("ReduceLROnPlateau") or monitor in (_ABSENT, None):
        return []
    mode = _get(cfg, "task.scheduler.mode")
    mode = "min" if mode in (_ABSENT, None) else mode  # torch's default
    wanted = "min" if str(monitor).endswith("loss") else spec.mode if monitor == spec.optimized_metric else None
    if wanted is None or mode == wanted:
        return []
    return [f"task.scheduler.mode: {mode!r}, but the plateau scheduler watches {monitor!r} "
            f"(task.scheduler_monitor), which should {'fall' if wanted == 'min' else 'rise'}; set "
            f"task.scheduler.mode={wanted}"]


def problems_in(cfg: DictConfig) -> list[str]:
    """Every problem found in ``cfg`` (empty when valid); see :data:`RULES`."""
    problems: list[str] = []
    model_t, task_t = _get(cfg, "model._target_"), _get(cfg, "task._target_")
    known_models, known_tasks = models(), tasks()
    if model_t is not _ABSENT and model_t not in known_models and _import(model_t) is None:
        problems.append(f"model._target_: unknown model {model_t!r}{_did_you_mean(model_t, list(known_models))}; "
                        f"allowed: {', '.join(known_models)} (or any importable class)")
    if task_t is not _ABSENT and task_t not in known_tasks and _import(task_t) is None:
        problems.append(f"task._target_: unknown task {task_t!r}{_did_you_mean(task_t, list(known_tasks))}; "
                        f"allowed: {', '.join(known_tasks)}")
    spec = known_tasks.get(task_t)
    task_kind = spec.name if spec else None
    model_kind = known_models.get(model_t)
    if task_kind and model_kind and task_kind != model_kind:
        problems.append(f"model._target_: {model_t} is a {model_kind} model but task._target_ is the "
                        f"{task_kind} task {task_t}; choose a {task_kind} model (or task={model_kind})")
    if spec is not None:
        problems += _task_problems(cfg, spec, known_tasks)
    if model_t == "calib_seg.models.smp_factory.build_smp":
        arch = _get(cfg, "model.arch")
        if arch is not _ABSENT:
            from calib_seg.models.smp_factory import available_architectures

            msg = one_of(available_architectures(), case_insensitive=True)(arch)
            if msg:
                problems.append(f"model.arch: {msg}")
    for key, rule in RULES.items():
        value = _get(cfg, key)
        if value is _ABSENT:
            continue
        msg = rule(value)
        if msg:
            problems.append(f"{key}: {msg}")
    callbacks = _get(cfg, "callbacks")
    named = [f"callbacks.{k}" for k in callbacks] if isinstance(callbacks, DictConfig) else []
    for where in ("model", "task", "data", "data.source", *named):
        _check_keys(_get(cfg, where), where, problems)
    if _get(cfg, "local") is not _ABSENT:
        problems.append(LOCAL_WITHOUT_HEADER)
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg``; return quietly when it is valid."""
    problems = problems_in(cfg)
    if problems:
        raise ConfigError(problems)


def require(cfg: DictConfig, needed: dict[str, str]) -> None:
    """Raise :class:`ConfigError` naming every key of ``needed`` that ``cfg`` leaves unset (``???`` or null).

    ``needed`` maps each key to what to give, shown in the message. (A ``???`` of evaluate.yaml or predict.yaml
    does not survive composition when train.yaml, composed first, already sets the key to null.)
    """
    problems = [f"{key}: required, not given; {what}" for key, what in needed.items()
                if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, "")]
    if problems:
        raise ConfigError(problems)
