"""One optimizer/schedule path for every task: the density tasks take the same schedule options as segmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from calib_seg.config import compose
from calib_seg.models.density import DensityCNN


def _density_task(*overrides: str):
    cfg = compose(list(overrides))
    return instantiate(cfg.task, model=DensityCNN(filters=[4, 8], convs_per_stage=1)), cfg


def test_density_default_is_cosine_over_max_epochs_stepped_per_epoch():
    task, cfg = _density_task()
    conf = task.configure_optimizers()
    sched = conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched["scheduler"].T_max == cfg.trainer.max_epochs and sched["interval"] == "epoch"
    assert sched["monitor"] == "val/loss"


@pytest.mark.parametrize("model", [[], ["model=density_map"]])
def test_density_one_cycle_spans_the_step_budget_and_peaks_at_the_configured_lr(model):
    task, cfg = _density_task(*model, "task/scheduler=one_cycle", "task.optimizer.lr=2e-3")
    task._trainer = SimpleNamespace(estimated_stepping_batches=40)  # e.g. 4 epochs x 10 batches
    conf = task.configure_optimizers()
    sched, opt = conf["lr_scheduler"]["scheduler"], conf["optimizer"]
    assert conf["lr_scheduler"]["interval"] == "step" and sched.total_steps == 40
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(2e-3, rel=1e-6) and lrs[-1] < 2e-3 / 25 / 10
