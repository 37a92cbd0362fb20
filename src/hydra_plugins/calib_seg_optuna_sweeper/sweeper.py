"""The Hydra ``Sweeper`` class; the work is in ``_impl`` (imported lazily: optuna is not imported at plugin scan)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CalibSegOptunaSweeper(Sweeper):
    """Resumable Optuna sweeper: see the package docstring and docs/sweeps.md."""

    def __init__(self, retry_interrupted: int = 1, run_record: str = "run.json", swept_keys: Any = None,
                 **optuna_kwargs: Any) -> None:
        from ._impl import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(retry_interrupted=retry_interrupted, run_record=run_record,
                                                  **optuna_kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Instantiate the launcher (Hydra's contract)."""
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Run (or continue) the study until it holds ``n_trials`` answered trials."""
        return self.sweeper.sweep(arguments)
