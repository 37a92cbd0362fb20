"""A run's TensorBoard event files: the logger writes them into ``<run folder>/<run_name>_<run folder name>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the event files' names (``shutil.ignore_patterns(EVENT_FILES)`` leaves them out of a copied run folder)
EVENT_FILES = "events.out.tfevents.*"


def event_dir(run_dir: str | Path) -> Path:
    """The one folder under ``run_dir`` that holds TensorBoard event files (fails when there is not exactly one)."""
    dirs = sorted({p.parent for p in Path(run_dir).rglob(EVENT_FILES)})
    assert len(dirs) == 1, f"expected one TensorBoard run under {run_dir}, found {dirs}"
    return dirs[0]


def load_events(run_dir: str | Path, **size_guidance: int) -> Any:
    """A loaded ``EventAccumulator`` of the run's event folder; ``size_guidance`` 0 = keep every event of a kind
    (default: every scalar, tensor and image)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir(run_dir)),
                           size_guidance={"scalars": 0, "tensors": 0, "images": 0, **size_guidance})
    acc.Reload()
    return acc
