"""Every reduction of the metrics room under real torch.distributed: 2 gloo processes, each updating with its half.

``compute()`` on each rank must equal the single-process value on all the data: exactly for integer counts
(``sum``), extremes (``min``/``max``) and concatenations (``cat``, halves in order), to float64 rounding for
float sums. One spawn covers all metrics (process start-up is the cost).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from calib_seg.metrics.collections import stage_metrics
from calib_seg.metrics.regression import LevelAwareR2Score, MaxAbsoluteError, PerLevelMAE, SpreadStats
from calib_seg.metrics.segmentation import JaccardCurve

WORLD = 2
CURVE = (0.2, 0.5, 0.8)


def _data() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(7)
    n = 37  # odd: the ranks' halves differ in size
    target = rng.uniform(15, 8000, n)
    g = torch.Generator().manual_seed(7)
    masks = (torch.rand(5, 1, 12, 12, generator=g) > 0.6).float()
    return {"pred": torch.tensor(target + rng.normal(0, 400, n), dtype=torch.float32),
            "target": torch.tensor(target, dtype=torch.float32),
            "level": torch.tensor(rng.choice([50.0, 800.0, 12800.0], n), dtype=torch.float32),
            "probs": torch.sigmoid((masks * 2 - 1) + torch.randn(masks.shape, generator=g)), "masks": masks}


def _metrics() -> dict[str, object]:
    return {"max": MaxAbsoluteError(), "per_level": PerLevelMAE(), "spread": SpreadStats(),
            "r2": LevelAwareR2Score(), "curve": JaccardCurve(CURVE),
            "density": stage_metrics("density", "test"),
            "segmentation": stage_metrics("segmentation", "test", thresholds_curve=CURVE)}


def _evaluate(parts: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Update every metric with ``parts`` (the whole data or one rank's half) and compute."""
    out = {}
    for name, m in _metrics().items():
        if name in ("curve", "segmentation"):
            m.update(parts["probs"], parts["masks"])
        elif name in ("per_level", "density"):
            m.update(parts["pred"], parts["target"], level=parts["level"])
        else:
            m.update(parts["pred"], parts["target"])
        value = m.compute()
        out[name] = {k: float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)}
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = _data()
        half = {k: torch.tensor_split(v, WORLD)[rank] for k, v in data.items()}  # contiguous halves, in order
        torch.save(_evaluate(half), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory) -> list[dict[str, dict[str, float]]]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, float]]:
    return _evaluate(_data())


EXACT = ("max", "per_level", "curve", "segmentation")  # max, cat, integer sum: the same bits


@pytest.mark.parametrize("name", list(_metrics()))
def test_two_gloo_ranks_compute_the_single_process_value(gathered, single, name):
    for rank_values in gathered:
        got, ref = rank_values[name], single[name]
        assert set(got) == set(ref) and ref
        if name in EXACT:
            assert got == ref
        else:
            assert got == pytest.approx(ref, rel=1e-6, nan_ok=True)


def test_halves_alone_differ_from_the_whole(single):
    """The DDP test can fail: one rank's half without syncing gives other values."""
    data = _data()
    half = _evaluate({k: torch.tensor_split(v, WORLD)[0] for k, v in data.items()})
    assert half["spread"] != single["spread"] and half["curve"] != single["curve"]
    assert half["max"] != single["max"] or half["per_level"] != single["per_level"]
