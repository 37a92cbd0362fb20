"""The numbers a model package states, computed without bioimageio (issue 15): receptive field, halo, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from calib_seg.export_recipe import (
    dtype_for,
    halo_and_sizes,
    pooling_divisor,
    receptive_field_radius,
    valid_crop,
)
from calib_seg.models.density import DensityCNN
from calib_seg.models.packaged import PackagedNetwork
from calib_seg.models.unet import UNet


def test_receptive_field_of_stacked_3x3_convolutions_is_one_pixel_per_layer():
    for layers in (1, 3, 5):
        net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(layers)])
        assert receptive_field_radius(net) == layers


def test_receptive_field_grows_the_input_until_it_no_longer_touches_the_border():
    # 40 layers: radius 40 does not fit a 64 px probe (centre 32), so the probe must grow to measure it
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(40)])
    assert receptive_field_radius(net) == 40


def test_unet_receptive_field_matches_the_analytic_value():
    # depth 1: two 3x3 convs (2) + pool, bottleneck two convs at half resolution (+4, +1 for the pool window)
    # + 2x2 transposed conv back (one coarse pixel each) + two decoder convs (+2): radius 9
    net = UNet(base_filters=2, depth=1, norm="none")
    r = receptive_field_radius(net, divisor=2)
    assert r == 9, r
    halo, size_min, step = halo_and_sizes(r, 2)
    assert halo % 2 == 0 and halo >= r and size_min - 2 * halo >= 1 and step == 2


def test_halo_is_zero_for_pointwise_models_and_sizes_still_valid():
    assert halo_and_sizes(0, 1) == (0, 1, 1)
    assert halo_and_sizes(22, 4) == (24, 52, 4)


def test_valid_crop_is_the_largest_parameterised_size_that_fits():
    assert valid_crop(256, 52, 4) == 256
    assert valid_crop(255, 52, 4) == 252
    with pytest.raises(ValueError, match="smaller than the smallest valid input"):
        valid_crop(40, 52, 4)


def test_dtype_follows_the_full_scale_and_refuses_odd_scales():
    assert (dtype_for(1), dtype_for(255), dtype_for(4095), dtype_for(65535)) == ("float32", "uint8", "uint16",
                                                                                 "uint16")
    with pytest.raises(ValueError, match="input_max"):
        dtype_for(0.5)


def test_pooling_divisor_counts_max_pools():
    assert pooling_divisor(DensityCNN(filters=[4, 8, 16], convs_per_stage=1)) == 4
    assert pooling_divisor(UNet(base_filters=2, depth=3)) == 8


def test_packaged_network_gives_density_a_channel_axis_and_keeps_the_weights():
    net = PackagedNetwork("calib_seg.models.density.DensityCNN", {"filters": [4, 8], "convs_per_stage": 1},
                          scalar_output=True).eval()
    x = torch.rand(3, 1, 16, 16)
    assert net(x).shape == (3, 1)
    np.testing.assert_allclose(net(x)[:, 0].detach().numpy(), net.net(x).detach().numpy())
    with pytest.raises(ValueError, match="cannot import architecture"):
        PackagedNetwork("calib_seg.models.nothing.Here")
