"""Tiled whole-image inference reproduces untiled inference (exactly where the receptive field allows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calib_seg.models.tiling import blend_window_1d, predict_padded, predict_tiled, tile_starts
from calib_seg.models.unet import AttentionUNet, UNet


class Pointwise(nn.Module):
    """Per-pixel nonlinear map: any correct tiling must reproduce it exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(3 * x - 1) * 2 + x**2


def small_rf_cnn() -> nn.Module:
    """Three 3x3 convs: receptive-field radius 3 pixels."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    ).double()


@pytest.mark.parametrize("shape", [(50, 70), (1, 64, 64), (2, 1, 33, 100), (2, 1, 20, 15)])
@pytest.mark.parametrize("tile,overlap", [(16, 0), (32, 8), (24, 12)])
def test_tiled_pointwise_model_is_exact_for_any_shape_including_smaller_than_tile(shape, tile, overlap):
    x = torch.rand(shape, dtype=torch.float64)
    out = predict_tiled(Pointwise(), x, tile=tile, overlap=overlap, batch_size=3)
    assert out.shape == x.shape
    torch.testing.assert_close(out, Pointwise()(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tile,overlap,margin", [(32, 16, 4), (40, 12, 3), (24, 8, 4)])
def test_tiled_conv_model_equals_untiled_when_receptive_field_fits_in_margin(tile, overlap, margin):
    model = small_rf_cnn()
    x = torch.rand(2, 1, 100, 77, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out = predict_tiled(model, x, tile=tile, overlap=overlap, batch_size=4, margin=margin)
    assert out.shape == (2, 2, 100, 77)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_tiled_conv_model_with_too_small_margin_differs_showing_the_test_can_fail():
    model = small_rf_cnn()
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out = predict_tiled(model, x, tile=32, overlap=8, margin=0)
    assert (out - ref).abs().max() > 1e-4


@pytest.mark.parametrize("cls", [UNet, AttentionUNet])
def test_tiled_unet_reproduces_untiled_output_on_small_slice(cls):
    # depth-2 U-Net: measured receptive-field radius ~22 px, so a 24 px margin sees full context; tiles are
    # aligned to the model's pooling grid (align=4) so both runs pool the same pixel groups.
    torch.manual_seed(0)
    model = cls(base_filters=4, depth=2).double().eval()
    x = torch.rand(1, 1, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out = predict_tiled(model, x, tile=64, overlap=48, margin=24, batch_size=8, align=model.size_divisor)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


def test_float32_tiling_matches_within_float_tolerance():
    model = small_rf_cnn().float()
    x = torch.rand(1, 1, 90, 90)
    with torch.no_grad():
        ref = model(x)
    out = predict_tiled(model, x, tile=32, overlap=16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_aligned_tiles_start_on_multiples_of_align_and_cover_the_image():
    starts = tile_starts(768, 256, 32, align=16)
    assert all(s % 16 == 0 for s in starts)
    assert starts[0] == 0 and starts[-1] + 256 == 768
    assert all(b - a <= 256 - 32 for a, b in zip(starts, starts[1:]))


def test_predict_tiled_pads_non_divisible_images_when_aligned_and_crops_back():
    model = UNet(base_filters=4, depth=2).eval()
    x = torch.rand(1, 1, 70, 45)
    out = predict_tiled(model, x, tile=32, overlap=8, align=4)
    assert out.shape == (1, 1, 70, 45) and torch.isfinite(out).all()
    # a pointwise model shows the crop is in place: tiled output equals the model applied to every pixel
    torch.testing.assert_close(predict_tiled(Pointwise(), x, tile=32, overlap=8, align=4), Pointwise()(x))
    # the U-Net sees exactly the reflect-padded image (72 x 48), tiled as a divisible image, cropped back
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect")
    torch.testing.assert_close(out, predict_tiled(model, padded, tile=32, overlap=8, align=4)[..., :70, :45],
                               rtol=0, atol=0)


def test_blend_window_is_zero_in_margin_one_inside_and_one_at_image_border():
    w = blend_window_1d(32, 16, 4, left=True, right=True)
    assert (w[:4] == 0).all() and (w[-4:] == 0).all()
    assert (w[12:20] == 1).all()
    assert ((w[4:12] > 0) & (w[4:12] < 1)).all()
    assert (blend_window_1d(32, 16, 4, left=False, right=False) == 1).all()


def test_predict_padded_equals_direct_call_when_divisible_and_keeps_shape_otherwise():
    model = UNet(base_filters=4, depth=2).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(predict_padded(model, x, 4), model(x))
    assert predict_padded(model, torch.rand(1, 1, 30, 47), 4).shape == (1, 1, 30, 47)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tile=32, overlap=32), "overlap"),
        (dict(tile=32, overlap=8, margin=5), "margin"),
        (dict(tile=30, overlap=8, align=4), "multiple of align"),
        (dict(tile=32, overlap=8, batch_size=0), "batch_size"),
    ],
)
def test_predict_tiled_rejects_bad_arguments_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_tiled(Pointwise(), torch.rand(1, 1, 64, 64), **kwargs)
