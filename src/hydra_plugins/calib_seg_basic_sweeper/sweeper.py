"""The grid sweeper: Hydra's BasicSweeper plus swept keys for the job folders and a resume check (see package)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


def swept_keys(overrides: list[Override]) -> list[str]:
    """The keys a list of parsed overrides sweeps, in the order the BasicSweeper expands them (params first,
    then the command line; a command-line value of a params key keeps the params position)."""
    keys: dict[str, bool] = {}
    for o in overrides:
        keys[o.key_or_group] = o.is_sweep_override()
    return [k for k, swept in keys.items() if swept]


def swept_keys_override(keys: list[str]) -> str:
    """The hydra override that tells a job what its grid sweeps (quoted: a key may hold ``/`` or ``@``)."""
    return "hydra.sweeper.swept_keys=[" + ",".join(f"'{k}'" for k in keys) + "]"


def refuse_changed(check: Callable[..., None], config: Any, *args: Any) -> None:
    """Run a :mod:`calib_seg.resume` check on ``config``'s sweep folder (``check(sweep_dir, *args, may_change)``,
    may_change = ``hydra.job.config.override_dirname.exclude_keys``); a refusal is one message and exit 2."""
    from calib_seg.cli import EXIT_CONFIG
    from calib_seg.resume import SweepChanged

    may_change = list(config.hydra.job.config.override_dirname.exclude_keys or [])
    try:
        check(config.hydra.sweep.dir, *args, may_change)
    except SweepChanged as exc:  # nothing launched or written
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None


class CalibSegBasicSweeper(BasicSweeper):
    """Hydra's BasicSweeper; each job learns the swept keys, and ``+resume=true`` is checked before launching."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 swept_keys: list[str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:  # type: ignore[override]
        """The BasicSweeper's batches, each job with ``hydra.sweeper.swept_keys``; with ``resume=true`` the grid
        is first checked against the sweep folder's finished jobs (:func:`calib_seg.resume.check_resumed_grid`)."""
        keys = swept_keys(overrides)
        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        assert self.config is not None
        if self.config.get("resume", False):
            from calib_seg.resume import check_resumed_grid

            jobs = [job for batch in batches for job in batch]
            refuse_changed(check_resumed_grid, self.config, jobs, keys)
        tag = swept_keys_override(keys)
        return [[[*job, tag] for job in batch] for batch in batches]
