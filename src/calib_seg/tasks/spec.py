"""Task descriptors: what the rest of the code needs to know about a task, in one frozen dataclass per task.

Each LightningModule carries its :class:`TaskSpec` as the class attribute ``spec`` (defined next to it in
``tasks/<name>.py``). Summary, progress line, TensorBoard HParams, figures, report, evaluate, predict and config
validation read the descriptor instead of guessing from attributes or metric names; :func:`spec_of` finds it
from a task object, its class, a config ``_target_`` string, a task name, or a run record.

Adding a task = one module (LightningModule + ``spec``) listed in :data:`TASK_MODULES`, plus one
``conf/task/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

#: the modules that define the shipped tasks (each holds one LightningModule with a ``spec``)
TASK_MODULES = ("calib_seg.tasks.density", "calib_seg.tasks.density_map", "calib_seg.tasks.segmentation")


@dataclasses.dataclass(frozen=True)
class Headline:
    """One headline number: its metric key, a label for people, its unit and how to format it."""

    key: str
    label: str
    unit: str = ""
    #: format spec for the value; None = a score without a unit (R², Jaccard) gets 4 decimals below 100, else 1;
    #: a quantity with a unit gets 1 decimal from 10 on, else 3 significant digits (46.9, 100.5, 3.14)
    fmt: str | None = None
    #: may legitimately be undefined (e.g. R² on a single density level): shown as n/a instead of omitted
    may_be_undefined: bool = False

    @property
    def title(self) -> str:
        """The label with its unit, e.g. ``test MAE [beads/mm²]``."""
        return f"{self.label} [{self.unit}]" if self.unit else self.label

    def format(self, value: float) -> str:
        """The value as the summary table shows it."""
        if self.fmt:
            return format(value, self.fmt)
        if self.unit:
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:#.3g}"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything outside a task's LightningModule needs to know about the task.

    Callables are named by dotted path (``module.function``) and imported when used, so the descriptor can sit
    next to the LightningModule without importing the figure, report or prediction code.
    """

    #: ``task_name`` of conf/task/<name>.yaml and the kind of run in reports
    name: str
    #: the LightningModule, as a config ``_target_``
    target: str
    #: metric watched by checkpointing, early stopping and the sweeper
    optimized_metric: str
    mode: str
    #: the summary table's rows, in order
    headline: tuple[Headline, ...]
    #: validation metrics on the one-line-per-epoch progress output (after train/loss and val/loss)
    progress_keys: tuple[str, ...]
    #: metrics of the TensorBoard HParams entry
    hp_metrics: tuple[str, ...]
    #: model ``_target_``\ s that belong to this task
    models: tuple[str, ...]
    #: class names of the DataModules whose batches this task consumes (``data._target_``'s last component)
    datamodules: tuple[str, ...]
    #: allowed ``task.loss`` values
    losses: tuple[str, ...]
    #: keys the composed config must set for this task
    required_keys: tuple[str, ...]
    #: ``(RunFigures, trainer, task) -> None``: the figures drawn at the end of test
    test_figures: str
    #: ``(task, cfg, run_cfg, files, bit_depth, pixel_size_um, out) -> Path``: writes predict's outputs
    prediction_writer: str
    #: report: the sweep's kind, the all-jobs table columns (key, header), sections and figures
    report_kind: str
    report_columns: tuple[tuple[str, str], ...]
    report_sections: str
    report_figures: str

    def resolve(self, field: str) -> Callable[..., Any]:
        """The callable a dotted-path field names."""
        module, _, name = getattr(self, field).rpartition(".")
        return getattr(importlib.import_module(module), name)

    def headline_keys(self) -> tuple[str, ...]:
        """The metric keys of the headline rows."""
        return tuple(h.key for h in self.headline)


def all_specs() -> dict[str, TaskSpec]:
    """Every shipped task's descriptor, by name."""
    specs = {}
    for module in TASK_MODULES:
        for obj in vars(importlib.import_module(module)).values():
            spec = getattr(obj, "spec", None)
            if isinstance(obj, type) and isinstance(spec, TaskSpec) and spec.target == f"{module}.{obj.__name__}":
                specs[spec.name] = spec
    return specs


def spec_of(what: Any) -> TaskSpec | None:
    """The descriptor of a task object or class, a ``_target_`` string, a task name or a run record (None if
    unknown). A record is recognised by its config's ``task._target_``, else by its optimised metric."""
    spec = getattr(what, "spec", None)
    if isinstance(spec, TaskSpec):
        return spec
    specs = all_specs()
    if isinstance(what, str):
        return specs.get(what) or next((s for s in specs.values() if s.target == what), None)
    if isinstance(what, Mapping):
        target = ((what.get("config") or {}).get("task") or {}).get("_target_")
        by_target = spec_of(target) if target else None
        if by_target is not None:
            return by_target
        metric = what.get("optimized_metric")
        return next((s for s in specs.values() if s.optimized_metric == metric), None)
    return None

