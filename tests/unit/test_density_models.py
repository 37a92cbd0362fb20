"""Density regressors: shapes, a linear head by default, and the seed presets' capacities."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from calib_seg.config import compose
from calib_seg.models import count_parameters
from calib_seg.models.density import DensityCNN, DensityResNet


@pytest.mark.parametrize("cls", [DensityCNN, DensityResNet])
@pytest.mark.parametrize("size", [32, 48, 64])
def test_output_is_one_value_per_image_at_any_input_size(cls, size):
    model = cls(filters=[4, 8], norm="group").eval()
    assert model(torch.rand(3, 1, size, size)).shape == (3,)


def test_head_is_linear_by_default_so_negative_outputs_are_possible():
    model = DensityCNN(filters=[4, 8])
    assert isinstance(model.head[-1], nn.Identity)
    with torch.no_grad():
        model.head[-2].bias.fill_(-100.0)
    assert (model.eval()(torch.rand(2, 1, 16, 16)) < 0).all()


def test_relu_head_exists_only_on_request_and_clips_at_zero():
    model = DensityCNN(filters=[4, 8], head_activation="relu")
    with torch.no_grad():
        model.head[-2].bias.fill_(-100.0)
    assert (model.eval()(torch.rand(2, 1, 16, 16)) == 0).all()


def test_bad_architecture_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="filters"):
        DensityCNN(filters=[])
    with pytest.raises(ValueError, match="norm"):
        DensityCNN(norm="layer")
    with pytest.raises(ValueError, match="head_activation"):
        DensityCNN(head_activation="tanh")


def test_c01_to_c04_parameter_counts_grow_in_the_reports_order():
    counts = [count_parameters(instantiate(compose([f"experiment=C0{i}"]).model)) for i in range(1, 5)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    # the report: ~120K, ~420K, ~1.7M, ~6.8M; each step is about 4x
    assert 100_000 < counts[0] < 160_000
    assert all(3.0 < b / a < 4.5 for a, b in zip(counts, counts[1:]))


def test_architecture_study_depths():
    deep = instantiate(compose(["experiment=arch_baseline_deep"]).model)
    shallow = instantiate(compose(["experiment=arch_baseline_shallow"]).model)
    resnet = instantiate(compose(["experiment=arch_resnet_deep"]).model)

    def convs(m):
        return sum(isinstance(x, nn.Conv2d) for x in m.modules())

    assert convs(deep) == 12 and convs(shallow) == 4 and convs(resnet) == 12
