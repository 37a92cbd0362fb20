"""Synthetic bead source: a simulated dilution series (the default density data), from :mod:`calib_seg.data.simulators.beads`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calib_seg.data.containers import BeadSet
from calib_seg.data.simulators.beads import (
    SEED_DENSITY_RANGE,
    SEED_DILUTIONS,
    BeadPhysics,
    dilution_series,
    render_beads,
)
from calib_seg.fileio import content_hash


class SyntheticBeads:
    """Simulated dilution series: ``n_per_level`` images at each dilution (see :mod:`calib_seg.data.simulators.beads`).

    ``levels`` may give explicit ``{dilution: density}`` pairs; otherwise ``dilutions`` and ``density_range`` define a
    geometric series (the seed's 50x..51200x, 7964..15 beads/mm²).
    """

    def __init__(
        self,
        n_per_level: int = 35,
        physics: Mapping[str, Any] | None = None,
        dilutions: list[float] | None = None,
        density_range: list[float] | None = None,
        levels: Mapping[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        if n_per_level < 1:
            raise ValueError(f"n_per_level must be >= 1, got {n_per_level}")
        self.n_per_level = int(n_per_level)
        self.physics = BeadPhysics(**dict(physics or {}))
        if levels:
            self.levels = {float(k): float(v) for k, v in dict(levels).items()}
        else:
            self.levels = dilution_series(tuple(dilutions or SEED_DILUTIONS), tuple(density_range or SEED_DENSITY_RANGE))
        self.seed = int(seed)

    def params(self) -> dict[str, Any]:
        """Everything that determines the images (the data fingerprint of a synthetic set)."""
        return {"source": "synthetic_beads", "n_per_level": self.n_per_level, "seed": self.seed,
                "levels": {str(k): v for k, v in self.levels.items()}, "physics": self.physics.to_dict()}

    def load(self, progress: bool = False) -> BeadSet:
        """Simulate the whole set (deterministic for a given seed)."""
        rng = np.random.default_rng(self.seed)
        jobs = [(dil, dens) for dil, dens in self.levels.items() for _ in range(self.n_per_level)]
        iterator = jobs
        if progress and len(jobs) > 200:
            from rich.progress import track

            iterator = track(jobs, description="simulating beads")
        sims = [render_beads(rng, dens, dil, self.physics) for dil, dens in iterator]
        return BeadSet(
            images=np.stack([s.image for s in sims]),
            scale=float(self.physics.max_adu),
            density=np.array([s.density for s in sims]),
            dilution=np.array([s.dilution for s in sims]),
            count=np.array([s.count for s in sims], dtype=float),
            names=[f"{int(s.dilution)}x_{i:04d}" for i, s in enumerate(sims)],
            fov_area_mm2=self.physics.fov_area_mm2,
            fingerprint={**self.params(), "sha256": content_hash(self.params())},
            centres_um=[s.centres_um for s in sims],
        )
