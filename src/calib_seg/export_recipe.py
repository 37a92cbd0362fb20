"""What a model package must say about a trained calib_seg network, computed from the task alone (no bioimageio).

The pure core of the BioImage Model Zoo export (:mod:`calib_seg.export`): the input scaling and normalisation
the network was trained with, the output transform that turns its raw output into the task's answer, the valid
input sizes and the halo, and the expected test output as calib_seg computes it. Kept apart from the
description-building code so it can be checked without the optional ``export`` extra.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from calib_seg.models.tiling import predict_padded, size_divisor


@dataclass
class Recipe:
    """Everything the package's tensors and processing steps say, in plain numbers.

    ``input_max`` is the raw value that maps to 1.0 (255 for 8-bit, 2**bit_depth - 1 for a camera, 1 for images
    already in [0, 1]). The network sees ``(raw / input_max - mean) / std``; its output ``z`` becomes the
    package output ``z * out_gain + out_offset`` (then a sigmoid for segmentation).
    """

    kind: str  # "density" | "segmentation"
    input_max: float
    input_dtype: str
    mean: float = 0.0
    std: float = 1.0
    out_gain: float = 1.0
    out_offset: float = 0.0
    sigmoid: bool = False
    output_name: str = "beads_per_mm2"
    output_formula: str = ""
    not_expressible: list[str] = field(default_factory=list)
    size_min: int = 1
    size_step: int = 1
    halo: int = 0
    receptive_field_radius: int | None = None
    divisor: int = 1
    threshold: float | None = None


def dtype_for(input_max: float) -> str:
    """The bioimageio data type of raw inputs whose full scale is ``input_max``."""
    if input_max == 1:
        return "float32"
    if input_max == 255:
        return "uint8"
    if float(input_max).is_integer() and 1 < input_max <= 65535:
        return "uint16"
    raise ValueError(f"input_max must be 1 (float images in [0, 1]), 255 or an integer up to 65535, got {input_max}")


def pooling_divisor(model: nn.Module) -> int:
    """2**(number of 2x2 max-poolings): the smallest input side a pooled regressor accepts."""
    pools = sum(1 for m in model.modules() if isinstance(m, nn.MaxPool2d))
    return max(size_divisor(model), 2**pools)


_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def _all_paths_open(model: nn.Module) -> nn.Module:
    """A float64 copy in which every connection the architecture has carries signal.

    Weights become positive averages and biases zero (positive inputs then never meet a closed ReLU), max
    pooling becomes average pooling over the same window (a max passes the gradient to one pixel only) and
    normalisation layers are dropped (pointwise at inference; GroupNorm's global statistics are ignored).
    """
    net = copy.deepcopy(model).double().eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
            elif isinstance(child, _NORMS):
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    return net


def receptive_field_radius(model: nn.Module, divisor: int = 1, max_size: int = 2048) -> int:
    """Radius (px) of the input region that can influence one output pixel of a fully convolutional model.

    The support of the gradient of the centre output pixel in a copy with every path open
    (:func:`_all_paths_open`), so it is the architecture's receptive field, not what one set of weights happens
    to use. The probe input grows until the support no longer touches its border.
    """
    net = _all_paths_open(model)
    gen = torch.Generator().manual_seed(0)
    size = max(64, divisor)
    while True:
        size = int(math.ceil(size / divisor) * divisor)
        x = (0.5 + torch.rand(1, 1, size, size, dtype=torch.float64, generator=gen)).requires_grad_(True)
        c = size // 2
        net(x)[:, 0, c, c].sum().backward()
        ys, xs = np.nonzero(x.grad[0, 0].numpy() > 0)
        radius = int(max(np.abs(ys - c).max(), np.abs(xs - c).max()))
        if radius < c - 1 or size >= max_size:
            return radius
        size *= 2


def halo_and_sizes(radius: int, divisor: int) -> tuple[int, int, int]:
    """(halo, min size, step) for a tiled consumer: halo = radius rounded up to the pooling grid.

    A multiple of the divisor keeps tiles on the pooling grid after the consumer pads the halo; the minimum
    size leaves at least one divisor's worth of pixels after cropping the halo from both sides.
    """
    halo = int(math.ceil(radius / divisor) * divisor) if radius > 0 else 0
    return halo, 2 * halo + divisor, divisor


def valid_crop(length: int, size_min: int, step: int) -> int:
    """The largest valid axis size ``size_min + n * step`` that fits in ``length``."""
    if length < size_min:
        raise ValueError(f"the test image side {length} px is smaller than the smallest valid input ({size_min} px)")
    return size_min + (length - size_min) // step * step


def density_recipe(task: Any, input_max: float) -> Recipe:
    """The density task's recipe: standardisation from its buffers, output = the target transform's inverse."""
    tf = task.target_tf
    kind = tf.kind
    divisor = pooling_divisor(task.model)
    r = Recipe(kind="density", input_max=float(input_max), input_dtype=dtype_for(input_max),
               mean=float(task.input_mean), std=float(task.input_std), size_min=divisor, size_step=1,
               divisor=divisor)
    if kind == "none":
        r.output_formula = "output = network output, in beads/mm² (the model was trained on raw targets)"
    else:
        r.out_gain, r.out_offset = float(tf.std), float(tf.mean)
    if kind == "standardize":
        r.output_formula = f"beads/mm² = z * {r.out_gain:.9g} + {r.out_offset:.9g} (z = network output)"
    elif kind == "log_standardize":
        r.output_name = "log1p_beads_per_mm2"
        r.output_formula = (f"output u = z * {r.out_gain:.9g} + {r.out_offset:.9g} = ln(1 + beads/mm²); "
                            "beads/mm² = exp(u) - 1")
        r.not_expressible.append("the exponential of the log_standardize target transform: the package outputs "
                                 "u = ln(1 + beads/mm²); compute exp(u) - 1 yourself")
    r.not_expressible.append("the bead count in the field of view: count = beads/mm² * H * W * (pixel size in "
                             "mm)², as calib_seg.predict writes it (depends on the image size)")
    return r


def segmentation_recipe(task: Any, input_max: float) -> Recipe:
    """The segmentation task's recipe: [0, 1] input, sigmoid output, halo from the measured receptive field."""
    divisor = size_divisor(task.model)
    radius = receptive_field_radius(task.model, divisor)
    halo, size_min, step = halo_and_sizes(radius, divisor)
    threshold = float(getattr(task, "threshold", 0.5))
    return Recipe(kind="segmentation", input_max=float(input_max), input_dtype=dtype_for(input_max), sigmoid=True,
                  output_name="foreground_probability", size_min=size_min, size_step=step, halo=halo,
                  receptive_field_radius=radius, divisor=divisor, threshold=threshold,
                  output_formula=f"foreground probability = sigmoid(network logit); mask = probability >= {threshold:g}",
                  not_expressible=[f"the mask threshold ({threshold:g}): the package outputs probabilities",
                                   "calib_seg.predict's tiling with cosine-blended overlaps: consumers tile with "
                                   "the halo instead (same result away from image borders)"])


def as_unit(raw: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The [0, 1] float image calib_seg's network door sees for a raw image of the package's input type."""
    x = raw.astype(np.float64) / recipe.input_max
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"raw test image values span {raw.min()}..{raw.max()}, outside 0..{recipe.input_max:g}")
    return x.astype(np.float32)


@torch.no_grad()
def expected_output(task: Any, unit_image: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The package's output for one [0, 1] image, computed by calib_seg itself, shaped like the output tensor.

    Density: the task's own prediction in beads/mm² (``ln(1 + beads/mm²)`` for log_standardize), shape (1, 1).
    Segmentation: calib_seg's whole-image probabilities (one padded pass, as ``SegmentationTask`` does without
    ``tile_size``), shape (1, 1, H, W).
    """
    x = torch.from_numpy(unit_image)[None, None]
    if recipe.kind == "density":
        y = task(x).double()
        if recipe.output_name.startswith("log1p"):
            y = torch.log1p(y)
        return y.reshape(1, 1).float().numpy()
    prob = torch.sigmoid(predict_padded(task.model, x, recipe.divisor))
    return prob.float().numpy().reshape(1, 1, *unit_image.shape)
